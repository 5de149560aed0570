#!/usr/bin/env bash
# The weight-stream ceiling of a decode step and the distance of Kiln's Q4_K products from it (issue 4's
# >= 85% of HBM bandwidth): builds stream-ceiling.cu and product-lab.cu (+ product-lab-kernels.cu, which
# includes kernels/gpu/matvec.cu) with this machine's nvcc and runs them. On the GPU machine, from the
# repository root: bench/gpu/product-lab.sh [stream-ceiling args: small-phases reps [sweep]]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
[ -x "$NVCC" ] || { echo "no nvcc on this machine"; exit 1; }
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
"$NVCC" -O3 -std=c++17 -arch=sm_$ARCH -o /tmp/stream-ceiling "$HERE/stream-ceiling.cu"
"$NVCC" -cubin -O3 -std=c++17 -arch=sm_$ARCH -I "$HERE/../../kernels/gpu" -o /tmp/lab.cubin \
    "$HERE/product-lab-kernels.cu"
"$NVCC" -O3 -std=c++17 -arch=sm_$ARCH -o /tmp/product-lab "$HERE/product-lab.cu"
/tmp/stream-ceiling "${@:-0}"
/tmp/product-lab /tmp/lab.cubin
