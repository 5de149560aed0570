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
  # The sdist straight from PyPI's simple index (PEP 691 JSON), checked against the sha256 it lists:
  # `pip download` would prepare the sdist's metadata, which needs CMake just to fetch a tarball.
  python3 - "$VER" "$root" <<'PY' >&2
import hashlib, json, os, sys, urllib.request
ver, root = sys.argv[1], sys.argv[2]
name = f"llama_cpp_python-{ver}.tar.gz"
req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
sdist = next((f for f in files if f["filename"] == name), None)
if sdist is None:
    sys.exit(f"PyPI lists no {name}")
dest = os.path.join(root, name)
with urllib.request.urlopen(sdist["url"], timeout=300) as r, open(dest + ".part", "wb") as out:
    h = hashlib.sha256()
    while chunk := r.read(1 << 20):
        h.update(chunk)
        out.write(chunk)
if h.hexdigest() != sdist["hashes"]["sha256"]:
    sys.exit(f"{name}: sha256 {h.hexdigest()} is not PyPI's {sdist['hashes']['sha256']}")
os.replace(dest + ".part", dest)
print(f"fetched {name} (sha256 ok)")
PY
  rm -rf "$src"
  tar -xzf "$root/llama_cpp_python-$VER.tar.gz" -C "$root"
  touch "$src/.complete"
fi
echo "$src/vendor/llama.cpp"
