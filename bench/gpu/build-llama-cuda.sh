#!/usr/bin/env bash
# Builds llama.cpp's llama-bench with CUDA on the GPU machine, from the source the llama-cpp-python sdist
# vendors (packed on the CPU machine as .device/llama-src.tar.xz by bench/gpu/pack-llama-src.sh).
# Usage: bench/gpu/build-llama-cuda.sh SRC_TARBALL DEST_DIR SM (e.g. 90)
set -euo pipefail
tar=$1 dest=$2 sm=$3
mkdir -p "$dest" && tar xJf "$tar" -C "$dest"
cd "$dest/llama.cpp"
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -B build "${gen[@]}" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$sm" -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_APP=OFF -DCMAKE_BUILD_TYPE=Release
cmake --build build --target llama-bench -j "$(nproc)"
