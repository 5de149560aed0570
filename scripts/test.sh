#!/usr/bin/env bash
# Every test Kiln has, on a fresh machine: fetches what the tests need (the real models, llama.cpp's source
# for the upstream chat templates) into ~/.cache/kiln, checks formatting and lints, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
# No incremental-compilation caches: a from-scratch run (CI) never reuses them, and they were gigabytes of the
# disk the end-to-end node then lacked (the kubelet evicts pods when the disk runs short).
export CARGO_INCREMENTAL=0
# Build outputs live outside the checkout, one directory per Rust toolchain: CI runs in a fresh clone, and
# building every dependency again (clippy's, the test profile's, the release profile's) was most of its time.
# Past a size the cache starts over.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    CARGO_TARGET_DIR="$KILN_CACHE/cargo-target/rustc-$(rustc -V | awk '{print $2 "-" substr($3, 2)}')"
    export CARGO_TARGET_DIR
    if [ -d "$CARGO_TARGET_DIR" ] && (($(du -s --block-size=1G "$CARGO_TARGET_DIR" | cut -f1) > ${KILN_TARGET_CACHE_GB:-30})); then
        echo "the build cache $CARGO_TARGET_DIR is over ${KILN_TARGET_CACHE_GB:-30} GB: starting it over"
        rm -rf "$CARGO_TARGET_DIR"
    fi
    # Cargo names a workspace crate's artifacts by its path inside the workspace, not by where the checkout
    # is, and judges them fresh by file times: a checkout elsewhere (CI's clone, another worktree) reused
    # test binaries built from the other checkout, with its absolute paths compiled in
    # (env!("CARGO_MANIFEST_DIR") pointed at a clone that was gone). When the checkout is not the one the
    # cache last built, the workspace crates' fingerprints go, so they are built again from these sources;
    # the dependencies stay cached.
    checkout_stamp="$CARGO_TARGET_DIR/kiln-checkout"
    if [ "$(cat "$checkout_stamp" 2>/dev/null)" != "$PWD" ]; then
        for pkg in $(cargo metadata --no-deps --format-version 1 |
            python3 -c 'import json, sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["packages"]))'); do
            rm -rf "$CARGO_TARGET_DIR"/*/.fingerprint/"$pkg"-*
        done
        mkdir -p "$CARGO_TARGET_DIR" && echo "$PWD" > "$checkout_stamp"
    fi
fi
# The debug-profile cargo commands below all select --workspace: cargo resolves the dependencies' features
# over the packages a command selects, so selecting fewer builds the shared dependencies again.
# Each step header says how long the run has taken so far (CI's budget: keep the whole run well under 45 min).
step() { printf '\n== %s (at %d s)\n' "$*" "$SECONDS"; }

step "fetch test assets"
scripts/fetch-models.sh all
scripts/qwen35-vocab.sh >/dev/null
KILN_LLAMA_CPP_SRC=$(scripts/fetch-llama-cpp-src.sh)
export KILN_LLAMA_CPP_SRC
# The models are part of the suite here: a missing one is a failure, not a skip.
export KILN_REQUIRE_MODELS=1
# NVRTC and hipRTC (no GPU needed) compile the kernels as the CUDA and ROCm backends do
# (kernels/tests/nvrtc.rs, hiprtc.rs).
LD_LIBRARY_PATH="$(scripts/gpu-toolchains.sh nvrtc):$(scripts/gpu-toolchains.sh hip-runtime)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH KILN_REQUIRE_NVRTC=1 KILN_REQUIRE_HIPRTC=1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test"
cargo test --workspace --no-fail-fast

step "GPU kernels compile for every target (nvcc sm_80/89/90, hipcc gfx1030/1100/90a; warnings are errors)"
scripts/check-gpu-kernels.sh

step "the ROCm build (--features rocm: links ROCm 5.2.3's HIP runtime; no AMD GPU here, so it must say so)"
(
    export HIP_PATH
    HIP_PATH=$(scripts/gpu-toolchains.sh hip-path)
    cargo clippy --workspace --features kiln-agent/rocm --all-targets --quiet -- -D warnings
    cargo test --workspace --features kiln-agent/rocm --test rocm --test gpu_ops
)

step "API tests (real server, real model, the official openai client)"
python3 -m pip install --quiet openai pytest httpx prometheus_client
# Both binaries in one command (tests/e2e/run.sh builds the same pair): one feature resolution, so the
# dependencies they share are built once.
cargo build --release -p kiln-agent -p kiln-operator --quiet
# promtool checks serve's /metrics (tests/api/test_downsize.py).
KILN_PROMTOOL="$(scripts/prometheus.sh)/promtool"
export KILN_PROMTOOL
KILN_AGENT_BIN="${CARGO_TARGET_DIR:-target}/release/kiln-agent" python3 -m pytest tests/api -q

step "operator against a real Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler)"
scripts/k8s/control-plane.sh build # cached under $KILN_CACHE/k8s-v1.20.2 (~13 min cold, instant warm)
KILN_K8S_TOOLS=$(scripts/k8s-tools.sh)
KILN_TEST_KUBECONFIG=$(scripts/k8s/control-plane.sh up | tail -1 | sed 's/^KUBECONFIG=//')
export KILN_K8S_TOOLS KILN_TEST_KUBECONFIG
trap 'scripts/k8s/control-plane.sh down' EXIT
KILN_AGENT_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/kiln-agent" \
    cargo test --workspace --test k8s --test k8s_agent --test k8s_leader --test k8s_restart -- --nocapture

scripts/k8s/control-plane.sh down
trap - EXIT
unset KILN_TEST_KUBECONFIG

# A fresh control plane of its own (tests/chart/test_k8s.py brings it up and down): the operator tests leave
# their CRD behind, which helm would refuse to adopt.
step "chart, manifests, images, monitoring (helm, hadolint, promtool, a real Prometheus, the API server)"
scripts/test-chart.sh

# Last: a real single-node Kubernetes of its own (scripts/k8s/node.sh; its own state and ports): helm install,
# kubectl apply the tiny CPU example, answers through its Service, a rolling edit, delete, helm uninstall.
step "end to end on a real node (containerd, kubelet, kube-proxy; helm, kubectl, the official openai client)"
tests/e2e/run.sh
printf '\n== all passed in %d s\n' "$SECONDS"
