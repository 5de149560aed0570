#!/usr/bin/env bash
# The install side of Kiln against real software: helm lint/template/schema, manifests/ freshness, hadolint on
# the Dockerfiles, promtool on the alerts, a real Prometheus scraping a real `kiln-agent serve`, and helm
# install/upgrade/uninstall on the real API server of scripts/k8s/control-plane.sh.
# Needs the release binary: cargo build --release -p kiln-agent (scripts/test.sh builds it first).
# Extra arguments go to pytest (e.g. -k monitoring).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet openai pytest httpx pyyaml
exec python3 -m pytest tests/chart -q -p no:cacheprovider "$@"
