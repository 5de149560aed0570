#!/usr/bin/env bash
# Proves every GPU kernel compiles, warnings as errors, for the NVIDIA and AMD targets Kiln supports —
# the check CI can make without a GPU. The same files are compiled at run time (NVRTC) on a real device.
#   nvcc  (CUDA 13.0): sm_80, sm_89, sm_90
#   hipcc (ROCm 5.2.3): gfx1030, gfx1100, gfx90a
set -euo pipefail
cd "$(dirname "$0")/.."
KDIR=kernels/gpu
# The check is a function of its inputs alone: the kernel sources, this script, and the toolchains that
# scripts/gpu-toolchains.sh pins. A passing run leaves a stamp named by their hash, and a later run over the
# same inputs (CI after a session's own run, which takes ~5 min on 2 cores) says so instead of compiling it all
# again. KILN_RECHECK_KERNELS=1 compiles anyway.
KEY=$(sha256sum scripts/check-gpu-kernels.sh scripts/gpu-toolchains.sh "$KDIR"/* | sha256sum | cut -c1-16)
STAMP=${KILN_CACHE:-$HOME/.cache/kiln}/kernel-checks/$KEY
if [[ -f $STAMP && ${KILN_RECHECK_KERNELS:-0} != 1 ]]; then
    echo "these kernel sources passed this check before (inputs $KEY, $(cat "$STAMP")): not compiled again"
    exit 0
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

CUDA=$(scripts/gpu-toolchains.sh cuda)
# nvcc runs in the background while hipcc runs below: the two toolchains take about as long each, and CI
# has two cores.
(
    for arch in sm_80 sm_89 sm_90; do
        for f in "$KDIR"/*.cu; do
            "$CUDA/bin/nvcc" -cubin -arch="$arch" -std=c++17 -Werror all-warnings -Xptxas -Werror \
                -o "$OUT/$(basename "$f" .cu).$arch.cubin" "$f"
        done
        echo "nvcc $arch: ok"
    done
) > "$OUT/nvcc.log" 2>&1 &
nvcc_job=$!

ROCM=$(scripts/gpu-toolchains.sh hip)
export HIP_PLATFORM=amd HIP_PATH=$ROCM/usr HIP_CLANG_PATH=$ROCM/usr/lib/llvm-15/bin ROCM_PATH=$ROCM/usr
export PATH=$ROCM/usr/bin:$ROCM/usr/lib/llvm-15/bin:$PATH
BITCODE=$(dirname "$(find "$ROCM" -name 'oclc_isa_version_1100.bc' | head -1)")
for arch in gfx1030 gfx1100 gfx90a; do
    for f in "$KDIR"/*.cu; do
        hipcc --genco --offload-arch="$arch" -std=c++17 -Werror -Wno-unused-command-line-argument \
            --rocm-device-lib-path="$BITCODE" -I"$ROCM/usr/include" -x hip \
            -o "$OUT/$(basename "$f" .cu).$arch.co" "$f"
    done
    echo "hipcc $arch: ok"
done
if wait "$nvcc_job"; then
    cat "$OUT/nvcc.log"
else
    cat "$OUT/nvcc.log"
    echo "nvcc: failed" >&2
    exit 1
fi
mkdir -p "$(dirname "$STAMP")"
date -u +"passed %Y-%m-%dT%H:%M:%SZ" > "$STAMP"
