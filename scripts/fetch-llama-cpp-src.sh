#!/usr/bin/env bash
# Fetch llama.cpp's source as vendored by PyPI `llama-cpp-python` (the reference peer) into the cache, without
# building it. Tests read facts from it (the upstream chat templates in models/templates); bench/ builds it.
# Prints the llama.cpp source directory.
set -euo pipefail
VER=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
root="$KILN_CACHE/llama-cpp-python-$VER/src"
src="$root/llama_cpp_python-$VER"
if [ ! -f "$src/.complete" ]; then
  mkdir -p "$root"
  # pip prepares an sdist's metadata even for `download`; scikit-build-core is its build backend.
  python3 -m pip install --quiet scikit-build-core >&2
  python3 -m pip download --quiet --no-deps --no-build-isolation --no-binary llama-cpp-python \
    -d "$root" "llama-cpp-python==$VER" >&2
  rm -rf "$src"
  tar -xzf "$root/llama_cpp_python-$VER.tar.gz" -C "$root"
  touch "$src/.complete"
fi
echo "$src/vendor/llama.cpp"
