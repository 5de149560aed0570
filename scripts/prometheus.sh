#!/usr/bin/env bash
# Prometheus and promtool for the tests: Debian bookworm's `prometheus` package (the machines reach no other
# source of it), unpacked, not installed, into $KILN_CACHE/prometheus-<version>/ keyed by the upstream version.
# Prints the directory that holds `prometheus` and `promtool`.
set -euo pipefail
VERSION=2.42.0
DEBIAN_VERSION=2.42.0+ds-5+b6
CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
DIR=$CACHE/prometheus-$VERSION
BIN=$DIR/bin
if [[ -x $BIN/prometheus && -x $BIN/promtool ]]; then
    echo "$BIN"
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# `apt-get download` needs the package lists; fetch them only when this version is not known yet.
if ! apt-cache show "prometheus=$DEBIAN_VERSION" >/dev/null 2>&1; then
    apt-get update -qq >&2
fi
(cd "$WORK" && apt-get download -qq -o APT::Sandbox::User=root "prometheus=$DEBIAN_VERSION" >&2)
dpkg-deb -x "$WORK"/prometheus_*.deb "$WORK/root"
mkdir -p "$BIN.tmp"
install -m 0755 "$WORK/root/usr/bin/prometheus" "$WORK/root/usr/bin/promtool" "$BIN.tmp/"
"$BIN.tmp/prometheus" --version >&2
rm -rf "$BIN" && mkdir -p "$DIR" && mv "$BIN.tmp" "$BIN"
echo "$BIN"
