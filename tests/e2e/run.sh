#!/usr/bin/env bash
# Kiln end to end on a real single-node Kubernetes (issue 10): helm install the chart, kubectl apply the tiny
# CPU example, and get answers through its Service, with nothing faked between the YAML and the answer.
#
#   tests/e2e/run.sh          the whole test; the node is torn down at the end, pass or fail
#   tests/e2e/run.sh keep     steps 1 to 5 only, then leave everything running to try Kiln out: the node, the
#                             chart, the InferenceService (prints KUBECONFIG and the Service's URL)
#   tests/e2e/run.sh down     stop what `keep` left running (the model mirror, then scripts/k8s/node.sh down)
#
# Step 1 is here: the release binaries, the operator and agent images (scripts/k8s/images.sh) imported into
# the node's containerd; then the node (scripts/k8s/node.sh up) and the model mirror (tests/e2e/model_server.py,
# HTTPS on the node IP, its CA baked into the test's agent image). Steps 2 to 7 are tests/e2e/e2e.py.
# Needs root (the node). ~3 min warm; a cold machine adds the Debian packages and the kubelet/kube-proxy build.
set -euo pipefail
cd "$(dirname "$0")/../.."
export KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
TARGET=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)
WORK=${KILN_E2E_WORK:-${TMPDIR:-/tmp}/kiln-e2e}
export KILN_NODE_RUN=${KILN_NODE_RUN:-${TMPDIR:-/tmp}/kiln-node-run}
NODE_IP=10.213.0.1 # scripts/k8s/node.sh's node IP
MIRROR_PORT=18443
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
# The mirror sends the 98 MB model at 3 MB/s (~33 s), long enough for the operator's status polls (every 10 s)
# to catch the download's progress (`Loading N%`) in the InferenceService's status.
MIRROR_RATE=3000000
OPERATOR_IMAGE=ghcr.io/kiln-dev/kiln-operator:e2e
AGENT_IMAGE=ghcr.io/kiln-dev/kiln-agent:e2e

log() { printf '[e2e] %s\n' "$*"; }
t_start=$SECONDS
MODE=${1:-test}

stop_all() {
    if [[ -f $WORK/mirror.pid ]]; then
        kill "$(cat "$WORK/mirror.pid")" 2>/dev/null || true
        rm -f "$WORK/mirror.pid"
    fi
    scripts/k8s/node.sh down
}

cleanup() {
    local rc=$?
    if [[ $MODE == keep && $rc == 0 ]]; then
        log "left running: KUBECONFIG=$KUBECONFIG; stop it with: tests/e2e/run.sh down"
    else
        stop_all
    fi
    log "total $((SECONDS - t_start)) s, exit $rc"
}

case $MODE in
test | keep) ;;
down)
    stop_all
    exit 0
    ;;
*)
    echo "usage: $0 [keep|down]" >&2
    exit 2
    ;;
esac
trap cleanup EXIT

rm -rf "$WORK"
mkdir -p "$WORK/mirror" "$KILN_NODE_RUN"
# The node's state, the images (~250 MB as tarballs, content and snapshots) and the model cache (~100 MB)
# share this disk; below 256 MiB free the kubelet taints the node and evicts (scripts/k8s/node.sh). Say so
# plainly rather than as a pod that never schedules.
need_mib=1024
free_mib=$(df -Pm "$KILN_NODE_RUN" | awk 'NR == 2 {print $4}')
log "disk free for the node: $free_mib MiB ($KILN_NODE_RUN)"
if ((free_mib < need_mib)); then
    log "needs at least $need_mib MiB free on the disk of $KILN_NODE_RUN (the images, the model, the node's state)"
    df -h "$KILN_NODE_RUN" "$TARGET" >&2
    exit 1
fi
# The node's model cache (modelCache type hostPath): the admin's once-per-node step, a directory the agent's
# uid 65532 can write.
install -d -o 65532 -g 65532 "$WORK/node-models"

log "step 1: release binaries, the model, images"
# The same command as scripts/test.sh's: the same feature resolution, so nothing is built again.
cargo build --release --quiet -p kiln-agent -p kiln-operator
scripts/fetch-models.sh smollm2
ln -s "$KILN_CACHE/models/$MODEL_FILE" "$WORK/mirror/$MODEL_FILE"
MODEL_SHA256=$(sha256sum "$KILN_CACHE/models/$MODEL_FILE" | cut -d' ' -f1)

# The mirror's certificate, from a CA made for this run only.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=kiln e2e mirror CA" \
    -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$NODE_IP" -keyout "$WORK/mirror.key" -out "$WORK/mirror.csr" 2>/dev/null
openssl x509 -req -in "$WORK/mirror.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial -days 1 \
    -extfile <(printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP") -out "$WORK/mirror.crt" 2>/dev/null

# The node (it also installs umoci and skopeo, which the images need).
KUBECONFIG_LINE=$(scripts/k8s/node.sh up | tail -1)
KUBECONFIG=${KUBECONFIG_LINE#KUBECONFIG=}
export KUBECONFIG

t_images=$SECONDS
scripts/k8s/images.sh operator "$TARGET/release/kiln-operator" "$WORK/operator.tar" "$OPERATOR_IMAGE"
scripts/k8s/images.sh agent "$TARGET/release/kiln-agent" "$WORK/agent.tar" "$AGENT_IMAGE" "$WORK/ca.crt"
export CONTAINERD_ADDRESS=$KILN_NODE_RUN/containerd/containerd.sock
ctr -n k8s.io images import "$WORK/operator.tar" >/dev/null
ctr -n k8s.io images import "$WORK/agent.tar" >/dev/null
log "images built and imported in $((SECONDS - t_images)) s"

python3 tests/e2e/model_server.py --bind "$NODE_IP" --port "$MIRROR_PORT" --dir "$WORK/mirror" \
    --cert "$WORK/mirror.crt" --key "$WORK/mirror.key" --rate "$MIRROR_RATE" 2>"$WORK/mirror.log" &
echo $! >"$WORK/mirror.pid"
for _ in $(seq 50); do
    curl -sf --cacert "$WORK/ca.crt" -o /dev/null -I "https://$NODE_IP:$MIRROR_PORT/$MODEL_FILE" && break
    sleep 0.1
done
curl -sf --cacert "$WORK/ca.crt" -o /dev/null -I "https://$NODE_IP:$MIRROR_PORT/$MODEL_FILE"

python3 -m pip install --quiet openai pyyaml prometheus_client
steps=()
if [[ $MODE == keep ]]; then steps=(--keep); fi
python3 tests/e2e/e2e.py --kubeconfig "$KUBECONFIG" --tools "$(scripts/k8s-tools.sh)" --node-run "$KILN_NODE_RUN" \
    --operator-image "$OPERATOR_IMAGE" --agent-image "$AGENT_IMAGE" \
    --model-uri "https://$NODE_IP:$MIRROR_PORT/$MODEL_FILE" --model-sha256 "$MODEL_SHA256" \
    --mirror-log "$WORK/mirror.log" --prometheus "$(scripts/prometheus.sh)" --work "$WORK" --node-cache "$WORK/node-models" --timings "$WORK/timings.json" "${steps[@]}"
