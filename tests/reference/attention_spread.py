"""llama.cpp's own spread between two of its attention paths (flash attention on vs off, CPU, f16 cache) on the
prompt that node-agent/tests/gpu_models.rs's `compare` feeds a model (token ids (i·7919 + 13) mod n_vocab,
37 of them), then 40 greedy steps with both contexts fed the flash-attention run's tokens. It prints the
relative RMS logit difference per step and where the greedy token flips (with the flash-attention run's own
gap between the two tokens). Kiln's GPU-vs-CPU tolerances for real models in that test are these numbers:
two implementations that round at different points differ this much on these sensitive small models.

Usage: python3 tests/reference/attention_spread.py MODEL.gguf   (needs the llama.cpp build of
bench/build-llama-cpp.sh, as make_goldens.py does)
"""
import sys

import make_goldens as G  # builds or finds llama.cpp and imports llama_cpp with it
import numpy as np

L = G.L


def nrmse(got: np.ndarray, want: np.ndarray) -> float:
    d = (got - want).astype(np.float64)
    return float(np.sqrt((d * d).sum() / (want.astype(np.float64) ** 2).sum()))


def main(path: str) -> None:
    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    assert model, f"cannot load {path}"
    nv = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    on = G.Ctx(model, L.LLAMA_FLASH_ATTN_TYPE_ENABLED)
    off = G.Ctx(model, L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    prompt = [(i * 7919 + 13) % nv for i in range(37)]
    for c in (on, off):
        c.clear()
        c.decode(prompt)
    errors, flips = [], []
    for step in range(40):
        a, b = on.last_logits(nv), off.last_logits(nv)
        errors.append(nrmse(b, a))
        ta, tb = int(np.argmax(a)), int(np.argmax(b))
        if ta != tb:
            flips.append((step, round(float(a[ta] - a[tb]), 4)))
        for c in (on, off):
            c.decode([ta])
    print(path)
    print("  relative RMS difference per step:", " ".join(f"{e:.1e}" for e in errors))
    print(f"  largest {max(errors):.3f}; greedy flips (step, gap): {flips}")


if __name__ == "__main__":
    main(sys.argv[1])
