#!/usr/bin/env bash
# The downsizing check on a real GPU machine (not part of scripts/test.sh: it needs a GPU and torch):
# `gpus` and `plan` against the real driver, then `serve` watching the GPU through NVML (or sysfs on AMD)
# while a second process (tests/gpu/pressure.py, torch) takes memory until less than the headroom is free
# and later frees it; requests keep going the whole time. Prints /status and the kiln_gpu_* metrics.
#
# Usage: KILN_AGENT_BIN=path/to/kiln-agent tests/gpu/downsize.sh [MODEL] [MEMORY_SOURCE]
# With the CPU backend the agent's own bytes are not on the device, so the watcher (which subtracts its
# planned bytes from `used`) keeps stepping down to --ctx-min under pressure; with a GPU backend it stops
# at the rung that frees enough.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${KILN_AGENT_BIN:-${CARGO_TARGET_DIR:-target}/release/kiln-agent}
MODEL=${1:-tests/models/qwen35-tiny-q8_0.gguf}
SOURCE=${2:-nvml}
LOG=${TMPDIR:-/tmp}/kiln-gpu-downsize.log
HEADROOM=$((8 * 1024 * 1024 * 1024))
echo "== gpus"; "$B" gpus
echo "== gpus --env"; "$B" gpus --env
echo "== plan: the 27B shape at 128K, q4_0 KV, MTP 3, against GPU 0's free memory"
"$B" plan --synth qwen3.6-27b:q4_k_m --ctx 131072 --kv-type q4_0 --spec mtp |
  python3 -c 'import json,sys; p=json.load(sys.stdin); print("context", p["context"], "total GB", p["total_bytes"]/1e9)'
echo "== serve --memory-source $SOURCE"
"$B" serve --model "$MODEL" --port 8089 --ctx 4096 --ctx-min 512 --memory-source "$SOURCE" \
  --memory-poll-ms 200 --grow-after-s 2 --vram-headroom $HEADROOM --alias x >"$LOG" 2>&1 &
SP=$!
for _ in $(seq 1 300); do curl -sf localhost:8089/readyz >/dev/null && break; sleep 0.2; done
curl -s localhost:8089/status; echo
python3 tests/gpu/pressure.py $HEADROOM
curl -s localhost:8089/metrics | grep -E "^kiln_(gpu|context)"
kill $SP; wait $SP; echo "serve exited with $?"
tail -20 "$LOG"
