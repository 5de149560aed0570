#!/usr/bin/env bash
# The GPU compilers CI uses to prove every kernel builds for NVIDIA and AMD (CI has no GPU):
#   nvcc  — from PyPI (nvidia-cuda-nvcc + headers), pinned to 13.0.x to match the GPU machine's driver;
#   hipcc — Debian bookworm's ROCm 5.2.3 (hipcc, HIP headers, device libraries), unpacked, not installed,
#           plus the gfx1100 ISA bitcode that 5.2 lacks (made from the gfx1030 one; see notes/toolchain.md).
#   nvrtc — from PyPI (nvidia-cuda-nvrtc, 13.0.x): the run-time compiler the CUDA backend uses, so the
#           kernels are also compiled exactly as a GPU machine compiles them (kernels/tests/nvrtc.rs).
#   hip-runtime — the same ROCm's runtime libraries (libamdhip64 with hipRTC inside, HSA, the kernel
#           driver's thunk, comgr), for hipRTC, the ROCm backend's run-time compiler (kernels/tests/hiprtc.rs);
#           hip-path: a HIP_PATH over them and the headers, for building `--features rocm`.
# Cached under $KILN_CACHE keyed by version. Usage: scripts/gpu-toolchains.sh cuda|hip|nvrtc|hip-runtime →
# prints the root (nvrtc, hip-runtime: a folder of just those libraries, for the library path).
set -euo pipefail
CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
CUDA_VERSION=13.0.88
HIP_VERSION=5.2.3

cuda() {
    local root=$CACHE/cuda-$CUDA_VERSION
    if [[ ! -x $root/bin/nvcc ]]; then
        local tmp=$root.tmp
        rm -rf "$tmp"
        python3 -m pip install --quiet --no-deps --target "$tmp/py" \
            "nvidia-cuda-nvcc==$CUDA_VERSION" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-crt==$CUDA_VERSION" \
            "nvidia-cuda-cccl==13.0.85" "nvidia-nvvm==$CUDA_VERSION" >&2
        # The wheels put everything under nvidia/cu13/; nvcc wants one CUDA root.
        mv "$tmp/py/nvidia/cu13" "$tmp/root"
        rm -rf "$tmp/py" "$root"
        mv "$tmp/root" "$root"
        rmdir "$tmp"
    fi
    echo "$root"
}

nvrtc() {
    local root=$CACHE/nvrtc-$CUDA_VERSION
    if [[ ! -f $root/libnvrtc.so.13 ]]; then
        local tmp=$root.tmp
        rm -rf "$tmp"
        python3 -m pip install --quiet --no-deps --target "$tmp/py" "nvidia-cuda-nvrtc==$CUDA_VERSION" >&2
        rm -rf "$root"
        mv "$tmp/py/nvidia/cu13/lib" "$root"
        rm -rf "$tmp"
    fi
    echo "$root"
}
hip() {
    local root=$CACHE/rocm-$HIP_VERSION
    if [[ ! -x $root/usr/bin/hipcc ]]; then
        local tmp=$root.tmp
        rm -rf "$tmp" && mkdir -p "$tmp/debs"
        (cd "$tmp/debs" && apt-get download hipcc libamdhip64-dev libamdhip64-5 rocm-device-libs \
            libamd-comgr-dev libamd-comgr2 libhsa-runtime-dev libhsa-runtime64-1 rocm-cmake \
            clang-15 clang-tools-15 libclang-common-15-dev libclang-cpp15 libllvm15 llvm-15 lld-15 >&2)
        for d in "$tmp"/debs/*.deb; do dpkg -x "$d" "$tmp/root"; done
        local bc=$tmp/root/usr/lib/x86_64-linux-gnu/amdgcn/bitcode
        [[ -d $bc ]] || bc=$(dirname "$(find "$tmp/root" -name 'oclc_isa_version_1030.bc' | head -1)")
        if [[ ! -f $bc/oclc_isa_version_1100.bc ]]; then
            "$tmp/root/usr/lib/llvm-15/bin/llvm-dis" "$bc/oclc_isa_version_1030.bc" -o "$tmp/isa.ll"
            sed -i 's/10300/11000/g' "$tmp/isa.ll"
            "$tmp/root/usr/lib/llvm-15/bin/llvm-as" "$tmp/isa.ll" -o "$bc/oclc_isa_version_1100.bc"
        fi
        rm -rf "$tmp/debs" "$root"
        mv "$tmp/root" "$root"
        rm -rf "$tmp"
    fi
    echo "$root"
}

hip_runtime() {
    local root lib
    root=$(hip)
    lib=$root/usr/lib/x86_64-linux-gnu
    if [[ ! -e $lib/libhsakmt.so.1 || ! -e $lib/libhiprtc-builtins.so.5 ]]; then
        local tmp=$root.rt.tmp
        rm -rf "$tmp" && mkdir -p "$tmp"
        (cd "$tmp" && apt-get download libhsakmt1 libhiprtc-builtins5 >&2)
        for d in "$tmp"/*.deb; do dpkg -x "$d" "$root"; done
        rm -rf "$tmp"
    fi
    # Only these on the library path: the folder above also holds libLLVM and the rest of a toolchain.
    local out=$root/runtime-lib
    if [[ ! -e $out/libamdhip64.so ]]; then
        rm -rf "$out.tmp" && mkdir -p "$out.tmp"
        for so in libamdhip64.so.5 libhsa-runtime64.so.1 libhsakmt.so.1 libamd_comgr.so.2 \
            libhiprtc-builtins.so.5 libLLVM-15.so.1 libclang-cpp.so.15; do
            ln -s "$(readlink -f "$lib/$so")" "$out.tmp/$so"
        done
        ln -s libamdhip64.so.5 "$out.tmp/libamdhip64.so"
        rm -rf "$out" && mv "$out.tmp" "$out"
    fi
    echo "$out"
}

# A HIP_PATH for building with `--features rocm` (hip-sys looks for include/ and lib/ under it).
hip_path() {
    local root lib out
    lib=$(hip_runtime)
    root=$(dirname "$lib")
    out=$root/hip-path
    if [[ ! -e $out/lib/libamdhip64.so ]]; then
        rm -rf "$out" && mkdir -p "$out"
        ln -s "$root/usr/include" "$out/include"
        ln -s "$lib" "$out/lib"
    fi
    echo "$out"
}

case ${1:-} in
    cuda) cuda ;;
    hip) hip ;;
    nvrtc) nvrtc ;;
    hip-runtime) hip_runtime ;;
    hip-path) hip_path ;;
    *) echo "usage: $0 cuda|hip|nvrtc|hip-runtime|hip-path" >&2; exit 2 ;;
esac
