#!/usr/bin/env bash
# A real single-node Kubernetes v1.20.2 on this machine, for Kiln's end-to-end test (tests/e2e) and for trying
# Kiln locally: the control plane of scripts/k8s/control-plane.sh (its own state directory and ports, so it never
# collides with the tests' API servers) plus a node: containerd + runc + the bridge CNI plugin (Debian packages,
# installed here), kubelet and kube-proxy (built from the same Debian source tree, cached beside the control plane).
#
#   node.sh up       install/build what is missing, start everything; idempotent; the last stdout line is
#                    KUBECONFIG=<path>
#   node.sh down     stop every process by its PID (the pods' containers too), undo mounts, links, routes, iptables rules
#                    and sysctls; idempotent (safe after a failed or partial `up`)
#   node.sh status   say what runs
#
# Networking stays on this machine: the node IP (10.213.0.1) lives on a private bridge, pods get 10.214.0.0/24 on
# a second bridge, Services 10.96.0.0/24 (kube-proxy, iptables mode). Two FORWARD rules drop anything that would
# leave the pod bridge for another interface. Images are never pulled: import them with `ctr -n k8s.io images
# import` (scripts/k8s/images.sh) and use `imagePullPolicy: Never`.
# Root is required (containerd, runc, network setup). One node per machine: the kubelet and kube-proxy ports
# (10250, 10256, 10249) and the bridge names are fixed.
set -euo pipefail
cd "$(dirname "$0")/../.."

K8S_VERSION=1.20.2
CACHE=${KILN_CACHE:-$HOME/.cache/kiln}/k8s-v$K8S_VERSION
RUN=${KILN_NODE_RUN:-${TMPDIR:-/tmp}/kiln-node-run}
NODE_NAME=kiln-node
NODE_BRIDGE=kiln-node0
NODE_IP=10.213.0.1
POD_BRIDGE=kiln-pods0
POD_CIDR=10.214.0.0/24
POD_GATEWAY=10.214.0.1
SERVICE_CIDR=10.96.0.0/24 # control-plane.sh's --service-cluster-ip-range
PACKAGES=(containerd runc containernetworking-plugins iptables umoci skopeo)
PAUSE_IMAGE=docker.io/kiln-local/pause:3.2
# Host settings kubelet, kube-proxy or the bridge plugin change; saved by `up`, written back by `down`.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
    vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
    kernel.keys.root_maxbytes)
# Host directories kubelet/containerd/CNI create outside $RUN; removed by `down` unless they existed before.
HOST_DIRS=(/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/containerd /etc/cni)
GUARD_COMMENT=kiln-node-guard

# The control plane of this node: own state directory and ports, API server on the node IP so pods reach it.
export KILN_K8S_RUN=$RUN/control-plane
export KILN_K8S_PORT_BASE=${KILN_NODE_PORT_BASE:-16540}
export KILN_K8S_ADDRESS=$NODE_IP
export CONTAINERD_ADDRESS=$RUN/containerd/containerd.sock
KUBECONFIG_FILE=$KILN_K8S_RUN/kubeconfig

log() { printf '[node] %s\n' "$*" >&2; }
# alive, wait_for, stop
source "$(dirname "${BASH_SOURCE[0]}")/pids.sh"

# wait_for WHAT SECONDS COMMAND...: polls COMMAND every 0.2 s.

kubectl_() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

install_packages() {
    dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1 && return 0
    log "installing ${PACKAGES[*]} (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >&2 \
        || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${PACKAGES[@]}" >&2; }
}

# The sandbox ("pause") image every pod needs, from the Kubernetes source tree's pause.c, static; cached.
pause_image() {
    local tar=$CACHE/images/pause-3.2.tar
    if [[ ! -f $tar ]]; then
        log "building the pause image"
        scripts/k8s/images.sh pause "$tar" "$PAUSE_IMAGE" \
            "$CACHE/src/kubernetes-1.20.5+really$K8S_VERSION/build/pause/linux/pause.c"
    fi
    echo "$tar"
}

save_host_state() {
    [[ -f $RUN/host.saved ]] && return 0
    local k d
    {
        for k in "${SYSCTLS[@]}"; do
            if sysctl -n "$k" >/dev/null 2>&1; then echo "sysctl $k=$(sysctl -n "$k")"; fi
        done
        for d in "${HOST_DIRS[@]}"; do if [[ -e $d ]]; then echo "existed $d"; fi; done
    } >"$RUN/host.saved.tmp"
    mv "$RUN/host.saved.tmp" "$RUN/host.saved"
}

restore_sysctls() {
    [[ -f $RUN/host.saved ]] || return 0
    local kv
    while read -r kv; do sysctl -q -w "$kv" >/dev/null 2>&1 || log "could not restore $kv"; done \
        < <(sed -n 's/^sysctl //p' "$RUN/host.saved")
}

setup_network() {
    if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
        ip link add "$NODE_BRIDGE" type bridge
        ip addr add "$NODE_IP/32" dev "$NODE_BRIDGE"
        ip link set "$NODE_BRIDGE" up
    fi
    if ! ip link show "$POD_BRIDGE" >/dev/null 2>&1; then
        ip link add "$POD_BRIDGE" type bridge
        ip addr add "$POD_GATEWAY/24" dev "$POD_BRIDGE"
        ip link set "$POD_BRIDGE" up
    fi
    # Service IPs are rewritten by kube-proxy's iptables rules; the route only gives them a way out first.
    ip route replace "$SERVICE_CIDR" dev "$POD_BRIDGE"
    local rule
    for rule in "-i $POD_BRIDGE ! -o $POD_BRIDGE" "! -i $POD_BRIDGE -o $POD_BRIDGE"; do
        # shellcheck disable=SC2086 # the rule is a list of words
        iptables -C FORWARD $rule -m comment --comment $GUARD_COMMENT -j DROP 2>/dev/null \
            || iptables -I FORWARD 1 $rule -m comment --comment $GUARD_COMMENT -j DROP
    done
}

write_configs() {
    mkdir -p "$RUN"/{containerd,cni/net.d,cni/ipam,kubelet,kubelet-certs,logs}
    cat >"$RUN/containerd/config.toml" <<TOML
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
[grpc]
  address = "$RUN/containerd/containerd.sock"
[ttrpc]
  address = "$RUN/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE (this machine is itself a container) a negative oom_score_adj is refused:
  # clamp to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "$RUN/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
    max_conf_num = 1
TOML
    # Pods reach each other, Services and the node IP (API server, a model server on the node); nothing else.
    cat >"$RUN/cni/net.d/10-kiln.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "kiln-node", "plugins": [
  {"type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$RUN/cni/ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
            "routes": [{"dst": "$SERVICE_CIDR"}, {"dst": "$NODE_IP/32"}]}}]}
JSON
    echo "nameserver 127.0.0.1" >"$RUN/resolv.conf"
    cat >"$RUN/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
resolvConf: $RUN/resolv.conf
serializeImagePulls: false
# Images are imported, never pulled: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The default thresholds (15% of the disk free for images, 10% for the node) are relative: on a big shared
# disk that other work fills they taint the node and evict, and delete the imported images, though gigabytes
# are free. Absolute amounts instead, small ones: a test node's pods write megabytes, and a CI disk that a
# whole build has filled must not taint it (tests/e2e/run.sh checks the free space before it starts).
evictionHard: {memory.available: 200Mi, nodefs.available: 256Mi, imagefs.available: 256Mi, nodefs.inodesFree: 5%}
runtimeRequestTimeout: 2m
syncFrequency: 10s
nodeStatusUpdateFrequency: 2s
YAML
    cat >"$RUN/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG_FILE}
hostnameOverride: $NODE_NAME
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$NODE_IP/32"]
# Zeros: leave the host's conntrack sysctls alone (not writable here).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
oomScoreAdj: 0
YAML
}

node_ready() { [[ " $(kubectl_ get node "$NODE_NAME" --no-headers 2>/dev/null) " == *" Ready "* ]]; }
containerd_up() { ctr version >/dev/null 2>&1; }
proxy_healthy() { curl -sf --max-time 2 http://127.0.0.1:10256/healthz >/dev/null 2>&1; }

up() {
    if [[ $EUID != 0 ]]; then
        log "needs root: containerd, runc, kubelet and the network set-up do"
        return 1
    fi
    KUBECTL=$(scripts/k8s-tools.sh)/kubectl
    if alive containerd && alive kubelet && alive kube-proxy && node_ready \
        && [[ $(scripts/k8s/control-plane.sh status) == *"kube-apiserver: running"* ]]; then
        log "already running ($RUN)"
        echo "KUBECONFIG=$KUBECONFIG_FILE"
        return 0
    fi
    if alive containerd || alive kubelet || alive kube-proxy; then
        log "partly running: stopping it first"
        (down)
    fi
    if ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && [[ ! -f $RUN/host.saved ]]; then
        log "$NODE_BRIDGE exists but $RUN does not own it: another node runs here (or a crashed one; node.sh down"
        log "with its KILN_NODE_RUN cleans up)"
        return 1
    fi
    local t0=$SECONDS
    mkdir -p "$RUN/logs"
    install_packages
    scripts/k8s/control-plane.sh build-node
    local pause_tar
    pause_tar=$(pause_image)
    log "prepared in $((SECONDS - t0)) s (packages, binaries, pause image)"

    save_host_state
    setup_network
    write_configs
    scripts/k8s/control-plane.sh up >/dev/null

    containerd --config "$RUN/containerd/config.toml" >>"$RUN/logs/containerd.log" 2>&1 &
    echo $! >"$RUN/containerd.pid"
    wait_for containerd 30 containerd_up
    ctr -n k8s.io images import "$pause_tar" >/dev/null

    local t1=$SECONDS
    "$CACHE/bin/kubelet" --config="$RUN/kubelet.yaml" --kubeconfig="$KUBECONFIG_FILE" \
        --container-runtime=remote --container-runtime-endpoint="unix://$CONTAINERD_ADDRESS" \
        --image-service-endpoint="unix://$CONTAINERD_ADDRESS" \
        --root-dir="$RUN/kubelet" --cert-dir="$RUN/kubelet-certs" --hostname-override="$NODE_NAME" \
        --node-ip="$NODE_IP" --pod-infra-container-image="$PAUSE_IMAGE" --v=2 \
        >>"$RUN/logs/kubelet.log" 2>&1 &
    echo $! >"$RUN/kubelet.pid"
    wait_for "node $NODE_NAME Ready" 90 node_ready
    # kubelet writes vm.overcommit_memory, vm.panic_on_oom, kernel.panic* and kernel.keys.* once at start-up
    # (protectKernelDefaults is off): other work on this machine keeps the host's values.
    restore_sysctls
    "$CACHE/bin/kube-proxy" --config="$RUN/kube-proxy.yaml" --v=2 >>"$RUN/logs/kube-proxy.log" 2>&1 &
    echo $! >"$RUN/kube-proxy.pid"
    wait_for kube-proxy 30 proxy_healthy
    log "up in $((SECONDS - t0)) s (node Ready $((SECONDS - t1)) s after kubelet start); state in $RUN"
    echo "KUBECONFIG=$KUBECONFIG_FILE"
}


# The pods' containers, once kubelet is stopped: kill their tasks (the shims then exit) and remove them. Not
# through the API: controllers (and the Kiln operator) would only start them again, and what a CNI DEL would
# undo (the pod bridge's links, the network namespaces' mounts, IPAM files under $RUN) is removed below anyway.
remove_containers() {
    alive containerd || return 0
    local t c
    for t in $(ctr -n k8s.io tasks ls -q 2>/dev/null); do ctr -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
    for t in $(ctr -n k8s.io tasks ls -q 2>/dev/null); do ctr -n k8s.io tasks rm -f "$t" >/dev/null 2>&1 || true; done
    for c in $(ctr -n k8s.io containers ls -q 2>/dev/null); do ctr -n k8s.io containers rm "$c" >/dev/null 2>&1 || true; done
}

# The KUBE-* chains kubelet (firewall, mark, canary chains) and kube-proxy leave in the host's tables, and
# the rules that jump to them from the built-in chains.
remove_kube_chains() {
    local cmd table rule chain
    for cmd in iptables ip6tables; do
        command -v "$cmd" >/dev/null || continue
        for table in mangle filter nat; do
            { "$cmd" -t "$table" -S 2>/dev/null || true; } | { grep -E '^-A [A-Z]+ .*-j KUBE-' || true; } \
                | { grep -vE '^-A KUBE-' || true; } | sed 's/^-A/-D/' | while read -r rule; do
                eval "$cmd -t $table $rule" 2>/dev/null || true
            done
            for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/ {print $2}'); do
                "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
            done
            for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/ {print $2}'); do
                "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
            done
        done
    done
}

teardown_network() {
    local link rule
    for link in $(ip -o link show master "$POD_BRIDGE" 2>/dev/null | awk -F'[ :@]+' '{print $2}'); do
        ip link del "$link" 2>/dev/null || true
    done
    ip route del "$SERVICE_CIDR" dev "$POD_BRIDGE" 2>/dev/null || true
    ip link del "$POD_BRIDGE" 2>/dev/null || true
    ip link del "$NODE_BRIDGE" 2>/dev/null || true
    for rule in "-i $POD_BRIDGE ! -o $POD_BRIDGE" "! -i $POD_BRIDGE -o $POD_BRIDGE"; do
        # shellcheck disable=SC2086 # the rule is a list of words
        while iptables -D FORWARD $rule -m comment --comment $GUARD_COMMENT -j DROP 2>/dev/null; do :; done
    done
}

unmount_run() {
    local m
    # Deepest first; lazily when busy (a mount that outlived its process).
    awk -v run="$RUN/" 'index($5, run) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done
}

remove_cgroups() {
    local c
    # A container process whose shim is gone (killed, crashed) is still in its pod's cgroup: end it there.
    find /sys/fs/cgroup/*/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | while read -r pid; do
        kill -9 "$pid" 2>/dev/null || true
    done
    sleep 0.2
    for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/kubepods; do
        if [[ -d $c ]]; then find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
    done
}

down() {
    # Go on past any failure: a partial or crashed `up` is cleaned up as far as possible.
    set +e
    stop kube-proxy
    if [[ -x $CACHE/bin/kube-proxy ]]; then "$CACHE/bin/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
    stop kubelet
    remove_containers
    stop containerd
    scripts/k8s/control-plane.sh down 2>/dev/null || true
    unmount_run
    teardown_network
    remove_kube_chains
    remove_cgroups
    if [[ -f $RUN/host.saved ]]; then
        restore_sysctls
        local d
        for d in "${HOST_DIRS[@]}"; do
            grep -qx "existed $d" "$RUN/host.saved" || rm -rf "$d"
        done
    fi
    if awk -v run="$RUN/" 'index($5, run) == 1 {found = 1} END {exit !found}' /proc/self/mountinfo; then
        log "mounts remain under $RUN; leaving it"
    else
        rm -rf "$RUN"
    fi
    log "down"
}

status() {
    local p
    for p in containerd kubelet kube-proxy; do
        if alive "$p"; then echo "$p: running (pid $(cat "$RUN/$p.pid"))"; else echo "$p: stopped"; fi
    done
    scripts/k8s/control-plane.sh status
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
