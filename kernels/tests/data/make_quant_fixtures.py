#!/usr/bin/env python3
"""Builds quant_fixtures.json: reference (de)quantization results from gguf-py (pip install gguf==0.19.0 numpy).

For every type: synthetic blocks (random bytes with sane f16 scales) and gguf-py's numpy dequantization of them.
For types gguf-py can quantize (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): random floats and gguf-py's bytes.
For Q4_K, Q5_K, Q6_K (gguf-py has no quantizer): ggml's own C reference quantizers, compiled from the llama.cpp
source tree named by $LLAMA_CPP_DIR (kquant_ref.c is the harness); skipped with a warning when unset.
Floats are stored as u32 bit patterns (hex) so the Rust test can compare exactly.
"""
import json
import os
import pathlib
import subprocess
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

rng = np.random.default_rng(20240611)

# (type, values per block, bytes per block, byte offsets of f16 scale fields inside a block)
TYPES = [
    (T.F32, 1, 4, []),
    (T.F16, 1, 2, []),
    (T.BF16, 1, 2, []),
    (T.Q4_0, 32, 18, [0]),
    (T.Q4_1, 32, 20, [0, 2]),
    (T.Q5_0, 32, 22, [0]),
    (T.Q5_1, 32, 24, [0, 2]),
    (T.Q8_0, 32, 34, [0]),
    (T.Q4_K, 256, 144, [0, 2]),
    (T.Q5_K, 256, 176, [0, 2]),
    (T.Q6_K, 256, 210, [208]),
]
QUANTIZABLE = {T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}


def f32_hex(a):
    return [f"{v:08x}" for v in np.asarray(a, dtype=np.float32).view(np.uint32).tolist()]


def synthetic_bytes(ty, block, size, scale_offsets):
    n_values = 64 if block == 1 else block * (2 if block == 256 else 4)
    if ty == T.F32:
        vals = rng.normal(0, 1, n_values).astype(np.float32)
        vals[:4] = [0.0, -0.0, 1e-40, -3.0e38]  # zero signs, a subnormal, a huge value
        return vals.tobytes(), n_values
    if ty in (T.F16, T.BF16):
        bits = rng.integers(0, 1 << 16, n_values, dtype=np.uint32)
        exp_mask = 0x7C00 if ty == T.F16 else 0x7F80
        # No NaNs (their payloads are not worth pinning); infinities and subnormals stay in.
        bits = np.where((bits & exp_mask) == exp_mask, bits & ~np.uint32(0x0400 if ty == T.F16 else 0x0080), bits)
        return bits.astype(np.uint16).tobytes(), n_values
    raw = bytearray(rng.integers(0, 256, (n_values // block) * size, dtype=np.uint8).tobytes())
    for b in range(n_values // block):
        for off in scale_offsets:
            scale = np.float16(rng.uniform(-1.0, 1.0) * 10.0 ** rng.uniform(-4, 0))
            raw[b * size + off:b * size + off + 2] = scale.tobytes()
    return bytes(raw), n_values


def ggml_k_quants(src):
    root = os.environ.get("LLAMA_CPP_DIR")
    if not root:
        print("LLAMA_CPP_DIR unset: no K-quant quantization fixtures")
        return None
    ggml = pathlib.Path(root) / "ggml"
    exe = pathlib.Path(tempfile.mkdtemp()) / "kquant_ref"
    here = pathlib.Path(__file__).parent
    # No FMA contraction: the Rust port rounds every product separately, as C without -ffp-contract does.
    subprocess.run(["gcc", "-O2", "-ffp-contract=off", f"-I{ggml}/include", f"-I{ggml}/src", str(here / "kquant_ref.c"),
                    str(ggml / "src/ggml-quants.c"), "-lm", "-o", str(exe)], check=True)
    raw = subprocess.run([str(exe), str(src.size)], input=src.tobytes(), capture_output=True, check=True).stdout
    nb = src.size // 256
    sizes = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
    out, off = {}, 0
    for name, size in sizes.items():
        out[name] = raw[off:off + nb * size].hex()
        off += nb * size
    return out


def main():
    out = []
    k_src = rng.normal(0, 1, 1024).astype(np.float32)
    k_src[256:512] = 0.0  # an all-zero super-block
    k_src[512:768] = rng.uniform(0, 2, 256).astype(np.float32)  # all positive: min clamps to 0
    k_src[768:800] *= np.float32(1e-4)  # one tiny sub-block
    k_bytes = ggml_k_quants(k_src)
    for ty, block, size, scale_offsets in TYPES:
        data, n = synthetic_bytes(ty, block, size, scale_offsets)
        deq = quants.dequantize(np.frombuffer(data, dtype=np.uint8).reshape(1, -1), ty).reshape(-1)
        assert deq.size == n
        entry = {"type": ty.name, "n": n, "bytes": data.hex(), "dequantized": f32_hex(deq)}
        if ty in QUANTIZABLE:
            src = rng.normal(0, 1, 128).astype(np.float32)
            src[5] = 0.0
            src[32:64] = 0.0  # an all-zero block
            src[64:96] *= np.float32(1e-3)
            q = quants.quantize(src.reshape(1, -1), ty).reshape(-1)
            entry["quantize_src"] = f32_hex(src)
            entry["quantize_bytes"] = q.tobytes().hex()
        if k_bytes and ty.name in k_bytes:
            entry["quantize_src"] = f32_hex(k_src)
            entry["quantize_bytes"] = k_bytes[ty.name]
        out.append(entry)
    path = pathlib.Path(__file__).with_name("quant_fixtures.json")
    path.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
