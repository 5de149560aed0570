#!/usr/bin/env bash
# Build the reference peer: llama.cpp as vendored by PyPI `llama-cpp-python` (CPU, -march=native, shared libs),
# plus its `llama-bench` tool, and install the `llama-cpp-python` bindings on top of that build (no second
# compile). Cached outside the repo, keyed by version. Prints the install prefix on stdout.
# Used by bench/ (side-by-side speed) and tests/reference/ (regenerating golden files); CI needs neither.
set -euo pipefail
VER=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
root="$KILN_CACHE/llama-cpp-python-$VER"
src="$root/src/llama_cpp_python-$VER"
build="$root/build"
prefix="$root/install"
jobs=${JOBS:-$(nproc)}

if [ ! -f "$prefix/.done" ]; then
  mkdir -p "$root/src"
  python3 -m pip install --quiet cmake ninja scikit-build-core >&2
  "$(dirname "$0")/../scripts/fetch-llama-cpp-src.sh" >/dev/null
  cmake -S "$src/vendor/llama.cpp" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DCMAKE_INSTALL_PREFIX="$prefix" >&2
  cmake --build "$build" -j "$jobs" --target llama llama-bench >&2
  mkdir -p "$prefix/lib" "$prefix/bin"
  cp -a "$build"/bin/*.so* "$prefix/lib/" 2>/dev/null || true
  find "$build" -name '*.so*' -exec cp -a {} "$prefix/lib/" \;
  cp -a "$build/bin/llama-bench" "$prefix/bin/"
  # The Python bindings alone: the shared library above is what they load (LLAMA_CPP_LIB_PATH).
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python3 -m pip install --quiet --no-deps \
    --no-build-isolation "$src" >&2
  python3 -m pip install --quiet numpy typing-extensions diskcache jinja2 >&2
  touch "$prefix/.done"
fi
echo "$prefix"
