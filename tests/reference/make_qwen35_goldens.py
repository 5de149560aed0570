#!/usr/bin/env python3
"""Goldens for Kiln's qwen35 (Qwen3.5/3.6: Gated DeltaNet + gated attention) from llama.cpp, on the tiny
synthetic models committed in tests/models/ (made by `kiln-agent synth --preset tiny --quant f16|q8_0`).

For each model and prompt: the prompt ids (llama.cpp's tokenizer, parse_special), the whole prompt prefilled
in one llama_decode, then N_GENERATE greedy tokens one llama_decode each (never stopping at end-of-generation:
the weights are random, so an EOG token is just another token), the top-1/top-2 margin of every step, and
the full logits after the prompt and after the last generated token. As a cross-check the same runs are
repeated with flash attention disabled and the largest logit difference recorded.

llama.cpp settings: its defaults except n_threads = n_threads_batch = 2 and n_ctx = 512; flash attention
AUTO (llama.cpp's default) and an f16 KV cache.

Usage:
  LLAMA_CPP_LIB_PATH=$HOME/.cache/kiln/llama-cpp-python-0.3.36/install/lib \
      python3 tests/reference/make_qwen35_goldens.py
Writes tests/golden/qwen35-tiny-<quant>.json.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
from pathlib import Path

import numpy as np
import llama_cpp as L

REPO = Path(__file__).resolve().parents[2]
MODELS = ["qwen35-tiny-f16.gguf", "qwen35-tiny-q8_0.gguf"]
N_THREADS = 2
N_CTX = 512
N_GENERATE = 72
PROMPTS = [
    ("the_world", "the world is"),
    ("chat", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"),
    ("digits", "1234 and 5678, then"),
    ("long", "the cat and the dog went out into the rain, and there they sat in the shade of "
             "a tree that was older than the town itself. " * 3),
]

_LOG: list[str] = []


@L.llama_log_callback
def _log_cb(level, text, user_data):  # noqa: ARG001
    _LOG.append(text.decode("utf-8", errors="replace"))


L.llama_log_set(_log_cb, ctypes.c_void_p(0))


def tokenize(vocab, text: str) -> list[int]:
    b = text.encode("utf-8")
    n = len(b) + 16
    buf = (L.llama_token * n)()
    r = L.llama_tokenize(vocab, b, len(b), buf, n, False, True)
    assert r >= 0
    return list(buf[:r])


class Ctx:
    def __init__(self, model, fa: int):
        p = L.llama_context_default_params()
        p.n_ctx = N_CTX
        p.n_threads = N_THREADS
        p.n_threads_batch = N_THREADS
        p.flash_attn_type = fa
        self.ctx = L.llama_init_from_model(model, p)
        assert self.ctx
        self.type_k = p.type_k

    def run(self, prompt: list[int], n_vocab: int):
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        self.decode(prompt)
        first = self.logits(n_vocab)
        logits = first
        out, margins = [], []
        for _ in range(N_GENERATE):
            tok = int(np.argmax(logits))
            top2 = np.partition(logits, -2)[-2:]
            margins.append(float(top2[1] - top2[0]))
            out.append(tok)
            self.decode([tok])
            logits = self.logits(n_vocab)
        return out, margins, first, logits

    def decode(self, toks):
        arr = (L.llama_token * len(toks))(*toks)
        assert L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(toks))) == 0

    def logits(self, n_vocab):
        ptr = L.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32, copy=True)


def main():
    L.llama_backend_init()
    out_dir = REPO / "tests" / "golden"
    out_dir.mkdir(exist_ok=True)
    for name in MODELS:
        path = REPO / "tests" / "models" / name
        mp = L.llama_model_default_params()
        model = L.llama_model_load_from_file(str(path).encode(), mp)
        assert model, "".join(_LOG[-20:])
        vocab = L.llama_model_get_vocab(model)
        n_vocab = L.llama_vocab_n_tokens(vocab)
        ctx = Ctx(model, L.LLAMA_FLASH_ATTN_TYPE_AUTO)
        ctx_nofa = Ctx(model, L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        assert ctx.type_k == 1, "expected an f16 KV cache"
        cases = []
        for cid, text in PROMPTS:
            ids = tokenize(vocab, text)
            gen, margins, first, last = ctx.run(ids, n_vocab)
            gen2, _, first2, last2 = ctx_nofa.run(ids, n_vocab)
            same = next((i for i, (a, b) in enumerate(zip(gen, gen2)) if a != b), len(gen))
            cases.append({
                "id": cid, "prompt": text, "prompt_ids": ids, "generated_ids": gen,
                "top1_top2_logit_margin": margins,
                "prompt_logits": [float(x) for x in first],
                "final_logits": [float(x) for x in last],
                "flash_attn_disabled": {
                    "same_tokens": same,
                    "prompt_logits_max_abs_diff": float(np.max(np.abs(first - first2))),
                    "final_logits_max_abs_diff": float(np.max(np.abs(last - last2))),
                },
            })
            print(name, cid, len(ids), "prompt ids; margins min", round(min(margins), 4),
                  "FA on/off same tokens", same, "prompt |Δ|", cases[-1]["flash_attn_disabled"])
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        doc = {
            "format_version": 1,
            "model": name, "model_sha256": sha, "n_vocab": n_vocab,
            "llama_cpp": {"version": L.__version__, "n_threads": N_THREADS, "n_ctx": N_CTX,
                          "flash_attn": "auto", "kv_type": "f16", "system_info": L.llama_print_system_info().decode()},
            "n_generate": N_GENERATE,
            "cases": cases,
        }
        stem = name.removesuffix(".gguf")
        (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
        L.llama_free(ctx.ctx)
        L.llama_free(ctx_nofa.ctx)
        L.llama_model_free(model)


if __name__ == "__main__":
    main()
