#!/usr/bin/env bash
# One GPU-machine session (see bench/gpu/README.md): the GPU tests, then Kiln and llama.cpp side by side on
# the 27B-shaped synthetic Qwen3.6 (Q4_K_M, q4_0 KV). Expects the carried .device/ (binaries, llama.cpp src).
# Writes logs to $OUT. Usage: bench/gpu/run-device.sh [tests] [profile] [bench] [prefill] [memory] [serve]
# [depth] [sampling] (or all)
set -uo pipefail
source bench/gpu/device-env.sh
WANT=" ${*:-all} "
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
sm=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [[ $WANT == *" bench "* || $WANT == *" depth "* || $WANT == *" prefill "* || $WANT == *" sampling "* ||
      $WANT == *" all "* ]]; then
    (bench/gpu/build-llama-cuda.sh .device/llama-src.tar.xz /tmp/llama "$sm" > /tmp/llama-build.log 2>&1
     echo "llama.cpp build exit $?" >> /tmp/llama-build.log) &
fi
if [[ $WANT == *" tests "* || $WANT == *" all "* ]]; then
    timeout 200 .device/bin/gpu_ops --test-threads 1 --nocapture > "$OUT/gpu_ops.txt" 2>&1
    echo "gpu_ops exit $?"; grep -E "test result|panicked" "$OUT/gpu_ops.txt"
    timeout 240 .device/bin/gpu_models --test-threads 1 --nocapture > "$OUT/gpu_models.txt" 2>&1
    echo "gpu_models exit $?"; grep -E "worst|test result|panicked" "$OUT/gpu_models.txt"
    # The dp4a Q4_K products (KILN_MMV=auto; the default puts Q4_K on the tensor cores) through the same
    # tests: GPUs without the tensor-core kernel (AMD, pre-sm_80) take this path.
    KILN_MMV=auto timeout 200 .device/bin/gpu_ops --test-threads 1 --nocapture > "$OUT/gpu_ops-auto.txt" 2>&1
    echo "gpu_ops KILN_MMV=auto exit $?"; grep -E "test result|panicked" "$OUT/gpu_ops-auto.txt"
    KILN_MMV=auto timeout 240 .device/bin/gpu_models --test-threads 1 --nocapture > "$OUT/gpu_models-auto.txt" 2>&1
    echo "gpu_models KILN_MMV=auto exit $?"; grep -E "test result|panicked" "$OUT/gpu_models-auto.txt"
fi
M=/tmp/q27.gguf
[[ -f $M ]] || .device/bin/kiln-agent synth --preset qwen3.6-27b --quant q4_k_m --fast --out $M
K=(.device/bin/kiln-agent bench --device cuda:0 -m $M --kv-type q4_0 --verify-max 5)
K0=(.device/bin/kiln-agent bench --device cuda:0 -m $M --kv-type q4_0 --verify-max 0)
L=/tmp/llama/llama.cpp/build/bin/llama-bench
if [[ $WANT == *" profile "* || $WANT == *" all "* ]]; then
    KILN_CUDA_PROFILE=1 "${K0[@]}" --prompt-tokens 0 --gen-tokens 16 --reps 1 > "$OUT/profile-decode.txt" 2>&1
    KILN_CUDA_PROFILE=1 "${K0[@]}" --prompt-tokens 512 --gen-tokens 0 --reps 1 > "$OUT/profile-prefill.txt" 2>&1
    head -25 "$OUT/profile-decode.txt" | grep -v '^  "'; head -14 "$OUT/profile-prefill.txt" | grep -v '^  "'
    # The verify passes of 1..4 tokens after a 512-token prompt (the products' suffix is the row count).
    KILN_CUDA_PROFILE=1 .device/bin/kiln-agent bench --device cuda:0 -m $M --kv-type q4_0 --verify-max 4 \
        --prompt-tokens 512 --gen-tokens 0 --reps 1 > "$OUT/profile-verify.txt" 2>&1
    grep -v '^  "' "$OUT/profile-verify.txt" | grep -A30 'kernel profile'
fi
if [[ $WANT == *" bench "* || $WANT == *" all "* ]]; then
    "${K[@]}" --prompt-tokens 512 --gen-tokens 64 --reps 3 --ctx 4096 | tee "$OUT/kiln-bench.json" | grep -E 'tok_s"'
    wait
    tail -1 /tmp/llama-build.log
    [[ -x $L ]] && $L -m $M -ngl 99 -fa 1 -ctk q4_0 -ctv q4_0 -p 512 -n 64 -r 3 2>&1 | tee "$OUT/llama-bench.txt" | tail -5
fi
if [[ $WANT == *" prefill "* || $WANT == *" all "* ]]; then
    # An 8K-token prompt (the issue's prefill target), Kiln with its cuBLAS prefill attention and with the
    # split kernel (KILN_ATTN_BLAS=0), then llama.cpp; and where Kiln's prefill time goes.
    for v in 1 0 1; do
        echo "kiln KILN_ATTN_BLAS=$v prefill 8192: $(KILN_ATTN_BLAS=$v "${K0[@]}" --ctx 8448 --prompt-tokens 8192 \
            --gen-tokens 0 --reps 1 | grep '"prefill_tok_s"')"
    done
    KILN_CUDA_PROFILE=1 "${K0[@]}" --ctx 8448 --prompt-tokens 8192 --gen-tokens 0 --reps 1 > "$OUT/profile-prefill8k.txt" 2>&1
    grep -v '^  "' "$OUT/profile-prefill8k.txt" | grep -A12 'kernel profile'
    wait
    [[ -x $L ]] && $L -m $M -ngl 99 -fa 1 -ctk q4_0 -ctv q4_0 -p 8192 -n 0 -r 2 2>&1 | tee "$OUT/llama-pp8192.txt" | grep pp8192
fi
if [[ $WANT == *" memory "* || $WANT == *" all "* ]]; then
    # Peak device memory of the 27B at 128K context, q4_0 KV, with the verify-pass snapshots and the MTP
    # head's cache allocated (bench's verify section), against the plan's prediction.
    .device/bin/kiln-agent plan --model $M --ctx 131072 --kv-type q4_0 --spec mtp --spec-draft-n-max 3 \
        --vram 85000000000 > "$OUT/plan-128k.json" 2>&1; grep -E '"(context|total_bytes)"' "$OUT/plan-128k.json"
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    ( peak=0; while sleep 0.1; do u=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
      (( u > peak )) && peak=$u && echo $peak > /tmp/peak; done ) & poller=$!
    "${K[@]}" --ctx 131072 --prompt-tokens 512 --gen-tokens 16 --reps 1 | grep -E 'tok_s"'
    sleep 0.5; kill $poller
    echo "peak device memory: $(( $(cat /tmp/peak) - base )) MiB above the idle $base MiB"
fi
if [[ $WANT == *" serve "* || $WANT == *" all "* ]]; then
    # kiln-agent serve on the GPU: the API tests that need no downloaded model (MTP speculation identical to
    # plain decoding, downsizing under load), the real-driver downsize check, and the decode speed a client
    # sees on the 27B shape. Left out: the model-less refusal test, promtool (not carried), and the drain
    # test, which needs SmolLM2's long greedy count to outlast a 3 s drain (the tiny model stops sooner).
    python3 -c 'import openai, pytest, httpx' 2>/dev/null ||
        python3 -m pip install -q --no-index --find-links .device/wheels openai pytest httpx
    mkdir -p /tmp/kt
    KILN_DEVICE=cuda:0 KILN_TEST_MODEL=$PWD/tests/models/qwen35-tiny-q8_0.gguf KILN_AGENT_BIN=$PWD/.device/bin/kiln-agent \
        CARGO_TARGET_DIR=/tmp/kt timeout 300 python3 -m pytest tests/api/test_speculative.py tests/api/test_batching.py tests/api/test_downsize.py \
        -q -k "not without_an_mtp_head and not promtool and not drain_queues" > "$OUT/api-gpu.txt" 2>&1
    echo "API tests on cuda:0 exit $?"; tail -3 "$OUT/api-gpu.txt"; grep -h "model loaded" /tmp/kt/kiln-serve-*.log | head -2
    KILN_AGENT_BIN=.device/bin/kiln-agent timeout 120 tests/gpu/downsize.sh > "$OUT/downsize.txt" 2>&1
    echo "downsize.sh exit $?"; grep -vE "^#|^ *$" "$OUT/downsize.txt" | tail -25
    .device/bin/kiln-agent serve --device cuda:0 -m $M --ctx 4096 --kv-type q4_0 --alias x --port 8090 \
        > "$OUT/serve-27b.log" 2>&1 & sp=$!
    for _ in $(seq 1 600); do curl -sf localhost:8090/readyz >/dev/null && break; sleep 0.2; done
    python3 bench/gpu/serve_speed.py http://127.0.0.1:8090 3 64
    "${K0[@]}" --prompt-tokens 32 --gen-tokens 64 --reps 3 --ctx 4096 | grep -E '"decode_tok_s"' | sed 's/^/bench: /'
    kill $sp; wait $sp
fi
if [[ $WANT == *" depth "* || $WANT == *" all "* ]]; then
    # Decode speed with the context already holding d tokens (llama-bench -d), both engines.
    wait  # the llama.cpp build
    for d in 1024 32768; do
        "${K0[@]}" --prompt-tokens 0 --depth $d --gen-tokens 32 --reps 1 --ctx $((d + 64)) | grep -E '"decode_tok_s"' | sed "s/^/kiln depth $d: /"
        [[ -x $L ]] && $L -m $M -ngl 99 -fa 1 -ctk q4_0 -ctv q4_0 -p 0 -n 32 -d $d -r 1 2>&1 | grep tg32 | sed "s/^/llama depth $d: /"
    done
fi
if [[ $WANT == *" sampling "* || $WANT == *" all "* ]]; then
    # Greedy decode with the argmax picked on the device against whole logit rows read back and picked on
    # the host (KILN_DEVICE_SAMPLING=0), alternating, then llama.cpp's tg64 in the same call.
    for v in 1 0 1 0; do
        echo "kiln KILN_DEVICE_SAMPLING=$v: $(KILN_DEVICE_SAMPLING=$v "${K[@]}" --prompt-tokens 512 --gen-tokens 64 \
            --reps 3 --ctx 4096 | tr -d '\n ' | grep -oE '"decode_tok_s":[0-9.]+|"relative_to_1":\[[0-9.,]+\]' | tr '\n' ' ')"
    done
    # The tensor-core Q4_K products against the default, decode and the verify curve.
    for m in mma auto mma auto; do
        echo "kiln KILN_MMV=$m: $(KILN_MMV=$m "${K[@]}" --prompt-tokens 512 --gen-tokens 64 --reps 3 --ctx 4096 \
            | tr -d '\n ' | grep -oE '"decode_tok_s":[0-9.]+|"ms":\[[0-9.,]+\]|"relative_to_1":\[[0-9.,]+\]' | tr '\n' ' ')"
    done
    wait  # the llama.cpp build
    [[ -x $L ]] && $L -m $M -ngl 99 -fa 1 -ctk q4_0 -ctv q4_0 -p 0 -n 64 -r 3 2>&1 | grep tg64 | sed "s/^/llama: /"
fi
