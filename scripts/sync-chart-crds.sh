#!/usr/bin/env bash
# Copies the generated CRD YAML (crds/*.yaml, written from the Rust types) into the chart (charts/kiln/crds/).
#   scripts/sync-chart-crds.sh          copy; CRD files the source no longer has are removed from the chart
#   scripts/sync-chart-crds.sh --check  change nothing; exit 1 and name the files when the chart's copy is stale
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=crds
DST=charts/kiln/crds
check=false
case ${1:-} in
    --check) check=true ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
shopt -s nullglob
stale=()
for f in "$SRC"/*.yaml; do
    cmp -s "$f" "$DST/$(basename "$f")" || stale+=("$DST/$(basename "$f") (differs from or lacks $f)")
done
for f in "$DST"/*.yaml; do
    [[ -f $SRC/$(basename "$f") ]] || stale+=("$f (no $SRC/$(basename "$f"))")
done
if $check; then
    if ((${#stale[@]})); then
        printf 'stale chart CRD: %s\n' "${stale[@]}" >&2
        echo "run scripts/sync-chart-crds.sh" >&2
        exit 1
    fi
    exit 0
fi
for f in "$DST"/*.yaml; do [[ -f $SRC/$(basename "$f") ]] || rm -v "$f"; done
for f in "$SRC"/*.yaml; do cp -v "$f" "$DST/"; done
