#!/usr/bin/env bash
# Packs the llama.cpp source that PyPI `llama-cpp-python` vendors (scripts/fetch-llama-cpp-src.sh) into
# .device/llama-src.tar.xz for bench/gpu/build-llama-cuda.sh on the GPU machine: without the other GPU
# backends, the docs, the models and the tests, which a CUDA llama-bench does not build (≈7 MB, so it
# fits in a device call next to Kiln's binaries).
set -euo pipefail
cd "$(dirname "$0")/../.."
src=$(scripts/fetch-llama-cpp-src.sh)
mkdir -p .device
ex=()
for d in ggml/src/ggml-vulkan ggml/src/ggml-sycl ggml/src/ggml-metal ggml/src/ggml-opencl ggml/src/ggml-cann \
    ggml/src/ggml-kompute ggml/src/ggml-webgpu ggml/src/ggml-zdnn ggml/src/ggml-hexagon docs models media \
    tests examples/llama.android examples/llama.swiftui .github; do
    ex+=(--exclude="llama.cpp/$d")
done
tar cJf .device/llama-src.tar.xz "${ex[@]}" -C "$(dirname "$src")" llama.cpp
ls -l .device/llama-src.tar.xz
