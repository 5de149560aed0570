#!/usr/bin/env bash
# Operator bench: N InferenceServices (default 200) created at once against the real control plane
# (scripts/k8s/control-plane.sh), one operator under its least-privilege RBAC; prints the time until every
# service has its Deployment and Service, and reconcile p50/p99 from the operator's histogram.
# Usage: bench/operator/run.sh [N]    (starts the control plane if needed and leaves it as it found it)
set -euo pipefail
cd "$(dirname "$0")/../.."
export KILN_BENCH_N=${1:-200}
KILN_K8S_TOOLS=$(scripts/k8s-tools.sh)
export KILN_K8S_TOOLS
was_up=0
scripts/k8s/control-plane.sh status | grep -q 'kube-apiserver: running' && was_up=1
KILN_TEST_KUBECONFIG=$(scripts/k8s/control-plane.sh up | tail -1 | sed 's/^KUBECONFIG=//')
export KILN_TEST_KUBECONFIG
[[ $was_up == 1 ]] || trap 'scripts/k8s/control-plane.sh down' EXIT
cargo test -p kiln-operator --test bench_operator -- --ignored --nocapture 2>&1 | grep -E '^BENCH|test result|panicked'
