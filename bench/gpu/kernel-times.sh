#!/usr/bin/env bash
# Where one decode step's time goes, on the GPU machine: wall time per token (kiln-agent bench) against
# the sum of the step's kernel durations measured by Nsight Compute (each kernel's GPU time, no host
# gaps), plus DRAM bytes read per kernel for the achieved bandwidth. The difference is launch/host gap.
# Usage (after device-env.sh, with the 27B model at $1): bench/gpu/kernel-times.sh MODEL OUTDIR
set -uo pipefail
M=$1 OUT=$2
NCU=${NCU:-/usr/local/cuda/bin/ncu}
K=(.device/bin/kiln-agent bench --device cuda:0 -m "$M" --kv-type q4_0 --verify-max 0 --ctx 4096)
"${K[@]}" --prompt-tokens 0 --gen-tokens 64 --reps 3 | grep -E '"decode_tok_s' | sed 's/^/wall: /'
# Warm-up prefill (1 token) + 2 decode steps; the last step is the one summed.
# Caches kept and clocks left to the GPU (NCU_CACHE=all NCU_CLOCK=base for ncu's defaults: every kernel
# from cold caches at base clocks, which overstates the small kernels that read what the kernel before
# them left in L2).
timeout 400 "$NCU" --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --page raw --print-units base \
    --cache-control "${NCU_CACHE:-none}" --clock-control "${NCU_CLOCK:-none}" \
    "${K[@]}" --prompt-tokens 0 --gen-tokens 2 --reps 1 > "$OUT/ncu-decode.csv" 2> "$OUT/ncu-decode.err"
echo "ncu exit $?"
python3 - "$OUT/ncu-decode.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; rows = [r for r in rows[1:] if r[0].isdigit()]
ki, ti = hdr.index("Kernel Name"), hdr.index("gpu__time_duration.sum")
bi = hdr.index("dram__bytes_read.sum")
units = rows and None
# Step boundaries: the embedding gather starts every step.
starts = [i for i, r in enumerate(rows) if r[ki].startswith("embed_rows")]
last = rows[starts[-1]:]
def ns(v): return float(v.replace(",", ""))
tot = sum(ns(r[ti]) for r in last)
by = collections.defaultdict(lambda: [0, 0.0, 0.0])
for r in last:
    name = r[ki].split("(")[0]
    by[name][0] += 1; by[name][1] += ns(r[ti]); by[name][2] += ns(r[bi])
print(f"last step: {len(last)} kernels, sum of kernel times {tot/1e6:.3f} ms (time unit {hdr[ti]})")
for n, (c, t, b) in sorted(by.items(), key=lambda kv: -kv[1][1])[:40]:
    print(f"{n:32s} {c:5d} {t/1e6:8.3f} ms  {b/1e9:7.3f} GB read  {b/t if t else 0:7.1f} GB/s")
PY
