#!/usr/bin/env python3
"""Tiny random-weight GGUF models for the architectures that have no real model in the test set (qwen2, qwen3)
plus a llama variant with GQA, and their llama.cpp goldens.

For each model in MODELS this script
  1. writes tests/golden/synthetic/<name>.gguf with the PyPI `gguf` package (0.19.0): random weights drawn from a
     seeded numpy generator (so the bytes are reproducible), the hyperparameter keys llama.cpp's loader reads
     for that architecture (src/llama-model.cpp `load_hparams` + src/models/<arch>.cpp), and a real GPT-2 BPE
     tokenizer: the first N_VOCAB tokens of SmolLM2's vocabulary (17 special tokens, the byte alphabet, then
     merges in merge order) and every SmolLM2 merge whose two parts and result are all among them;
  2. runs it with llama.cpp (llama-cpp-python 0.3.36's low-level API, helpers shared with make_goldens.py:
     llama.cpp's own context defaults, flash attention AUTO (resolves to on for CPU), f16 KV, n_ctx 512,
     2 threads): the greedy continuation of PROMPTS (N_GENERATE tokens) with the top-1/top-2 logit margin per
     step, the full last-position logits of LOGITS_PROMPT, and the same runs with flash attention DISABLED;
  3. writes tests/golden/synthetic/<name>.json (format: tests/golden/synthetic/README.md).

Weights are well scaled so the logits are not degenerate: matrices ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1²),
embeddings ~ N(0, EMBD_GAIN²/n_embd) so tied-head logits have a standard deviation of about EMBD_GAIN. The
script checks that every greedy continuation has at least MIN_DISTINCT distinct tokens and no token
repeated more than MAX_RUN times in a row. attn_output and ffn_down get a larger gain (RESID_GAIN): with a tied
head and layer outputs no larger than the embeddings, every tied model just repeated its last input token.

Usage (needs SmolLM2 from scripts/fetch-models.sh for the vocabulary, and the llama.cpp build):
  prefix=$(bench/build-llama-cpp.sh)
  LLAMA_CPP_LIB_PATH="$prefix/lib" python3 tests/reference/make_synthetic.py [--models a,b] [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_goldens as mg  # noqa: E402  (sets LLAMA_CPP_LIB_PATH / builds, imports llama_cpp, captures its log)

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

L = mg.L
REPO = mg.REPO
SMOLLM2 = mg.KILN_CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

N_VOCAB = 4096
N_GENERATE = 32
MIN_DISTINCT = 8
MAX_RUN = 12  # longest run of one repeated token allowed in a greedy continuation
EMBD_GAIN = 3.0
TOPK_STEPS = 5
# std gain of attn_output and ffn_down: with a tied head, a residual stream dominated by the token's own
# embedding makes the model repeat its input token; stronger layer outputs avoid that
RESID_GAIN = 8.0
FORMAT_VERSION = 1

PROMPTS: list[tuple[str, str]] = [
    ("capital_fr", "The capital of France is"),
    ("fibonacci", "def fibonacci(n):"),
    ("once_upon", "Once upon a time, in a small village, there lived"),
]
LOGITS_PROMPT = "capital_fr"

# name -> configuration. `wtype`: type of the layer matrices; `etype`: of token_embd (and output.weight).
# head_dim None: n_embd / n_head (llama.cpp's default when attention.key_length is absent).
MODELS: dict[str, dict] = {
    "llama-gqa-f32": dict(
        arch="llama", pre="smollm", seed=6, n_embd=64, n_layer=3, n_head=4, n_head_kv=2, head_dim=None,
        n_ff=192, tied=False, wtype=T.F32, etype=T.F32, rope_base=10000.0, eps=1e-5, ctx_train=2048,
        about="llama: NORM RoPE (adjacent pairs), GQA 4 q heads / 2 kv heads, head size 16, untied output head, "
              "all f32"),
    "qwen2-f16": dict(
        arch="qwen2", pre="qwen2", seed=2, n_embd=128, n_layer=3, n_head=4, n_head_kv=2, head_dim=None,
        n_ff=320, tied=True, wtype=T.F16, etype=T.F16, rope_base=1000000.0, eps=1e-6, ctx_train=4096,
        about="qwen2: q/k/v biases (f32), NEOX RoPE, GQA 4/2, head size 32, tied head, f16 matrices"),
    "qwen3-f16": dict(
        arch="qwen3", pre="qwen2", seed=3, n_embd=128, n_layer=3, n_head=4, n_head_kv=2, head_dim=64,
        n_ff=320, tied=True, wtype=T.F16, etype=T.F16, rope_base=1000000.0, eps=1e-6, ctx_train=4096,
        about="qwen3: per-head q/k RMSNorm, head size 64 from attention.key_length (n_embd / n_head = 32), "
              "GQA 4/2, NEOX RoPE, tied head, f16 matrices"),
    "qwen3-q8_0": dict(
        arch="qwen3", pre="qwen2", seed=4, n_embd=128, n_layer=3, n_head=4, n_head_kv=2, head_dim=64,
        n_ff=320, tied=True, wtype=T.Q8_0, etype=T.Q8_0, rope_base=1000000.0, eps=1e-6, ctx_train=4096,
        about="qwen3 as qwen3-f16 with Q8_0 matrices and Q8_0 tied embeddings"),
    "qwen2-q4_0": dict(
        arch="qwen2", pre="qwen2", seed=5, n_embd=128, n_layer=3, n_head=4, n_head_kv=2, head_dim=None,
        n_ff=320, tied=True, wtype=T.Q4_0, etype=T.Q8_0, rope_base=1000000.0, eps=1e-6, ctx_train=4096,
        about="qwen2 as qwen2-f16 with Q4_0 layer matrices (repacked by llama.cpp's CPU backend on AVX2) and "
              "Q8_0 tied embeddings"),
}

FILE_TYPE = {T.F32: 0, T.F16: 1, T.Q4_0: 2, T.Q8_0: 7}  # llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_Q4_0, MOSTLY_Q8_0


# ---------------------------------------------------------------------------------------------------------
# tokenizer: a prefix of SmolLM2's GPT-2 BPE vocabulary


def smollm2_vocab(n: int):
    r = gguf.GGUFReader(str(SMOLLM2))
    tokens = list(r.fields["tokenizer.ggml.tokens"].contents())
    types = [int(t) for t in r.fields["tokenizer.ggml.token_type"].contents()]
    merges = list(r.fields["tokenizer.ggml.merges"].contents())
    tokens, types = tokens[:n], types[:n]
    have = set(tokens)
    kept = []
    for m in merges:
        a, b = m.split(" ", 1)
        if a in have and b in have and a + b in have:
            kept.append(m)
    return tokens, types, kept


# ---------------------------------------------------------------------------------------------------------
# model writer


def mat(rng, rows: int, cols: int, std: float | None = None) -> np.ndarray:
    """rows × cols (GGUF dims [cols, rows]); N(0, 1/cols) unless std is given."""
    s = 1.0 / np.sqrt(cols) if std is None else std
    return (rng.standard_normal((rows, cols)) * s).astype(np.float32)


def vec(rng, n: int, mean: float, std: float) -> np.ndarray:
    return (mean + rng.standard_normal(n) * std).astype(np.float32)


def add_matrix(w: gguf.GGUFWriter, name: str, x: np.ndarray, ty: T) -> None:
    if ty == T.F32:
        w.add_tensor(name, x)
    elif ty == T.F16:
        w.add_tensor(name, x.astype(np.float16))
    else:
        q = gguf.quants.quantize(x, ty)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=ty)


def write_model(name: str, cfg: dict, path: Path, vocab) -> dict:
    tokens, types, merges = vocab
    arch = cfg["arch"]
    rng = np.random.default_rng(cfg["seed"])
    d, nh, nkv, nff = cfg["n_embd"], cfg["n_head"], cfg["n_head_kv"], cfg["n_ff"]
    hd = cfg["head_dim"] or d // nh
    q_dim, kv_dim = nh * hd, nkv * hd

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"kiln synthetic {name}")
    w.add_description("random weights for testing only: " + cfg["about"])
    w.add_file_type(FILE_TYPE[cfg["wtype"]])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg["ctx_train"])
    w.add_embedding_length(d)
    w.add_block_count(cfg["n_layer"])
    w.add_feed_forward_length(nff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_layer_norm_rms_eps(cfg["eps"])
    w.add_rope_freq_base(cfg["rope_base"])
    if cfg["head_dim"] is not None:
        # llama.cpp defaults key_length AND value_length to n_embd / n_head; qwen3's graph asserts they match
        w.add_key_length(hd)
        w.add_value_length(hd)
    if arch == "llama":
        w.add_vocab_size(len(tokens))
        w.add_rope_dimension_count(hd)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(cfg["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if arch == "llama":  # as SmolLM2
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_pad_token_id(2)
    else:  # as Qwen2/Qwen3 instruct: <|endoftext|> is BOS and padding, <|im_end|> EOS, no BOS added
        w.add_bos_token_id(0)
        w.add_eos_token_id(2)
        w.add_pad_token_id(0)
    w.add_add_bos_token(False)

    et = cfg["etype"]
    add_matrix(w, "token_embd.weight", mat(rng, len(tokens), d, EMBD_GAIN / np.sqrt(d)), et)
    w.add_tensor("output_norm.weight", vec(rng, d, 1.0, 0.1))
    if not cfg["tied"]:
        add_matrix(w, "output.weight", mat(rng, len(tokens), d, EMBD_GAIN / np.sqrt(d)), et)
    wt = cfg["wtype"]
    for il in range(cfg["n_layer"]):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", vec(rng, d, 1.0, 0.1))
        add_matrix(w, p + "attn_q.weight", mat(rng, q_dim, d), wt)
        add_matrix(w, p + "attn_k.weight", mat(rng, kv_dim, d), wt)
        add_matrix(w, p + "attn_v.weight", mat(rng, kv_dim, d), wt)
        if arch == "qwen2":
            w.add_tensor(p + "attn_q.bias", vec(rng, q_dim, 0.0, 0.3))
            w.add_tensor(p + "attn_k.bias", vec(rng, kv_dim, 0.0, 0.3))
            w.add_tensor(p + "attn_v.bias", vec(rng, kv_dim, 0.0, 0.1))
        if arch == "qwen3":
            w.add_tensor(p + "attn_q_norm.weight", vec(rng, hd, 1.0, 0.1))
            w.add_tensor(p + "attn_k_norm.weight", vec(rng, hd, 1.0, 0.1))
        add_matrix(w, p + "attn_output.weight", mat(rng, d, q_dim, RESID_GAIN / np.sqrt(q_dim)), wt)
        w.add_tensor(p + "ffn_norm.weight", vec(rng, d, 1.0, 0.1))
        add_matrix(w, p + "ffn_gate.weight", mat(rng, nff, d), wt)
        add_matrix(w, p + "ffn_up.weight", mat(rng, nff, d), wt)
        add_matrix(w, p + "ffn_down.weight", mat(rng, d, nff, RESID_GAIN / np.sqrt(nff)), wt)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "arch": arch, "n_vocab": len(tokens), "n_embd": d, "n_layer": cfg["n_layer"], "n_head": nh,
        "n_head_kv": nkv, "head_dim": hd, "n_ff": nff, "tied_output": cfg["tied"],
        "matrix_type": wt.name, "embedding_type": et.name, "rope_freq_base": cfg["rope_base"],
        "rms_eps": cfg["eps"], "context_length": cfg["ctx_train"], "seed": cfg["seed"],
        "tokenizer_pre": cfg["pre"], "n_merges": len(merges), "about": cfg["about"],
        "weights": f"matrices N(0, 1/fan_in) (attn_output, ffn_down: N(0, {RESID_GAIN}²/fan_in)), norms 1 + N(0, 0.01), token_embd N(0, {EMBD_GAIN}²/n_embd)"
                   + (", q/k/v biases N(0, 0.3²/0.3²/0.1²)" if arch == "qwen2" else ""),
    }


# ---------------------------------------------------------------------------------------------------------
# llama.cpp runs


def greedy_topk(ctx, vocab, prompt_ids: list[int], n_vocab: int, n_gen: int, k: int = TOPK_STEPS):
    """make_goldens.greedy_run, also keeping the top-k ids and logits of every step's distribution."""
    ctx.clear()
    ctx.decode(prompt_ids)
    plog = ctx.last_logits(n_vocab)
    out, margins, steps, eog = [], [], [], None
    for _ in range(n_gen):
        logits = ctx.last_logits(n_vocab)
        ids, vals = mg.top_k(logits, k)
        tok = ids[0]
        assert tok == int(np.argmax(logits))
        margins.append(float(np.float32(vals[0]) - np.float32(vals[1])))
        steps.append({"ids": ids, "logits": vals})
        out.append(tok)
        if L.llama_vocab_is_eog(vocab, tok):
            eog = tok
            break
        ctx.decode([tok])
    return out, margins, eog, plog, steps


def run_model(name: str, path: Path, config: dict, build: dict) -> tuple[dict, list[str]]:
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(path).encode(), mp)
    assert model, f"llama.cpp failed to load {path}:\n" + "\n".join(mg.log_take()[-20:])
    load_log = mg.log_take()
    vocab = L.llama_model_get_vocab(model)
    minfo = mg.model_info(name, path, model, vocab)
    minfo["file"] = f"synthetic/{path.name}"
    minfo["config"] = config
    n_vocab = minfo["n_vocab"]
    ctx = mg.Ctx(model, L.LLAMA_FLASH_ATTN_TYPE_AUTO)
    ctx_off = mg.Ctx(model, L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    reference = dict(build)
    reference.update({
        "api": "llama-cpp-python low-level ctypes API (llama_tokenize, llama_decode, llama_sampler_init_greedy)",
        "model_params": "llama_model_default_params() (mmap on, extra/repack buffer types on)",
        "context_params_library_defaults": ctx.defaults,
        "context": ctx.params,
        "kv_cache_type": f"K {ctx.params['type_k']}, V {ctx.params['type_v']}",
        "sampler": "greedy (argmax, first index on ties)",
        "decode_schedule": "whole prompt in one llama_decode, then one llama_decode per generated token; "
                           "KV cleared between prompts",
        "repacked_weights": mg.repack_summary(load_log),
        "llama_log_excerpt": mg.log_excerpt(load_log + ctx.log),
    })
    problems = []
    cases, logits_case = [], None
    for pid, text in PROMPTS:
        ids = mg.tokenize(vocab, text, True, True)
        want = pid == LOGITS_PROMPT
        gen, margins, eog, plog, steps = greedy_topk(ctx, vocab, ids, n_vocab, N_GENERATE)
        gen_off, margins_off, eog_off, plog_off, _ = greedy_topk(ctx_off, vocab, ids, n_vocab, N_GENERATE)
        gtext = mg.detokenize(vocab, gen, remove_special=False, unparse_special=True)
        distinct = len(set(gen))
        run = max(len(list(g)) for _, g in itertools.groupby(gen))
        if distinct < MIN_DISTINCT or run > MAX_RUN:
            problems.append(f"{name}/{pid}: degenerate greedy output {gen}")
        cases.append({
            "id": pid, "prompt": text, "add_special": True, "parse_special": True, "prompt_ids": ids,
            "n_generate_requested": N_GENERATE, "generated_ids": gen,
            "generated_text": gtext.decode("utf-8", errors="replace"),
            "stopped_at_eog": eog is not None, "eog_id": eog, "distinct_generated": distinct,
            "top1_top2_logit_margin": [round(m, 6) for m in margins],
            "step_topk": steps,
            "flash_attn_disabled": {
                "generated_ids": gen_off, "identical": gen_off == gen,
                "first_divergence": mg.first_divergence(gen, gen_off), "eog_id": eog_off,
                "top1_top2_logit_margin": [round(m, 6) for m in margins_off],
            },
        })
        if want:
            ids20, vals20 = mg.top_k(plog)
            diff = np.abs(plog.astype(np.float64) - plog_off.astype(np.float64))
            raw = plog.astype("<f4").tobytes()
            logits_case = {
                "id": pid, "prompt_ids": ids, "position": len(ids) - 1, "n_vocab": n_vocab,
                "sha256_f32le": hashlib.sha256(raw).hexdigest(),
                "argmax": int(np.argmax(plog)), "top20_ids": ids20, "top20_logits": vals20,
                "stats": {"min": mg.f32(plog.min()), "max": mg.f32(plog.max()),
                          "mean": float(plog.mean(dtype=np.float64)), "std": float(plog.std(dtype=np.float64))},
                "flash_attn_disabled": {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                                        "argmax": int(np.argmax(plog_off))},
                "values": [mg.f32(v) for v in plog],
            }
    ctx.free()
    ctx_off.free()
    L.llama_model_free(model)
    doc = {
        "format": "kiln-golden-synthetic", "version": FORMAT_VERSION, "model": minfo, "reference": reference,
        "n_generate": N_GENERATE,
        "notes": {
            "model.config": "how make_synthetic.py built the GGUF (random weights, not a trained model)",
            "prompt_ids": "llama_tokenize(prompt, add_special=true, parse_special=true) (add_bos is false)",
            "generated_ids": "greedy continuation; stops early only at an end-of-generation id (then the last)",
            "top1_top2_logit_margin": "per step, top-1 minus top-2 logit of the distribution the token was "
                                      "picked from",
            "step_topk": f"per greedy step, the top-{TOPK_STEPS} ids and logits (exact f32) of the distribution the "
                         "token was picked from (step 0: the prompt's last position)",
            "flash_attn_disabled": "the same run with flash_attn_type=DISABLED",
            "logits.values": "the full last-position logits after prefilling logits.prompt_ids in one "
                             "llama_decode (f32 printed exactly; parse as f64 and cast to f32)",
        },
        "cases": cases,
        "logits": logits_case,
    }
    return doc, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden" / "synthetic")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    assert SMOLLM2.exists(), f"{SMOLLM2} missing: run scripts/fetch-models.sh (its vocabulary is reused)"
    vocab = smollm2_vocab(N_VOCAB)
    L.llama_backend_init()
    build = mg.llama_cpp_build_info()
    problems = []
    for name in args.models.split(","):
        gpath = args.out / f"{name}.gguf"
        config = write_model(name, MODELS[name], gpath, vocab)
        doc, p = run_model(name, gpath, config, build)
        problems += p
        mg.write_json(args.out / f"{name}.json", doc)
        for c in doc["cases"]:
            print(f"{name}/{c['id']}: {c['generated_ids'][:12]}... distinct {c['distinct_generated']}, "
                  f"min margin {min(c['top1_top2_logit_margin']):.3f}, FA off identical "
                  f"{c['flash_attn_disabled']['identical']}", file=sys.stderr)
        lg = doc["logits"]
        print(f"{name}: {gpath.stat().st_size} bytes, logits std {lg['stats']['std']:.3f}, FA on/off max "
              f"|Δ| {lg['flash_attn_disabled']['max_abs_diff']:.2e}", file=sys.stderr)
    L.llama_backend_free()
    for p in problems:
        print("ERROR:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
