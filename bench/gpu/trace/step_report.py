#!/usr/bin/env python3
"""Where a decode step's time goes inside the real run, from kiln_trace's CSV.

A step is the kernels from one `embed_rows` to the next. Kernels in one stream finish in order, so each
kernel's *marginal* time -- its end minus the end of the kernel before it -- is what it adds to the
step, whatever its blocks did while they waited for their predecessor (programmatic dependent launch
starts them early). Summed by kernel name over the median step, the marginal times add up to the step.
`host late` is how long the GPU had finished the kernel before while this one was not yet queued by the
host (the time the GPU waited on the CPU).

Usage: step_report.py TRACE.csv [--top N]
"""
import collections
import csv
import statistics
import sys


def load(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["kind"] != "kernel":
                continue
            rows.append((int(r["start_ns"]), int(r["end_ns"]), int(r["queued_ns"]), r["name"].split("(")[0]))
    rows.sort()
    return rows


def steps_of(rows):
    """Decode steps: runs starting at embed_rows, keeping those with the most common kernel count."""
    starts = [i for i, r in enumerate(rows) if r[3] == "embed_rows"]
    spans = [(a, b) for a, b in zip(starts, starts[1:] + [len(rows)])]
    # The last kernels of a step that is followed by something else (a prefill, the verify curve)
    # would be counted into it; the modal length drops those steps.
    mode = collections.Counter(b - a for a, b in spans).most_common(1)[0][0]
    return [(a, b) for a, b in spans if b - a == mode and a > 0]


def main():
    path = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 30
    rows = load(path)
    steps = steps_of(rows)
    if not steps:
        sys.exit("no decode step found (no embed_rows kernel)")
    per_step = []  # name -> (count, marginal ns, host-late ns) for each step
    spans, late_total = [], []
    for a, b in steps:
        by = collections.defaultdict(lambda: [0, 0, 0])
        late = 0
        for i in range(a, b):
            _, e, q, name = rows[i]
            prev_end = rows[i - 1][1]
            marginal = e - prev_end
            host_late = max(0, q - prev_end)
            by[name][0] += 1
            by[name][1] += marginal
            by[name][2] += host_late
            late += host_late
        per_step.append(by)
        spans.append(rows[b - 1][1] - rows[a - 1][1])
        late_total.append(late)
    med = statistics.median
    print(f"{len(steps)} decode steps of {steps[0][1] - steps[0][0]} kernels; median step {med(spans)/1e3:.1f} us "
          f"(end to end, {1e9/med(spans):.2f} steps/s), min {min(spans)/1e3:.1f}, max {max(spans)/1e3:.1f}")
    print(f"GPU waiting on the host: median {med(late_total)/1e3:.1f} us a step")
    names = sorted({n for by in per_step for n in by}, key=lambda n: -med([by[n][1] for by in per_step]))
    print(f"{'kernel':28s} {'count':>5s} {'marginal us':>12s} {'share':>6s} {'us each':>8s} {'host late':>9s}")
    step = med(spans)
    product_us = 0.0
    for n in names[:top]:
        c = per_step[0][n][0]
        m = med([by[n][1] for by in per_step])
        hl = med([by[n][2] for by in per_step])
        print(f"{n:28s} {c:5d} {m/1e3:12.1f} {m/step:6.1%} {m/1e3/c:8.2f} {hl/1e3:9.1f}")
    for n in names:
        if n.startswith(("mmv", "mmq")):
            product_us += med([by[n][1] for by in per_step]) / 1e3
    print(f"products (mmv*/mmq*): {product_us:.1f} us of {step/1e3:.1f} ({product_us*1e3/step:.1%})")


if __name__ == "__main__":
    main()
