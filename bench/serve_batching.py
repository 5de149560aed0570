#!/usr/bin/env python3
"""Continuous batching before/after: `bench/serve_load.py` with 1, 4, 8 concurrent streaming clients (and
as many slots), against two `kiln-agent` binaries, runs interleaved (A, B, A, B, ...) so both see the same
machine load, then the median generated tok/s and TTFT p50 of each. Not a timed test.

  python3 bench/serve_batching.py --before BIN --after BIN [--clients 1,4,8] [--repeats 3]
                                  [--duration 20] [--max-tokens 64] [--model FILE]
"""

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
THROUGHPUT = re.compile(r"throughput: ([\d.]+) req/s, ([\d.]+) generated tok/s")
TTFT = re.compile(r"TTFT p50 ([\d.na]+)s")
ERRORS = re.compile(r"errors: (\d+)")


def one_run(binary, clients, a):
    cmd = [sys.executable, str(HERE / "serve_load.py"), "--bin", binary, "--clients", str(clients),
           "--parallel", str(clients), "--duration", str(a.duration), "--max-tokens", str(a.max_tokens)]
    if a.model:
        cmd += ["--model", a.model]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    tput, ttft, errors = THROUGHPUT.search(out), TTFT.search(out), ERRORS.search(out)
    if not (tput and ttft and errors):
        sys.exit(f"unexpected serve_load.py output:\n{out}")
    return float(tput.group(2)), float(ttft.group(1)), int(errors.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model")
    a = ap.parse_args()
    rows = []
    for clients in [int(c) for c in a.clients.split(",")]:
        runs = {"before": [], "after": []}
        for rep in range(a.repeats):
            # Alternate which binary goes first, so a load drift does not favour one of them.
            order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
            for name in order:
                r = one_run(getattr(a, name), clients, a)
                print(f"clients={clients} rep={rep} {name}: {r[0]:.1f} tok/s, TTFT p50 {r[1]:.3f}s, "
                      f"errors {r[2]}", flush=True)
                runs[name].append(r)
        med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
                   sum(x[2] for x in v)) for k, v in runs.items()}
        rows.append((clients, med))
    print()
    print("| clients = slots | before tok/s | after tok/s | speed-up | before TTFT p50 | after TTFT p50 | errors |")
    print("|---|---|---|---|---|---|---|")
    for clients, m in rows:
        b, f = m["before"], m["after"]
        print(f"| {clients} | {b[0]:.1f} | {f[0]:.1f} | {f[0] / b[0]:.2f}x | {b[1]:.2f}s | {f[1]:.2f}s | "
              f"{b[2] + f[2]} |")


if __name__ == "__main__":
    main()
