#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for Kiln's tests: etcd + kube-apiserver + kube-controller-manager
# + kube-scheduler, v1.20.2, built from Debian bookworm's `kubernetes` source package (the machines reach no
# other source of Kubernetes binaries) with Debian's Go 1.19, cached under $KILN_CACHE/k8s-v1.20.2.
#
#   control-plane.sh build   build (or reuse) the cached binaries; ~13 min cold on 2 cores, instant when cached
#   control-plane.sh build-node   also kubelet and kube-proxy (for scripts/k8s/node.sh), same cache
#   control-plane.sh up      start everything (building first if needed); idempotent; the last stdout line is
#                            KUBECONFIG=<path>
#   control-plane.sh down    stop every process by its PID and remove the state directory
#   control-plane.sh status  say what runs
#   control-plane.sh restart-apiserver   stop and start kube-apiserver only (tests of operator recovery)
#
# Everything listens on 127.0.0.1 only. Ports: KILN_K8S_PORT_BASE (default 16440) + 1 etcd client, + 2 etcd peer,
# + 3 kube-apiserver, + 4 kube-controller-manager, + 5 kube-scheduler. State lives in KILN_K8S_RUN (default
# /tmp/kiln-k8s-run); two clusters on one machine need different KILN_K8S_RUN and KILN_K8S_PORT_BASE.
# There are no kubelets: pods are scheduled (bound to Node objects) but never run, and the node lifecycle
# controller is off so that Node objects a test creates are not tainted unreachable.
# scripts/k8s/node.sh adds a real node: it sets KILN_K8S_ADDRESS (its node IP) for kube-apiserver to listen on,
# which also turns on what pods need (the `kubernetes` Service's endpoint, the CA in service account tokens, the
# node lifecycle controller).
set -euo pipefail

K8S_VERSION=1.20.2
DEBIAN_SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${KILN_CACHE:-$HOME/.cache/kiln}/k8s-v$K8S_VERSION
RUN=${KILN_K8S_RUN:-${TMPDIR:-/tmp}/kiln-k8s-run}
PORT_BASE=${KILN_K8S_PORT_BASE:-16440}
# Where kube-apiserver listens. Loopback (the default) for tests without kubelets; scripts/k8s/node.sh passes its
# node IP so that pods reach the API server through the `kubernetes` Service (in-cluster config, the operator pod).
ADDRESS=${KILN_K8S_ADDRESS:-127.0.0.1}
ETCD_CLIENT_PORT=$((PORT_BASE + 1))
ETCD_PEER_PORT=$((PORT_BASE + 2))
APISERVER_PORT=$((PORT_BASE + 3))
CONTROLLER_MANAGER_PORT=$((PORT_BASE + 4))
SCHEDULER_PORT=$((PORT_BASE + 5))
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)
NODE_COMPONENTS=(kubelet kube-proxy)
ETCD=$CACHE/root/usr/bin/etcd

log() { printf '[control-plane] %s\n' "$*" >&2; }
# alive, wait_for, stop
source "$(dirname "${BASH_SOURCE[0]}")/pids.sh"

built() {
    [[ -x $ETCD ]] || return 1
    local c
    for c in "${COMPONENTS[@]}"; do [[ -x $CACHE/bin/$c ]] || return 1; done
}

build() {
    if built; then
        log "cached binaries in $CACHE/bin"
        return 0
    fi
    mkdir -p "$CACHE"/{apt/lists/partial,apt/cache/archives/partial,debs,root,src,bin,gopath/src/k8s.io,gocache}
    # One build at a time: a second caller waits for the first instead of racing it. A subshell, so the lock
    # is released when the build ends (the servers started later must not inherit it).
    (
        flock 9
        built || build_locked
    ) 9>"$CACHE/build.lock"
}

build_locked() {
    log "building Kubernetes v$K8S_VERSION from Debian's source package (long: ~13 min on 2 cores)"

    # 1) Go toolchain, etcd and the reflect2 fix as unpacked .debs (nothing is installed system-wide).
    (cd "$CACHE/debs" && apt-get download golang-1.19-go golang-1.19-src etcd-server etcd-client \
        golang-github-modern-go-reflect2-dev >&2)
    local deb
    for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$CACHE/root"; done

    # 2) The kubernetes source package, through a private apt configuration with a deb-src entry.
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
        >"$CACHE/apt/sources.list"
    local apt_opts=(-o "Dir::Etc::SourceList=$CACHE/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt/cache")
    apt-get "${apt_opts[@]}" update -qq >&2
    local src=$CACHE/src/kubernetes-1.20.5+really$K8S_VERSION
    if [[ ! -d $src ]]; then
        (cd "$CACHE/src" && apt-get "${apt_opts[@]}" source "kubernetes=$DEBIAN_SOURCE_VERSION" >&2)
    fi

    # 3) The vendored reflect2 1.0.1 segfaults under Go >= 1.18: use Debian's 1.0.2.
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    cp -r "$CACHE/root/usr/share/gocode/src/github.com/modern-go/reflect2" "$src/vendor/github.com/modern-go/reflect2"

    # 4) Kubernetes 1.20 builds in GOPATH mode.
    export PATH=$CACHE/root/usr/lib/go-1.19/bin:$PATH GOPATH=$CACHE/gopath GOCACHE=$CACHE/gocache \
        GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0
    ln -sfn "$src" "$GOPATH/src/k8s.io/kubernetes"
    cd "$GOPATH/src/k8s.io/kubernetes"

    # 5) pkg/generated/openapi is not in the tarball: generate it with the vendored openapi-gen.
    if [[ ! -f pkg/generated/openapi/zz_generated.openapi.go ]]; then
        go build -o "$CACHE/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
        local dirs
        dirs=$(grep -rl --include='*.go' -E '^// *\+k8s:openapi-gen=' --exclude-dir=vendor --exclude-dir=_output \
            --exclude-dir=code-generator --exclude-dir=sample-apiserver . | grep -v '_test.go$' | xargs -n1 dirname \
            | sed 's|^\./||' | sort -u \
            | sed 's|^staging/src/|k8s.io/kubernetes/vendor/|; t; s|^|k8s.io/kubernetes/|' | paste -sd, -)
        "$CACHE/bin/openapi-gen" -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
            -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$CACHE/openapi-violations.report"
    fi

    # 6) The binaries, stamped with their version (kubectl and clients read it).
    go_build "${COMPONENTS[@]}"
    "$CACHE/bin/kube-apiserver" --version >&2
    log "built into $CACHE/bin"
}

# go_build COMPONENT...: builds ./cmd/COMPONENT of the prepared source tree into $CACHE/bin, with the shared Go
# cache (a component after the first compiles only what it does not share with the others).
go_build() {
    export PATH=$CACHE/root/usr/lib/go-1.19/bin:$PATH GOPATH=$CACHE/gopath GOCACHE=$CACHE/gocache \
        GO111MODULE=off GOFLAGS='' GOPROXY=off CGO_ENABLED=0
    cd "$GOPATH/src/k8s.io/kubernetes"
    local ldflags="" pkg c
    for pkg in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
        ldflags="$ldflags -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20 -X $pkg.gitTreeState=clean"
    done
    for c in "$@"; do
        log "go build $c"
        go build -tags selinux,notest -ldflags "-s -w $ldflags" -o "$CACHE/bin/$c.tmp" "./cmd/$c"
        mv "$CACHE/bin/$c.tmp" "$CACHE/bin/$c"
    done
}

# The node components (kubelet, kube-proxy) for scripts/k8s/node.sh, from the same source tree and Go cache
# (~3 min on 2 cores once the control plane is built, instant when cached).
node_built() {
    local c
    for c in "${NODE_COMPONENTS[@]}"; do [[ -x $CACHE/bin/$c ]] || return 1; done
}

build_node() {
    build
    if node_built; then
        log "cached node binaries in $CACHE/bin"
        return 0
    fi
    (
        flock 9
        node_built || (go_build "${NODE_COMPONENTS[@]}")
    ) 9>"$CACHE/build.lock"
    "$CACHE/bin/kubelet" --version >&2
}

# ---- running the control plane ------------------------------------------------------------------------------


apiserver_ready() {
    curl -sfk --max-time 2 -H "Authorization: Bearer $(cat "$RUN/admin.token")" \
        "https://$ADDRESS:$APISERVER_PORT/readyz" 2>/dev/null | grep -q '^ok$'
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND every 0.2 s.

write_kubeconfig() { # FILE TOKEN USER
    cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kiln-test
  cluster:
    server: https://$ADDRESS:$APISERVER_PORT
    insecure-skip-tls-verify: true
users:
- name: $3
  user:
    token: $2
contexts:
- name: kiln-test
  context: {cluster: kiln-test, user: $3}
current-context: kiln-test
KC
}

start_etcd() {
    "$ETCD" --name default --data-dir "$RUN/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --logger zap --log-level warn \
        >>"$RUN/logs/etcd.log" 2>&1 &
    echo $! >"$RUN/etcd.pid"
}

start_apiserver() {
    # Off loopback the `kubernetes` Service gets its endpoint (ADDRESS:port) from the lease reconciler; on
    # loopback there is nothing to reach it from. Kubelets (node.sh) are reached by IP for logs and exec: the
    # node's name resolves nowhere.
    local reconciler=none
    [[ $ADDRESS == 127.0.0.1 ]] || reconciler=lease
    "$CACHE/bin/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --bind-address="$ADDRESS" --advertise-address="$ADDRESS" --secure-port="$APISERVER_PORT" \
        --cert-dir="$RUN/certs" --token-auth-file="$RUN/tokens.csv" --authorization-mode=RBAC \
        --service-cluster-ip-range=10.96.0.0/24 \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$RUN/sa.pub" --service-account-signing-key-file="$RUN/sa.key" \
        --allow-privileged=false --profiling=false --endpoint-reconciler-type="$reconciler" \
        --kubelet-preferred-address-types=InternalIP \
        >>"$RUN/logs/kube-apiserver.log" 2>&1 &
    echo $! >"$RUN/kube-apiserver.pid"
}

start_controller_manager() {
    # Pods that talk to the API server (node.sh) need the serving CA in their service account token Secret.
    # nodelifecycle: without kubelets it would only taint test Nodes unreachable; with a real node (node.sh)
    # it is what lifts the not-ready taint once the kubelet reports Ready.
    local root_ca=() controllers='*,-nodelifecycle'
    if [[ $ADDRESS != 127.0.0.1 ]]; then
        root_ca=(--root-ca-file="$RUN/certs/apiserver.crt")
        controllers='*'
    fi
    "$CACHE/bin/kube-controller-manager" "${root_ca[@]}" \
        --kubeconfig="$RUN/controller-manager.kubeconfig" --leader-elect=false \
        --controllers="$controllers" \
        --service-account-private-key-file="$RUN/sa.key" \
        --bind-address=127.0.0.1 --secure-port="$CONTROLLER_MANAGER_PORT" --port=0 \
        --cert-dir="$RUN/certs-controller-manager" --profiling=false \
        >>"$RUN/logs/kube-controller-manager.log" 2>&1 &
    echo $! >"$RUN/kube-controller-manager.pid"
}

start_scheduler() {
    "$CACHE/bin/kube-scheduler" \
        --kubeconfig="$RUN/scheduler.kubeconfig" --leader-elect=false \
        --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --port=0 \
        --cert-dir="$RUN/certs-scheduler" --profiling=false \
        >>"$RUN/logs/kube-scheduler.log" 2>&1 &
    echo $! >"$RUN/kube-scheduler.pid"
}

healthz() { curl -sfk --max-time 2 "https://127.0.0.1:$1/healthz" 2>/dev/null | grep -q '^ok$'; }

up() {
    build
    if alive etcd && alive kube-apiserver && alive kube-controller-manager && alive kube-scheduler \
        && apiserver_ready; then
        log "already running ($RUN)"
        echo "KUBECONFIG=$RUN/kubeconfig"
        return 0
    fi
    down_quietly
    mkdir -p "$RUN/logs"
    local t0=$SECONDS token
    openssl genrsa -out "$RUN/sa.key" 2048 2>/dev/null
    openssl rsa -in "$RUN/sa.key" -pubout -out "$RUN/sa.pub" 2>/dev/null
    : >"$RUN/tokens.csv"
    chmod 600 "$RUN/tokens.csv"
    # Random tokens per cluster (loopback only, but nothing guessable either).
    for user in admin controller-manager scheduler; do
        token=$(openssl rand -hex 24)
        echo "$token" >"$RUN/$user.token"
        case $user in
        admin) echo "$token,kiln-test-admin,kiln-test-admin,system:masters" >>"$RUN/tokens.csv" ;;
        *) echo "$token,system:kube-$user,system:kube-$user,system:masters" >>"$RUN/tokens.csv" ;;
        esac
    done
    write_kubeconfig "$RUN/kubeconfig" "$(cat "$RUN/admin.token")" kiln-test-admin
    write_kubeconfig "$RUN/controller-manager.kubeconfig" "$(cat "$RUN/controller-manager.token")" system:kube-controller-manager
    write_kubeconfig "$RUN/scheduler.kubeconfig" "$(cat "$RUN/scheduler.token")" system:kube-scheduler

    start_etcd
    start_apiserver
    wait_for kube-apiserver 60 apiserver_ready
    start_controller_manager
    start_scheduler
    wait_for kube-controller-manager 30 healthz "$CONTROLLER_MANAGER_PORT"
    wait_for kube-scheduler 30 healthz "$SCHEDULER_PORT"
    log "up in $((SECONDS - t0)) s: etcd, kube-apiserver ($ADDRESS:$APISERVER_PORT), controller-manager, scheduler"
    echo "KUBECONFIG=$RUN/kubeconfig"
}


down_quietly() {
    local c
    for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$c"; done
    rm -rf "$RUN"
}

down() {
    down_quietly
    log "stopped; removed $RUN"
}

# Restarts kube-apiserver only (etcd keeps the state): for tests of client recovery.
restart_apiserver() {
    alive etcd || { log "not running"; return 1; }
    stop kube-apiserver
    start_apiserver
    wait_for kube-apiserver 60 apiserver_ready
    log "kube-apiserver restarted"
}

status() {
    local c
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do
        if alive "$c"; then echo "$c: running (pid $(cat "$RUN/$c.pid"))"; else echo "$c: stopped"; fi
    done
    if [[ -f $RUN/kubeconfig ]]; then echo "KUBECONFIG=$RUN/kubeconfig"; fi
}

case ${1:-} in
build) build ;;
build-node) build_node ;;
up) up ;;
down) down ;;
status) status ;;
restart-apiserver) restart_apiserver ;;
*)
    echo "usage: $0 build|build-node|up|down|status|restart-apiserver" >&2
    exit 2
    ;;
esac
