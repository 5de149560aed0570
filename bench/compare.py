#!/usr/bin/env python3
"""Turn a bench/compare.sh results folder into a Markdown report (stdout).

    python3 bench/compare.py bench/results/<stamp>

Reads meta.txt and, per model and repetition r, <model>.llama.<r>.{json,time,cmd,rc} (llama-bench -o json)
and <model>.kiln.<r>.{json,time,cmd,rc} (kiln-agent bench: one JSON object with prefill_tok_s and
decode_tok_s). Speeds are medians over the successful repetitions; peak RSS is the largest
"Maximum resident set size" that /usr/bin/time -v reported over the repetitions.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

MODEL_LABEL = {"smollm2": "SmolLM2-135M-Instruct Q4_1", "gemma3": "gemma-3-270m Q4_K_M"}


def read_meta(d: Path) -> dict:
    meta = {}
    for ln in (d / "meta.txt").read_text().splitlines():
        if "=" in ln:
            k, v = ln.split("=", 1)
            meta[k] = v
    return meta


def rc_ok(base: Path) -> bool:
    p = Path(str(base) + ".rc")
    return p.exists() and p.read_text().strip() == "0"


def peak_rss_kib(base: Path):
    p = Path(str(base) + ".time")
    if not p.exists():
        return None
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", p.read_text())
    return int(m.group(1)) if m else None


def cpu_percent(base: Path):
    """'Percent of CPU this job got' from /usr/bin/time -v: ~100*threads when the run had the cores to itself."""
    p = Path(str(base) + ".time")
    if not p.exists():
        return None
    m = re.search(r"Percent of CPU this job got:\s*(\d+)%", p.read_text())
    return int(m.group(1)) if m else None


def parse_llama(base: Path, n_prompt: int, n_gen: int):
    """-> (pp tok/s, tg tok/s) from one llama-bench -o json run."""
    data = json.loads(Path(str(base) + ".json").read_text())
    pp = tg = None
    for t in data:
        if t.get("n_prompt") == n_prompt and t.get("n_gen") == 0:
            pp = float(t["avg_ts"])
        elif t.get("n_prompt") == 0 and t.get("n_gen") == n_gen:
            tg = float(t["avg_ts"])
    return pp, tg


def parse_kiln(base: Path):
    """-> (prefill tok/s, decode tok/s) from kiln-agent bench's JSON object (last JSON line, or whole stdout)."""
    text = Path(str(base) + ".json").read_text().strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = json.loads([ln for ln in text.splitlines() if ln.strip().startswith("{")][-1])
    return float(obj["prefill_tok_s"]), float(obj["decode_tok_s"])


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def collect(d: Path, model: str, engine: str, reps: int, n_prompt: int, n_gen: int):
    pre, dec, rss, cpu, fails = [], [], [], [], []
    for r in range(1, reps + 1):
        base = d / f"{model}.{engine}.{r}"
        if not Path(str(base) + ".rc").exists():
            continue
        rss.append(peak_rss_kib(base))
        cpu.append(cpu_percent(base))
        if not rc_ok(base):
            fails.append(r)
            continue
        try:
            p, g = parse_llama(base, n_prompt, n_gen) if engine == "llama" else parse_kiln(base)
        except (ValueError, KeyError, IndexError, json.JSONDecodeError) as e:
            fails.append(r)
            print(f"<!-- {base.name}: unparsable output: {e} -->", file=sys.stderr)
            continue
        pre.append(p)
        dec.append(g)
    rss = [x for x in rss if x is not None]
    return {"prefill": pre, "decode": dec, "peak_rss_kib": max(rss) if rss else None, "cpu_pct": med(cpu),
            "fails": fails}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = Path(sys.argv[1])
    meta = read_meta(d)
    reps, n_prompt, n_gen = int(meta["reps"]), int(meta["prompt"]), int(meta["gen"])
    threads = meta["threads"]
    llama_only = meta.get("llama_only") == "1"
    models = meta["models"].split(",")

    print(f"## Kiln vs llama.cpp, CPU, {threads} threads\n")
    print(f"- CPU: {meta.get('cpu', '?')} ({meta.get('nproc', '?')} logical CPUs visible)")
    print(f"- llama.cpp: {meta.get('llama_bench_version', '?').strip()}")
    print(f"- Kiln commit: {meta.get('kiln_commit', '?')}; measured {meta.get('date_utc', '?')}; load average "
          f"before {meta.get('loadavg_before', '?')}, after {meta.get('loadavg_after', '?')} (1/5/15 min)")
    print(f"- {reps} interleaved repetitions per engine and model; prompt {n_prompt} tokens, generation {n_gen} "
          f"tokens; tok/s are medians, peak RSS is the max over repetitions, CPU % is the CPU time each process "
          f"got over its whole run, load included (/usr/bin/time -v): close to {int(threads) * 100}% when its "
          f"{threads} thread(s) had the cores to themselves, far below means the machine was shared\n")

    hdr = ["model", "threads"]
    if not llama_only:
        hdr += ["Kiln prefill tok/s", "Kiln decode tok/s"]
    hdr += [f"llama.cpp pp{n_prompt} tok/s", f"llama.cpp tg{n_gen} tok/s"]
    if not llama_only:
        hdr += ["prefill ratio Kiln/llama.cpp", "decode ratio Kiln/llama.cpp", "Kiln peak RSS MiB"]
    hdr += ["llama.cpp peak RSS MiB", "CPU % (median)", "runs ok"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    details = []
    for m in models:
        ll = collect(d, m, "llama", reps, n_prompt, n_gen)
        row = [MODEL_LABEL.get(m, m), threads]
        ok = f"llama {len(ll['prefill'])}/{reps}"
        lp, lg = med(ll["prefill"]), med(ll["decode"])
        if not llama_only:
            kk = collect(d, m, "kiln", reps, n_prompt, n_gen)
            kp, kg = med(kk["prefill"]), med(kk["decode"])
            row += [fmt(kp), fmt(kg)]
            ok = f"kiln {len(kk['prefill'])}/{reps}, " + ok
        row += [fmt(lp), fmt(lg)]
        if not llama_only:
            row += [fmt(ratio(kp, lp), 2), fmt(ratio(kg, lg), 2),
                    fmt(kk["peak_rss_kib"] / 1024 if kk["peak_rss_kib"] else None)]
        cpu = f"llama {fmt(ll['cpu_pct'], 0)}"
        if not llama_only:
            cpu = f"kiln {fmt(kk['cpu_pct'], 0)}, " + cpu
        row += [fmt(ll["peak_rss_kib"] / 1024 if ll["peak_rss_kib"] else None), cpu, ok]
        print("| " + " | ".join(str(x) for x in row) + " |")
        details.append((m, "llama.cpp", ll))
        if not llama_only:
            details.append((m, "Kiln", kk))

    print("\n### Samples (tok/s per repetition, in run order)\n")
    for m, eng, r in details:
        pre = ", ".join(fmt(x) for x in r["prefill"])
        dec = ", ".join(fmt(x) for x in r["decode"])
        extra = f"; failed reps: {r['fails']}" if r["fails"] else ""
        print(f"- {m} {eng}: prefill [{pre}]; decode [{dec}]{extra}")

    print("\n### Commands (repetition 1)\n")
    print("```")
    for m in models:
        for eng in (["llama"] if llama_only else ["llama", "kiln"]):
            p = d / f"{m}.{eng}.1.cmd"
            if p.exists():
                print("/usr/bin/time -v " + p.read_text().strip())
    print("```")
    print(f"\nRaw outputs: {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
