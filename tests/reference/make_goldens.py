#!/usr/bin/env python3
"""Regenerate Kiln's golden files (tests/golden/) from llama.cpp, through llama-cpp-python's low-level API.

For each model (SmolLM2-135M-Instruct Q4_1, Gemma-3-270M Q4_K_M) it writes:
  tokens-<model>.json   tokenization of a multilingual text set, two (add_special, parse_special) settings
  greedy-<model>.json   prompt ids + the first N greedily generated ids, their pieces and text
  logits-<model>.json   metadata, top-20 and stats of the full last-position logits of two prompts, whose
                        raw vectors are in logits-<model>-<case>.f32 (little-endian f32, n_vocab values)

llama.cpp settings: its own defaults (llama_model_default_params / llama_context_default_params) except
n_threads = n_threads_batch = 2 and n_ctx = 512 (which is also the library default). In particular
flash_attn_type stays AUTO (what llama.cpp itself defaults to; llama-cpp-python's high-level `Llama`
class would force it off), and the KV cache is f16. As a cross-check the greedy runs and logits are also
computed with flash attention DISABLED and the differences recorded (field `flash_attn_disabled`).

Usage: see tests/reference/README.md.  Needs the build from bench/build-llama-cpp.sh; if LLAMA_CPP_LIB_PATH
is not set this script runs that build script (a no-op when the build is cached) to find the library.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KILN_CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))

N_THREADS = 2
N_CTX = 512
N_GENERATE = 48
FORMAT_VERSION = 1

MODELS = {
    "smollm2": {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "chat_prompt": True,
        "logits_cases": ["capital_fr", "zh_capital"],
    },
    "gemma3": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "chat_prompt": False,
        "logits_cases": ["capital_fr", "zh_capital"],
    },
}

# ---------------------------------------------------------------------------------------------------------
# Text set for the tokenizer goldens. (id, text). Same set for every model.
TEXTS: list[tuple[str, str]] = [
    ("empty", ""),
    ("single_char", "a"),
    ("hello_world", "Hello, world!"),
    ("english_sentence", "The quick brown fox jumps over the lazy dog."),
    ("contractions", "I'm sure you're right, but DON'T say it's over. We'll see; they've gone. I'M HERE, You'Re "
                     "wouldn't've y'all"),
    ("mixed_case", "HELLO World hello WORLD HeLLo wOrLd iPhone McDonald's"),
    ("chinese", "我们今天去公园散步，天气非常好。人工智能正在改变世界。"),
    ("japanese", "東京は日本の首都です。ひらがなとカタカナ、そして漢字を混ぜて書きます。ｶﾀｶﾅ"),
    ("korean", "안녕하세요, 만나서 반갑습니다. 한국어 토크나이저 테스트입니다."),
    ("arabic", "مرحبا بالعالم. اللغة العربية تُكتب من اليمين إلى اليسار."),
    ("russian", "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю."),
    ("hindi_thai", "नमस्ते दुनिया। สวัสดีครับ ยินดีที่ได้รู้จัก"),
    ("accents", "Ça va? Größe, naïve café, Ærøskøbing, señor, Dvořák, İstanbul"),
    ("mixed_scripts", "English中文日本語한국어Русскийالعربية123abc"),
    ("python_code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
                    "\n\nprint([fibonacci(i) for i in range(10)])\n"),
    ("python_tabs", "class Foo:\n\tdef bar(self):\n\t\treturn {'a': [1, 2, 3], \"b\": None}\n\t\t# comment\n"),
    ("rust_code", "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n"
                  "    println!(\"{:?}\", v);\n}\n\nimpl<'a> Foo<'a> for &'a mut [u8] {}\n"),
    ("emoji", "I love pizza 🍕 and cats 🐱! 😀😃😄 ❤️ ✔ ☃"),
    ("emoji_zwj", "Family: 👨‍👩‍👧‍👦, couple: 👩‍❤️‍👨, flags: 🇫🇷🇯🇵, skin tones: 👍🏽 👋🏿, 🏳️‍🌈 🧑‍💻"),
    ("numbers", "1234567 and 3.14159, also 1,000,000 and -42 and 2024-01-15 and 0x1F and 1e-9 and 00007"),
    ("whitespace_runs", "a  b   c    d\t\te     f        g"),
    ("newlines", "line1\nline2\n\nline4\r\nline5\n\n\n"),
    ("leading_spaces", "   leading spaces and trailing   "),
    ("leading_single_space", " Paris"),
    ("only_spaces", "    "),
    ("only_newline", "\n"),
    ("punctuation", "Wait... what?! (Yes) [no] {maybe} <tag> \"quoted\" 'single' — em–dash; colon: semi; "
                    "@#$%^&*_+=|\\/~` «guillemets» „low“ ¿¡"),
    ("math_symbols", "∑_{i=1}^{n} i² = n(n+1)/2, ∞ ≠ ∅, α β γ, x ≤ y ⇒ f(x) ≥ 0"),
    ("url_email", "Visit https://example.com/path?query=1&x=y#frag or mail me@example.org"),
    ("markdown_list", "# Title\n\n- item one\n- item two\n  * nested\n1. first\n2. second\n\n```bash\nls -la\n```"),
    ("repeated_chars", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!!!!!!!!!!! ........ ________"),
    ("invisible_chars", "non\u00a0breaking zero\u200bwidth soft\u00adhyphen bom\ufeffhere"),
    ("chatml", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("gemma_turns", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
    ("special_lookalikes", "<s></s><bos><eos><|endoftext|><unk><pad>"),
]

# Prompts for the greedy / logits goldens: (id, text). "chat" is added for models with chat_prompt.
PROMPTS: list[tuple[str, str]] = [
    ("capital_fr", "The capital of France is"),
    ("fibonacci", "def fibonacci(n):"),
    ("once_upon", "Once upon a time"),
    ("zh_capital", "中国的首都是"),
    ("list_fruits", "Here is a list of fruits:\n1. Apple\n2."),
]
CHAT_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

# ---------------------------------------------------------------------------------------------------------


def find_prefix() -> Path:
    if os.environ.get("LLAMA_CPP_LIB_PATH"):
        return Path(os.environ["LLAMA_CPP_LIB_PATH"]).resolve().parent
    out = subprocess.run([str(REPO / "bench" / "build-llama-cpp.sh")], check=True, capture_output=False,
                         stdout=subprocess.PIPE, text=True).stdout
    prefix = Path(out.strip().splitlines()[-1])
    os.environ["LLAMA_CPP_LIB_PATH"] = str(prefix / "lib")
    return prefix


PREFIX = find_prefix()

import numpy as np  # noqa: E402  (after the build script has installed it)
import llama_cpp as L  # noqa: E402  (reads LLAMA_CPP_LIB_PATH at import)

# ---------------------------------------------------------------------------------------------------------
# llama.cpp log capture (replaces llama-cpp-python's stderr logger)

_LOG: list[str] = []


@L.llama_log_callback
def _log_cb(level, text, user_data):  # noqa: ARG001
    _LOG.append(text.decode("utf-8", errors="replace"))


L.llama_log_set(_log_cb, ctypes.c_void_p(0))


def log_take() -> list[str]:
    text = "".join(_LOG)
    _LOG.clear()
    return text.splitlines()


LOG_KEEP = re.compile(
    r"(n_ctx|n_batch|n_ubatch|flash_attn|Flash Attention|kv_unified|causal_attn|freq_base|freq_scale|n_swa|"
    r"swa|type_k|type_v|K \(f16\)|V \(f16\)|CPU_REPACK|REPACK|model buffer size|file type|vocab type|"
    r"n_vocab|BOS token|EOS token|EOT token|EOG token|n_head|n_embd|n_layer|f_norm_rms_eps|rope type|"
    r"n_rot|attn_soft|final_logit|f_attn_scale|n_seq_max|n_ctx_seq|layer.*filtered|kv_size)",
    re.IGNORECASE)


LOG_DROP = re.compile(r"(llama_graph_n_input_tensors|assigned to device|repack: repack tensor|: layer +\d+: filtered|"
                      r"create_tensor: loading)")


def log_excerpt(lines: list[str]) -> list[str]:
    seen, out = set(), []
    for ln in lines:
        ln = ln.rstrip().lstrip(".")
        if ln and LOG_KEEP.search(ln) and not LOG_DROP.search(ln) and ln not in seen:
            seen.add(ln)
            out.append(ln)
    return out


def repack_summary(lines: list[str]) -> dict:
    """{repack layout: [tensor names]} from the loader's 'repack tensor X with Y' lines (CPU_REPACK buffer)."""
    out: dict[str, list[str]] = {}
    for ln in lines:
        for m in re.finditer(r"repack tensor (\S+) with (\S+)", ln):
            out.setdefault(m.group(2), []).append(m.group(1))
    return out


# ---------------------------------------------------------------------------------------------------------
# thin helpers over the C API


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenize(vocab, text: str, add_special: bool, parse_special: bool) -> list[int]:
    b = text.encode("utf-8")
    n = len(b) + 16
    buf = (L.llama_token * n)()
    r = L.llama_tokenize(vocab, b, len(b), buf, n, add_special, parse_special)
    if r < 0:
        n = -r
        buf = (L.llama_token * n)()
        r = L.llama_tokenize(vocab, b, len(b), buf, n, add_special, parse_special)
    assert r >= 0, f"tokenize failed: {r}"
    return list(buf[:r])


def piece(vocab, tok: int, special: bool = True) -> bytes:
    n = 64
    while True:
        buf = ctypes.create_string_buffer(n)
        r = L.llama_token_to_piece(vocab, tok, buf, n, 0, special)
        if r >= 0:
            return buf.raw[:r]
        n = -r


def detokenize(vocab, toks: list[int], remove_special=False, unparse_special=True) -> bytes:
    arr = (L.llama_token * max(1, len(toks)))(*toks)
    n = 256 + 64 * len(toks)
    while True:
        buf = ctypes.create_string_buffer(n)
        r = L.llama_detokenize(vocab, arr, len(toks), buf, n, remove_special, unparse_special)
        if r >= 0:
            return buf.raw[:r]
        n = -r


def utf8_or_none(b: bytes):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def pieces_fields(vocab, toks: list[int]) -> dict:
    ps = [piece(vocab, t, True) for t in toks]
    return {"pieces_hex": [p.hex() for p in ps], "pieces": [utf8_or_none(p) for p in ps]}


class Ctx:
    """One llama_context with llama.cpp's default params except threads / n_ctx / flash_attn_type."""

    def __init__(self, model, flash_attn_type: int):
        p = L.llama_context_default_params()
        self.defaults = {
            "n_ctx": p.n_ctx, "n_batch": p.n_batch, "n_ubatch": p.n_ubatch, "n_seq_max": p.n_seq_max,
            "flash_attn_type": fa_name(p.flash_attn_type), "type_k": ggml_type_name(p.type_k),
            "type_v": ggml_type_name(p.type_v), "swa_full": bool(p.swa_full), "kv_unified": bool(p.kv_unified),
            "offload_kqv": bool(p.offload_kqv), "op_offload": bool(p.op_offload),
        }
        p.n_ctx = N_CTX
        p.n_threads = N_THREADS
        p.n_threads_batch = N_THREADS
        p.flash_attn_type = flash_attn_type
        self.params = {
            "n_ctx_requested": p.n_ctx, "n_threads": p.n_threads, "n_threads_batch": p.n_threads_batch,
            "n_batch_requested": p.n_batch, "n_ubatch_requested": p.n_ubatch,
            "flash_attn_type": fa_name(p.flash_attn_type), "type_k": ggml_type_name(p.type_k),
            "type_v": ggml_type_name(p.type_v), "swa_full": bool(p.swa_full), "kv_unified": bool(p.kv_unified),
            "n_seq_max": p.n_seq_max,
        }
        self.ctx = L.llama_init_from_model(model, p)
        assert self.ctx, "llama_init_from_model failed"
        self.params.update({"n_ctx": L.llama_n_ctx(self.ctx), "n_batch": L.llama_n_batch(self.ctx),
                            "n_ubatch": L.llama_n_ubatch(self.ctx)})
        self.log = log_take()
        fa = [ln for ln in self.log if "Flash Attention" in ln]
        if flash_attn_type == L.LLAMA_FLASH_ATTN_TYPE_DISABLED:
            self.params["flash_attn_resolved"] = "disabled"
        elif flash_attn_type == L.LLAMA_FLASH_ATTN_TYPE_ENABLED:
            self.params["flash_attn_resolved"] = "enabled"
        elif any(re.search(r"Flash Attention enabled", ln) for ln in fa):
            self.params["flash_attn_resolved"] = "enabled"
        elif fa:
            self.params["flash_attn_resolved"] = "disabled (" + fa[-1].strip() + ")"
        else:
            self.params["flash_attn_resolved"] = "unknown (no log line)"
        self.n_vocab = None

    def clear(self):
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)

    def decode(self, toks: list[int]) -> None:
        arr = (L.llama_token * len(toks))(*toks)
        batch = L.llama_batch_get_one(arr, len(toks))
        rc = L.llama_decode(self.ctx, batch)
        assert rc == 0, f"llama_decode returned {rc}"

    def last_logits(self, n_vocab: int) -> np.ndarray:
        ptr = L.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32, copy=True)

    def free(self):
        L.llama_free(self.ctx)


GGML_TYPES = {0: "f32", 1: "f16", 8: "q8_0", 2: "q4_0", 3: "q4_1", 30: "bf16"}


def ggml_type_name(t: int) -> str:
    return GGML_TYPES.get(t, f"ggml_type({t})")


def fa_name(t: int) -> str:
    return {L.LLAMA_FLASH_ATTN_TYPE_AUTO: "auto", L.LLAMA_FLASH_ATTN_TYPE_DISABLED: "disabled",
            L.LLAMA_FLASH_ATTN_TYPE_ENABLED: "enabled"}.get(t, str(t))


def greedy_run(ctx: Ctx, vocab, prompt_ids: list[int], n_vocab: int, n_gen: int, want_logits: bool):
    """Prefill the whole prompt in one llama_decode, then generate greedily one token per llama_decode."""
    ctx.clear()
    smpl = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(smpl, L.llama_sampler_init_greedy())
    ctx.decode(prompt_ids)
    prompt_logits = ctx.last_logits(n_vocab) if want_logits else None
    out, margins, eog = [], [], None
    for _ in range(n_gen):
        logits = ctx.last_logits(n_vocab)
        tok = L.llama_sampler_sample(smpl, ctx.ctx, -1)
        am = int(np.argmax(logits))
        assert tok == am, f"greedy sampler picked {tok}, argmax is {am}"
        top2 = np.partition(logits, -2)[-2:]
        margins.append(float(top2[1] - top2[0]))
        out.append(int(tok))
        if L.llama_vocab_is_eog(vocab, tok):
            eog = int(tok)
            break
        ctx.decode([tok])
    L.llama_sampler_free(smpl)
    return out, margins, eog, prompt_logits


def f32(x) -> float:
    return float(np.float32(x))


def top_k(logits: np.ndarray, k: int = 20):
    idx = np.argsort(-logits, kind="stable")[:k]
    return [int(i) for i in idx], [f32(logits[i]) for i in idx]


def first_divergence(a: list[int], b: list[int]):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ---------------------------------------------------------------------------------------------------------


def llama_cpp_build_info() -> dict:
    info = {"llama_cpp_python_version": L.__version__}
    bench = PREFIX / "bin" / "llama-bench"
    try:
        v = subprocess.run([str(bench), "--version"], capture_output=True, text=True, timeout=30)
        txt = (v.stdout + v.stderr).strip()
        info["llama_bench_version"] = txt
        m = re.search(r"build (\d+), commit ([0-9a-f]+)", txt) or re.search(r"version: (\d+) \(([0-9a-f]+)\)", txt)
        if m:
            info["llama_cpp_build_number"] = int(m.group(1))
            info["llama_cpp_commit"] = m.group(2)
    except OSError as e:
        info["llama_bench_version"] = f"unavailable: {e}"
    info["build_number_note"] = ("llama.cpp is vendored in the llama-cpp-python sdist as a shallow git clone, so its "
                                 "build number counts commits of that clone, not upstream's bNNNN tag; use the commit")
    # llama-cpp-python's CHANGELOG names the full upstream commit
    chlog = PREFIX.parent / "src" / f"llama_cpp_python-{L.__version__}" / "CHANGELOG.md"
    if chlog.exists():
        m = re.search(r"## \[" + re.escape(L.__version__) + r"\]\s*\n\s*\n- feat: update llama.cpp to "
                      r"ggml-org/llama.cpp@([0-9a-f]+)", chlog.read_text())
        if m:
            info["llama_cpp_commit_changelog"] = m.group(1)
    info["system_info"] = L.llama_print_system_info().decode().strip()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown"
    info["cpu"] = cpu
    return info


def model_info(name: str, path: Path, model, vocab) -> dict:
    def meta(key: str):
        buf = ctypes.create_string_buffer(1 << 16)
        r = L.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if r >= 0 else None

    n_vocab = L.llama_vocab_n_tokens(vocab)
    eog = [i for i in range(n_vocab) if L.llama_vocab_is_eog(vocab, i)]
    vt = L.llama_vocab_type(vocab)
    return {
        "name": name,
        "file": path.name,
        "sha256": sha256_file(path),
        "arch": meta("general.architecture"),
        "n_vocab": n_vocab,
        "vocab_type": {1: "spm", 2: "bpe", 3: "wpm", 4: "ugm", 5: "rwkv", 6: "plamo2"}.get(vt, str(vt)),
        "tokenizer_model": meta("tokenizer.ggml.model"),
        "tokenizer_pre": meta("tokenizer.ggml.pre"),
        "add_bos": bool(L.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(L.llama_vocab_get_add_eos(vocab)),
        "bos_id": int(L.llama_vocab_bos(vocab)),
        "eos_id": int(L.llama_vocab_eos(vocab)),
        "eot_id": int(L.llama_vocab_eot(vocab)),
        "eog_ids": eog,
        "n_swa": int(L.llama_model_n_swa(model)),
        "desc": model_desc(model),
    }


def model_desc(model) -> str:
    buf = ctypes.create_string_buffer(256)
    L.llama_model_desc(model, buf, len(buf))
    return buf.value.decode()


def chat_prompt_text(model) -> tuple[str, str]:
    tmpl = L.llama_model_chat_template(model, None)
    assert tmpl, "model has no chat template"
    tmpl = tmpl.decode()
    import jinja2
    env = jinja2.Environment(loader=jinja2.BaseLoader(), trim_blocks=False, lstrip_blocks=False)
    text = env.from_string(tmpl).render(messages=CHAT_MESSAGES, add_generation_prompt=True,
                                        bos_token="", eos_token="")
    return text, tmpl


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def run_model(name: str, cfg: dict, out_dir: Path, build: dict) -> dict:
    path = KILN_CACHE / "models" / cfg["file"]
    assert path.exists(), f"{path} missing: run scripts/fetch-models.sh"
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(path).encode(), mp)
    assert model, f"failed to load {path}"
    load_log = log_take()
    vocab = L.llama_model_get_vocab(model)
    minfo = model_info(name, path, model, vocab)
    n_vocab = minfo["n_vocab"]

    ctx = Ctx(model, L.LLAMA_FLASH_ATTN_TYPE_AUTO)
    ctx_off = Ctx(model, L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    reference = dict(build)
    reference.update({
        "api": "llama-cpp-python low-level ctypes API (llama_tokenize, llama_decode, llama_sampler_init_greedy)",
        "model_params": "llama_model_default_params() (mmap on, extra/repack buffer types on)",
        "context_params_library_defaults": ctx.defaults,
        "context": ctx.params,
        "kv_cache_type": f"K {ctx.params['type_k']}, V {ctx.params['type_v']}",
        "sampler": "greedy (llama_sampler_init_greedy: argmax, first index on ties); no RNG is involved, "
                   "so there is no seed to fix",
        "decode_schedule": "whole prompt in one llama_decode (logits of the last position only), then one "
                           "llama_decode per generated token; KV cleared between prompts",
        "repacked_weights": repack_summary(load_log),
        "llama_log_excerpt": log_excerpt(load_log + ctx.log),
    })

    # ---- tokens
    cases = []
    for tid, text in TEXTS:
        case = {"id": tid, "text": text, "text_utf8_len": len(text.encode("utf-8"))}
        for key, add_sp, parse_sp in (("plain", False, False), ("special", True, True)):
            ids = tokenize(vocab, text, add_sp, parse_sp)
            det = detokenize(vocab, ids, remove_special=False, unparse_special=True)
            v = {"add_special": add_sp, "parse_special": parse_sp, "ids": ids}
            v.update(pieces_fields(vocab, ids))
            v["detokenized"] = det.decode("utf-8", errors="replace")
            v["detokenized_hex"] = det.hex()
            case[key] = v
        case["plain"]["roundtrip"] = case["plain"]["detokenized"] == text
        cases.append(case)
    write_json(out_dir / f"tokens-{name}.json", {
        "format": "kiln-golden-tokens", "version": FORMAT_VERSION, "model": minfo, "reference": reference,
        "notes": {
            "plain": "llama_tokenize(add_special=false, parse_special=false)",
            "special": "llama_tokenize(add_special=true, parse_special=true)",
            "pieces_hex": "llama_token_to_piece(lstrip=0, special=true) per id, exact bytes as hex "
                          "(a piece may be a partial UTF-8 sequence)",
            "pieces": "the same piece decoded as UTF-8, null where it is not valid UTF-8 on its own",
            "detokenized": "llama_detokenize(ids, remove_special=false, unparse_special=true); "
                           "detokenized_hex is its exact bytes",
            "roundtrip": "plain.detokenized == text",
        },
        "cases": cases,
    })

    # ---- greedy + logits
    prompts = list(PROMPTS)
    chat_template = None
    if cfg["chat_prompt"]:
        text, chat_template = chat_prompt_text(model)
        prompts.append(("chat_capital_fr", text))
    gcases, lcases, checks = [], [], {}
    for pid, text in prompts:
        ids = tokenize(vocab, text, True, True)
        want_logits = pid in cfg["logits_cases"]
        gen, margins, eog, plog = greedy_run(ctx, vocab, ids, n_vocab, N_GENERATE, want_logits)
        gen_off, _, eog_off, plog_off = greedy_run(ctx_off, vocab, ids, n_vocab, N_GENERATE, want_logits)
        gtext = detokenize(vocab, gen, remove_special=False, unparse_special=True)
        gc = {
            "id": pid, "prompt": text, "add_special": True, "parse_special": True,
            "prompt_ids": ids, "n_generate_requested": N_GENERATE,
            "generated_ids": gen,
        }
        gc.update({"generated_" + k: v for k, v in pieces_fields(vocab, gen).items()})
        gc["generated_text"] = gtext.decode("utf-8", errors="replace")
        gc["generated_text_hex"] = gtext.hex()
        gc["stopped_at_eog"] = eog is not None
        gc["eog_id"] = eog
        gc["top1_top2_logit_margin"] = [round(m, 6) for m in margins]
        gc["flash_attn_disabled"] = {
            "generated_ids": gen_off, "identical": gen_off == gen,
            "first_divergence": first_divergence(gen, gen_off), "eog_id": eog_off,
        }
        if pid == "chat_capital_fr":
            gc["chat_messages"] = CHAT_MESSAGES
            gc["chat_template_source"] = "GGUF tokenizer.chat_template rendered with jinja2, add_generation_prompt=true"
        gcases.append(gc)

        if want_logits:
            assert plog is not None and plog_off is not None
            fname = f"logits-{name}-{pid}.f32"
            raw = plog.astype("<f4").tobytes()
            (out_dir / fname).write_bytes(raw)
            ids20, vals20 = top_k(plog)
            ids20_off, vals20_off = top_k(plog_off)
            diff = np.abs(plog.astype(np.float64) - plog_off.astype(np.float64))
            lcases.append({
                "id": pid, "prompt": text, "prompt_ids": ids, "position": len(ids) - 1,
                "n_vocab": n_vocab, "file": fname, "dtype": "f32", "endianness": "little",
                "sha256": hashlib.sha256(raw).hexdigest(),
                "argmax": int(np.argmax(plog)),
                "top20_ids": ids20, "top20_logits": vals20,
                "stats": {"min": f32(plog.min()), "max": f32(plog.max()), "mean": float(plog.mean(dtype=np.float64)),
                          "std": float(plog.std(dtype=np.float64))},
                "flash_attn_disabled": {
                    "top20_ids": ids20_off, "top20_logits": vals20_off,
                    "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                    "argmax": int(np.argmax(plog_off)),
                },
            })

    if name == "smollm2":
        g = next(c for c in gcases if c["id"] == "capital_fr")
        first = g["generated_pieces"][0]
        checks["capital_fr_first_token"] = {"expected": " Paris", "got": first, "ok": first == " Paris"}
        if first != " Paris":
            print(f"ERROR: smollm2 greedy after 'The capital of France is' gave {first!r}, expected ' Paris'",
                  file=sys.stderr)

    write_json(out_dir / f"greedy-{name}.json", {
        "format": "kiln-golden-greedy", "version": FORMAT_VERSION, "model": minfo, "reference": reference,
        "n_generate": N_GENERATE, "chat_template": chat_template, "checks": checks,
        "notes": {
            "prompt_ids": "llama_tokenize(prompt, add_special=true, parse_special=true): BOS only where the "
                          "model's add_bos is true",
            "generated_ids": "greedy continuation; generation stops early only at an end-of-generation token "
                             "(llama_vocab_is_eog), which is then the last id and eog_id",
            "generated_text": "llama_detokenize(generated_ids, remove_special=false, unparse_special=true), "
                              "U+FFFD where the bytes are not valid UTF-8 (e.g. cut mid-character); "
                              "generated_text_hex is exact",
            "top1_top2_logit_margin": "per step, logit(top1) - logit(top2) of the distribution the token was "
                                      "picked from: small margins mark steps where numerics may flip the token",
            "flash_attn_disabled": "the same run with flash_attn_type=DISABLED (non-FA attention path)",
        },
        "cases": gcases,
    })
    write_json(out_dir / f"logits-{name}.json", {
        "format": "kiln-golden-logits", "version": FORMAT_VERSION, "model": minfo, "reference": reference,
        "notes": {
            "file": "raw logits of the last prompt position after prefilling prompt_ids in one llama_decode: "
                    "n_vocab little-endian f32 values, no header",
            "flash_attn_disabled": "the same prefill with flash_attn_type=DISABLED, compared with the default",
        },
        "cases": lcases,
    })
    ctx.free()
    ctx_off.free()
    L.llama_model_free(model)
    return checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden", help="output folder")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    L.llama_backend_init()
    build = llama_cpp_build_info()
    ok = True
    for name in args.models.split(","):
        checks = run_model(name, MODELS[name], args.out, build)
        ok &= all(c.get("ok", True) for c in checks.values())
        print(f"{name}: wrote tokens/greedy/logits into {args.out}", file=sys.stderr)
    L.llama_backend_free()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
