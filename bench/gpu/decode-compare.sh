#!/usr/bin/env bash
# Decode speed, side by side in one GPU-machine call: a baseline kiln-agent ($BASE, e.g. main's build),
# this build under each variant given (an environment setting such as KILN_CUDA_FUSE=0, or a bare
# KILN_MMV value), and llama.cpp (built in the background by
# build-llama-cuda.sh while the tests run), on the 27B-shaped synthetic Q4_K_M with q4_0 KV.
# Usage (repo root, after device-env.sh): BASE=path/to/old/kiln-agent bench/gpu/decode-compare.sh OUT VARIANT...
# e.g. `... OUT KILN_CUDA_FUSE=1 KILN_CUDA_FUSE=0`.
set -uo pipefail
OUT=$1; shift
M=/tmp/q27.gguf
L=/tmp/llama/llama.cpp/build/bin/llama-bench
sm=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
[[ -x $L ]] || (bench/gpu/build-llama-cuda.sh .device/llama-src.tar.xz /tmp/llama "$sm" > /tmp/llama-build.log 2>&1
    echo "llama.cpp build exit $?" >> /tmp/llama-build.log) &
[[ -f $M ]] || .device/bin/kiln-agent synth --preset qwen3.6-27b --quant q4_k_m --fast --out $M > /dev/null
args=(bench --device cuda:0 -m $M --kv-type q4_0 --verify-max 4 --ctx 4096 --prompt-tokens 512 --gen-tokens 64 --reps 3)
summary() { python3 -c '
import json, sys
j = json.load(sys.stdin)
d, allv, pp = j["decode_tok_s"], [round(x, 2) for x in j["decode_tok_s_all"]], j["prefill_tok_s"]
print("decode %.2f tok/s (all %s), prefill %.0f, verify %s" % (d, allv, pp, json.dumps(j["verify"])[:240]))'; }
# The tests first (they also compile the kernels into $KILN_KERNEL_CACHE for the runs below).
timeout 240 .device/bin/gpu_ops --test-threads 1 > "$OUT/gpu_ops.txt" 2>&1
echo "gpu_ops exit $?"; grep -E "test result|panicked|FAILED" "$OUT/gpu_ops.txt" | head -5
timeout 200 .device/bin/gpu_models --test-threads 1 --nocapture > "$OUT/gpu_models.txt" 2>&1
echo "gpu_models exit $?"; grep -E "worst|test result|panicked" "$OUT/gpu_models.txt" | head -12
setting() { [[ $1 == *=* ]] && echo "$1" || echo "KILN_MMV=$1"; }
kiln() { local s; s=$(setting "$1")
    echo "$s: $(env "$s" .device/bin/kiln-agent "${args[@]}" 2>/dev/null | tee -a "$OUT/kiln-runs.txt" | summary)"; }
base() { [[ -n ${BASE:-} ]] && echo "base: $("$BASE" "${args[@]}" 2>/dev/null | tee -a "$OUT/kiln-runs.txt" | summary)"; }
# Round 1: the baseline and every variant; then llama.cpp; round 2: the baseline and the first variant
# again (the pair reported, measured twice in the same call).
base 1
for v in "$@"; do kiln "$v" 1; done
wait; tail -1 /tmp/llama-build.log
[[ -x $L ]] && $L -m $M -ngl 99 -fa 1 -ctk q4_0 -ctv q4_0 -p 512 -n 64 -r 3 2>&1 | tee "$OUT/llama-bench.txt" | grep -E "build|pp512|tg64"
base 2
kiln "$1" 2
# Decode after a 32K-token prefill (llama-bench -d), this build's first variant and llama.cpp, when the
# call has the time left (DEPTH_BY: seconds since the start after which it is skipped).
if (( SECONDS < ${DEPTH_BY:-400} )); then
    d=32768
    echo "kiln depth $d: $(env "$(setting "$1")" .device/bin/kiln-agent bench --device cuda:0 -m $M --kv-type q4_0 --verify-max 0 \
        --ctx 131072 --prompt-tokens 0 --depth $d --gen-tokens 32 --reps 1 2>/dev/null | grep '"decode_tok_s"')"
    [[ -x $L ]] && $L -m $M -ngl 99 -fa 1 -ctk q4_0 -ctv q4_0 -p 0 -n 32 -d $d -r 1 2>&1 | grep tg32 | sed "s/^/llama depth $d: /"
fi
