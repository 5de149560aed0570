#!/usr/bin/env bash
# Where a decode step's time goes in the real run (kernels launched as a user's run launches them,
# programmatic dependent launch on): builds the CUPTI tracer (trace/kiln_trace.cpp) against the CUPTI
# this machine has, times decode without and with it (the tracer's own cost), then prints each kernel's
# marginal time in the median step (trace/step_report.py).
# Usage (after device-env.sh): bench/gpu/step-trace.sh MODEL OUTDIR [extra kiln-agent bench flags]
# KILN_TRACE_HOST=1 also records copies and driver calls (trace/kiln_trace.cpp); the tracer stays at
# /tmp/libkiln_trace.so for tracing other commands (CUDA_INJECTION64_PATH, KILN_TRACE_OUT).
set -euo pipefail
M=$1 OUT=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
roots="/usr/local/cuda $(python3 -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null || true)"
header=$(find -L $roots -name cupti.h 2>/dev/null | head -1)
lib=$(find -L $roots -name 'libcupti.so*' 2>/dev/null | head -1)
[ -n "$header" ] && [ -n "$lib" ] || { echo "no CUPTI (cupti.h, libcupti.so) under $roots"; exit 1; }
echo "CUPTI: $header, $lib"
cuda_inc=$(dirname "$(find -L /usr/local/cuda $roots -name cuda.h 2>/dev/null | head -1)")
g++ -std=c++17 -O2 -shared -fPIC -Wall -Werror -I"$(dirname "$header")" -I"$cuda_inc" \
    "$HERE/trace/kiln_trace.cpp" -o /tmp/libkiln_trace.so "$lib" -Wl,-rpath,"$(dirname "$lib")"
K=(.device/bin/kiln-agent bench --device cuda:0 -m "$M" --kv-type q4_0 --verify-max 0 --ctx 4096
   --prompt-tokens 0 --gen-tokens 64 --reps 3 "$@")
echo "untraced: $("${K[@]}" | grep -A4 '"decode_tok_s_all' | tr -d ' \n')"
CUDA_INJECTION64_PATH=/tmp/libkiln_trace.so KILN_TRACE_OUT="$OUT/decode-trace.csv" "${K[@]}" > "$OUT/traced.json"
echo "traced:   $(grep -A4 '"decode_tok_s_all' "$OUT/traced.json" | tr -d ' \n')"
python3 "$HERE/trace/step_report.py" "$OUT/decode-trace.csv" --top 40
xz -T0 "$OUT/decode-trace.csv"
