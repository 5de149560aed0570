#!/usr/bin/env bash
# Container images built locally from a minimal root filesystem, without a registry or a container engine:
# umoci writes an OCI layout, skopeo turns it into a docker-archive tar that `ctr -n k8s.io images import`
# (scripts/k8s/node.sh's containerd) loads. Pods use them with `imagePullPolicy: Never`.
#
#   images.sh operator BIN OUT.tar REF           kiln-operator: /kiln-operator, `run`, uid 65532
#   images.sh agent BIN OUT.tar REF [EXTRA_CA]   kiln-agent: /usr/local/bin/kiln-agent, `serve`, uid 65532;
#                                                EXTRA_CA (PEM) is appended to the image's CA bundle (a
#                                                private model mirror's CA, as a site would bake in its own)
#   images.sh pause OUT.tar REF PAUSE_C          the pod sandbox image, pause.c compiled static
#
# What the Kiln images hold follows docker/operator.Dockerfile and docker/agent-*.Dockerfile (same paths,
# entrypoints, default commands, user 65532, environment, ports): the release binary, the shared libraries it
# links (from this machine; the Dockerfiles build in a container instead), the CA bundle for https:// and hf://
# model downloads, and an /etc/passwd naming the non-root user. No shell, no package manager.
set -euo pipefail

log() { printf '[images] %s\n' "$*" >&2; }

# add_binary ROOTFS BIN DEST: the binary and every shared library it loads (ldd), at their host paths.
add_binary() {
    local rootfs=$1 bin=$2 dest=$3 lib
    install -D -m 0755 "$bin" "$rootfs$dest"
    # The release profile keeps debug info for profiling on a workstation; the image keeps only the symbols.
    strip --strip-debug "$rootfs$dest"
    for lib in $(ldd "$bin" | grep -oE '/[^ ]+' | sort -u); do
        install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
    done
}

# add_base ROOTFS [EXTRA_CA]: users, CA certificates and the directories the pods mount over.
add_base() {
    local rootfs=$1 extra_ca=${2:-}
    mkdir -p "$rootfs"/{etc/ssl/certs,tmp}
    chmod 1777 "$rootfs/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
        >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
    cat /etc/ssl/certs/ca-certificates.crt ${extra_ca:+"$extra_ca"} >"$rootfs/etc/ssl/certs/ca-certificates.crt"
}

# build OUT.tar REF FILL_FUNCTION CONFIG_ARGS...: a one-layer image whose root is filled by FILL_FUNCTION.
build() {
    local out=$1 ref=$2 fill=$3
    shift 3
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: $work is local
    trap "rm -rf '$work'" RETURN
    umoci init --layout "$work/layout"
    umoci new --image "$work/layout:image"
    umoci unpack --image "$work/layout:image" "$work/bundle" >/dev/null
    "$fill" "$work/bundle/rootfs"
    umoci repack --image "$work/layout:image" "$work/bundle"
    umoci config --image "$work/layout:image" --os linux --architecture amd64 "$@"
    mkdir -p "$(dirname "$out")"
    rm -f "$out.tmp"
    skopeo copy --quiet "oci:$work/layout:image" "docker-archive:$out.tmp:$ref"
    mv "$out.tmp" "$out"
    log "$ref -> $out ($(du -h "$out" | cut -f1))"
}

operator_root() {
    add_base "$1"
    add_binary "$1" "$BIN" /kiln-operator
}

agent_root() {
    add_base "$1" "$EXTRA_CA"
    add_binary "$1" "$BIN" /usr/local/bin/kiln-agent
}

pause_root() { install -D -m 0755 "$PAUSE_BIN" "$1/pause"; }

case ${1:-} in
operator)
    [[ $# == 4 ]] || { echo "usage: $0 operator BIN OUT.tar REF" >&2; exit 2; }
    BIN=$2
    build "$3" "$4" operator_root --config.entrypoint /kiln-operator --config.cmd run \
        --config.user 65532:65532 --config.exposedports 8081/tcp
    ;;
agent)
    [[ $# == 4 || $# == 5 ]] || { echo "usage: $0 agent BIN OUT.tar REF [EXTRA_CA]" >&2; exit 2; }
    BIN=$2 EXTRA_CA=${5:-}
    build "$3" "$4" agent_root --config.entrypoint /usr/local/bin/kiln-agent --config.cmd serve \
        --config.user 65532:65532 --config.exposedports 8080/tcp \
        --config.env KILN_HOST=0.0.0.0 --config.env KILN_PORT=8080
    ;;
pause)
    [[ $# == 4 ]] || { echo "usage: $0 pause OUT.tar REF PAUSE_C" >&2; exit 2; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    PAUSE_BIN=$work/pause
    gcc -Os -static -DVERSION=3.2-kiln -o "$PAUSE_BIN" "$4"
    strip "$PAUSE_BIN"
    build "$2" "$3" pause_root --config.entrypoint /pause
    ;;
*)
    echo "usage: $0 operator|agent|pause ..." >&2
    exit 2
    ;;
esac
