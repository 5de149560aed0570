#!/usr/bin/env bash
# Where a speculative verify pass's extra time goes, on the GPU machine: the kernels of a 1-token and a
# 4-token verify pass (`kiln-agent bench`'s verify curve, after a 16-token prompt) under Nsight Compute, side
# by side by kernel name, with the DRAM bytes each read. Caches kept and clocks free, as kernel-times.sh.
# Usage (after device-env.sh, with the 27B model at $1): bench/gpu/verify-times.sh MODEL OUTDIR
set -uo pipefail
M=$1 OUT=$2
NCU=${NCU:-/usr/local/cuda/bin/ncu}
K=(.device/bin/kiln-agent bench --device cuda:0 -m "$M" --kv-type q4_0 --ctx 4096 --prompt-tokens 16 --gen-tokens 0)
"${K[@]}" --verify-max 4 --reps 3 | tr -d '\n ' | grep -o '"verify":{[^}]*}' | sed 's/^/wall: /'
timeout 400 "$NCU" --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --page raw --print-units base \
    --cache-control "${NCU_CACHE:-none}" --clock-control "${NCU_CLOCK:-none}" \
    "${K[@]}" --verify-max 4 --reps 1 > "$OUT/ncu-verify.csv" 2> "$OUT/ncu-verify.err"
echo "ncu exit $?"
python3 - "$OUT/ncu-verify.csv" <<'PY'
import csv, sys, collections, statistics
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; rows = [r for r in rows[1:] if r[0].isdigit()]
ki, ti, bi = hdr.index("Kernel Name"), hdr.index("gpu__time_duration.sum"), hdr.index("dram__bytes_read.sum")
def ns(v): return float(v.replace(",", ""))
# A forward pass starts with the embedding gather; the MTP draft step after the curve is a short group.
starts = [i for i, r in enumerate(rows) if r[ki].startswith("embed_rows")]
groups = [rows[a:b] for a, b in zip(starts, starts[1:] + [len(rows)])]
if len(groups[-1]) < statistics.median(len(g) for g in groups[-5:]) / 2:
    groups = groups[:-1]
passes = groups[-4:]
def table(g):
    by = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for r in g:
        n = r[ki].split("(")[0]
        by[n][0] += 1; by[n][1] += ns(r[ti]); by[n][2] += ns(r[bi])
    return by
for k, g in enumerate(passes, 1):
    print(f"verify {k} token(s): {len(g)} kernels, {sum(ns(r[ti]) for r in g)/1e6:.3f} ms of kernel time")
one, four = table(passes[0]), table(passes[3])
print(f"{'kernel':34s} {'n1':>4s} {'ms1':>7s} {'n4':>4s} {'ms4':>7s} {'+ms':>7s} {'GB4':>6s} {'GB/s4':>6s}")
names = sorted(set(one) | set(four), key=lambda n: -(four[n][1] - one[n][1]))
for n in names[:40]:
    a, b = one[n], four[n]
    print(f"{n:34s} {a[0]:4d} {a[1]/1e6:7.3f} {b[0]:4d} {b[1]/1e6:7.3f} {(b[1]-a[1])/1e6:7.3f} {b[2]/1e9:6.2f} {b[2]/b[1] if b[1] else 0:6.0f}")
PY
