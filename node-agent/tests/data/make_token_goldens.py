#!/usr/bin/env python3
"""Writes tokens-<model>.json beside this script: what llama.cpp makes of a multilingual text set.

The reference is llama.cpp itself, through the `llama-cpp-python` bindings built by bench/build-llama-cpp.sh
(the vocabulary only is loaded). For every text and each (add_special, parse_special) pair the file holds
llama_tokenize's ids, and llama_detokenize(ids, remove_special=False, unparse_special=True) of them; per model
it holds the special ids, the end-of-generation set and a checksum of every token's piece. 150 random strings
over a mixed pool (without add_special) follow the hand-picked texts.

The BPE pre-tokenizers of models not fetched here (qwen2, qwen35, llama3, gpt-2, default) are checked on
SmolLM2's vocabulary with `tokenizer.ggml.pre` rewritten: llama.cpp loads such a copy (metadata only, written
to a temporary folder) and the goldens go to tokens-smollm2-pre-<pre>.json. SmolLM2's merges never cross the
boundaries on which those pre types differ (digit groups, combining marks), so a tiny committed vocabulary whose
merges do, bpe-tiny-<pre>.gguf, is checked too (tokens-bpe-tiny-<pre>.json); it needs no model file to test.

Usage:
  LLAMA_CPP_LIB_PATH=$(bench/build-llama-cpp.sh)/lib python3 node-agent/tests/data/make_token_goldens.py
Models are read from $KILN_MODELS (default ~/.cache/kiln/models), fetched by scripts/fetch-models.sh.
"""

import ctypes
import json
import os
import random
import struct
import sys
import tempfile

import llama_cpp

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}

# Pre types to check on SmolLM2's vocabulary, beside its own `smollm`.
PRE_VARIANTS = ["qwen2", "qwen35", "llama-bpe", "gpt-2", "default"]

TEXTS = [
    "Hello world",
    " Hello world",
    "   leading spaces and trailing   ",
    "I'm sure DON'T you'll we've they're it's he'd I'M 'tis",
    "我们今天去公园散步吧，天气很好。",
    "東京は日本の首都です。ひらがなとカタカナ、漢字。",
    "안녕하세요, 만나서 반갑습니다!",
    "مرحبا بالعالم، كيف حالك؟",
    "Привет, мир! Как дела?",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Ça va? Über naïve café façade — résumé",
    "Tiếng Việt có dấu, and decomposed: e\u0301 a\u0300 n\u0303",
    "สวัสดีครับ ยินดีที่ได้รู้จัก",
    "def f(x):\n    if x > 0:\n        return x ** 2\n    return -x\n",
    'fn main() {\n\tlet v: Vec<u32> = (0..10).collect();\n\tprintln!("{:?}", v);\n}\n',
    "I \u2764\ufe0f Rust \U0001f980\U0001f680 and \U0001f44d\U0001f3fd",
    "Family: \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466, flag: \U0001f3f3\ufe0f\u200d\U0001f308, \U0001f9d1\U0001f3fb\u200d\U0001f4bb",
    "1234567 and 3.14159 and 1,000,000 and 2024-01-02 and ٣٤٥",
    "a  b   c    d\t\te\u3000f\u00a0g",
    "line1\nline2\n\nline3\r\nline4\n\n\n",
    "   \n\t  ",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><|endoftext|> text <unk> <pad>",
    "<table><tr><td>cell</td></tr></table> <b>bold</b>\n\n\n\n",
    "https://example.com/path?q=1&r=2#frag -- mail: a.b@c.de!!! ???",
    "\u2200x\u2208\u211d: x\u00b2\u22650 \u00bd \u2153 \u2460 \u216b",
    "a",
    "",
    "Rust\u7684\u6027\u80fd\u5f88\u597d and \u65e5\u672c\u8a9e mixed with English",
    "# Title\n\n- item **bold** _it_ `code`\n\n```python\nprint('hi')\n```",
    '{"name": "Kiln", "values": [1, 2.5, -3e10], "ok": true}',
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!!!!! ----------",
    "Hello , world ! It 's a ' test ' .",
]


# Random strings over a pool that mixes scripts, digits, combining marks, emoji, odd whitespace and special-token
# spellings: a differential check beyond the hand-picked texts. The texts are stored in the goldens, so the
# generator's exact output does not need to be reproducible.
POOL = list(
    "aeiouxyzAEZ0123456789 .,;:!?'\"-_/\\()[]{}<>|@#$%^&*+=~`"
    "éüñçßøÅ\u0301\u0308\u0303"
    "中文字汉语日本語ひらがなカタ한국어"
    "مرحباБукваαβγ"
    "नमस्तेदुिं"
    "😀🦀👍🏽\u200d\ufe0f"
    "\t\n\r\u3000\u00a0\u2009"
) + ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<think>", "  ", "\n\n", "'s", "'LL", "123", "Hello", " the"]


def random_texts(n, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def tokenize(vocab, text, add_special, parse_special):
    data = text.encode("utf-8")
    cap = len(data) + 8
    buf = (llama_cpp.llama_token * cap)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special)
    if n < 0:
        raise RuntimeError(f"llama_tokenize needs {-n} slots")
    return list(buf[:n])


def detokenize(vocab, ids):
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, True)
    if n < 0:
        raise RuntimeError(f"llama_detokenize needs {-n} bytes")
    return buf.raw[:n]


def piece(vocab, token):
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, -n, 0, True)
    return buf.raw[:n]


def fnv1a64(chunks):
    """FNV-1a (64-bit) over each piece's length (u32 little endian) followed by its bytes."""
    h = 0xCBF29CE484222325
    for chunk in chunks:
        for b in len(chunk).to_bytes(4, "little") + chunk:
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def optional(token):
    return None if token == llama_cpp.LLAMA_TOKEN_NULL else token


def golden(path, texts=TEXTS, random_count=150):
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise RuntimeError(f"cannot load {path}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cases = []
    for text in texts:
        for add_special in (False, True):
            for parse_special in (False, True):
                ids = tokenize(vocab, text, add_special, parse_special)
                cases.append(
                    {
                        "text": text,
                        "add_special": add_special,
                        "parse_special": parse_special,
                        "ids": ids,
                        "decoded": detokenize(vocab, ids).decode("utf-8", errors="replace"),
                    }
                )
    for text in random_texts(random_count, seed=20240229):
        for parse_special in (False, True):
            ids = tokenize(vocab, text, False, parse_special)
            cases.append(
                {
                    "text": text,
                    "add_special": False,
                    "parse_special": parse_special,
                    "ids": ids,
                    "decoded": detokenize(vocab, ids).decode("utf-8", errors="replace"),
                }
            )
    result = {
        "model": os.path.basename(path),
        "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (vocab_only)",
        "vocab_size": n_vocab,
        "bos": optional(llama_cpp.llama_vocab_bos(vocab)),
        "eos": optional(llama_cpp.llama_vocab_eos(vocab)),
        "eot": optional(llama_cpp.llama_vocab_eot(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "pieces_fnv1a64": fnv1a64(piece(vocab, t) for t in range(n_vocab)),
        "cases": cases,
    }
    llama_cpp.llama_model_free(model)
    return result


def read_gguf_kv(path):
    """The raw metadata entries of a GGUF v2/v3 file, as (key, raw bytes of the whole entry)."""
    with open(path, "rb") as f:
        data = f.read()
    magic, version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF" and version in (2, 3), "not a GGUF v2/v3 file"
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_value(off, ty):
        if ty in sizes:
            return off + sizes[ty]
        if ty == 8:
            (n,) = struct.unpack_from("<Q", data, off)
            return off + 8 + n
        if ty == 9:
            sub, n = struct.unpack_from("<IQ", data, off)
            off += 12
            if sub in sizes:
                return off + n * sizes[sub]
            for _ in range(n):
                off = skip_value(off, sub)
            return off
        raise ValueError(f"unknown GGUF type {ty}")

    off = 24
    entries = []
    for _ in range(n_kv):
        start = off
        (klen,) = struct.unpack_from("<Q", data, off)
        key = data[off + 8 : off + 8 + klen].decode()
        off += 8 + klen
        (ty,) = struct.unpack_from("<I", data, off)
        off = skip_value(off + 4, ty)
        entries.append((key, data[start:off]))
    return entries


def gguf_string_entry(key, value):
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def gguf_u32_entry(key, value):
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, value)


def gguf_bool_entry(key, value):
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IB", 7, int(value))


def gguf_array_entry(key, sub_type, items):
    k = key.encode()
    out = struct.pack("<Q", len(k)) + k + struct.pack("<IIQ", 9, sub_type, len(items))
    for item in items:
        if sub_type == 8:
            b = item.encode()
            out += struct.pack("<Q", len(b)) + b
        else:
            out += struct.pack("<i", item)
    return out


def write_gguf(entries, out):
    body = struct.pack("<4sIQQ", b"GGUF", 3, 0, len(entries)) + b"".join(entries)
    body += b"\0" * (-len(body) % 32)
    with open(out, "wb") as f:
        f.write(body)


def byte_level(data):
    """GPT-2's byte-to-character alphabet applied to raw bytes."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return "".join(table[b] for b in data)


# Words whose merges cross what the pre types split differently: digit runs (llama3 groups three, qwen2
# splits each), combining marks (qwen35 keeps them in letter runs), contractions and whitespace runs.
TINY_WORDS = ["123", "456", "789", "1234", "e\u0301", " e\u0301", "ne\u0301e", "\u0928\u094d", "\u0928\u094d\u0926",
              " the", "the", " world", "'s", "'S", "  ", "    ", "\n\n", " \n", "ok", " ok", ".\n", "ab", "abc"]
TINY_SPECIALS = [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<think>", 4), ("</think>", 4)]


def tiny_bpe_vocab():
    """256 byte tokens, then every prefix-merge that builds TINY_WORDS left to right, then special tokens."""
    tokens = [byte_level(bytes([b])) for b in range(256)]
    merges = []
    for word in TINY_WORDS:
        chars = [byte_level(bytes([b])) for b in word.encode()]
        acc = chars[0]
        for c in chars[1:]:
            merge = f"{acc} {c}"
            acc += c
            if acc not in tokens:
                tokens.append(acc)
                merges.append(merge)
    types = [1] * len(tokens)
    for text, ty in TINY_SPECIALS:
        tokens.append(text)
        types.append(ty)
    return tokens, types, merges


def write_tiny_bpe(arch_src, pre, out):
    """A tensor-less GGUF: SmolLM2's architecture keys and a tiny byte-level BPE vocabulary with `pre`."""
    tokens, types, merges = tiny_bpe_vocab()
    entries = [raw for k, raw in read_gguf_kv(arch_src) if not k.startswith("tokenizer.")]
    entries += [
        gguf_string_entry("tokenizer.ggml.model", "gpt2"),
        gguf_string_entry("tokenizer.ggml.pre", pre),
        gguf_array_entry("tokenizer.ggml.tokens", 8, tokens),
        gguf_array_entry("tokenizer.ggml.token_type", 5, types),
        gguf_array_entry("tokenizer.ggml.merges", 8, merges),
        gguf_u32_entry("tokenizer.ggml.bos_token_id", tokens.index("<|endoftext|>")),
        gguf_u32_entry("tokenizer.ggml.eos_token_id", tokens.index("<|im_end|>")),
        gguf_bool_entry("tokenizer.ggml.add_bos_token", False),
    ]
    write_gguf(entries, out)


TINY_TEXTS = [
    "123 1234 12345 456789 0",
    "ne\u0301e e\u0301 \u0301e \u0928\u094d\u0926 the world",
    "it's IT'S the  ok    ok\n\n ok \nok.\n",
    "abc ab abcabc\t\u00a0the",
    "<|im_start|>the<think>ok</think><|im_end|>",
]


def write_pre_variant(src, pre, out):
    """A tensor-less copy of `src`'s metadata with tokenizer.ggml.pre set to `pre` (enough for vocab_only)."""
    entries = [
        gguf_string_entry(k, pre) if k == "tokenizer.ggml.pre" else raw for k, raw in read_gguf_kv(src)
    ]
    write_gguf(entries, out)


def write(result, out):
    # One case per line keeps diffs of regenerated goldens readable.
    head = {k: v for k, v in result.items() if k != "cases"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    lines.append('  "cases": [')
    cases = [json.dumps(c, ensure_ascii=False) for c in result["cases"]]
    lines.append(",\n".join("    " + c for c in cases))
    lines.append("  ]")
    lines.append("}")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main():
    models_dir = os.environ.get("KILN_MODELS", os.path.expanduser("~/.cache/kiln/models"))
    here = os.path.dirname(os.path.abspath(__file__))
    for name, file in MODELS.items():
        path = os.path.join(models_dir, file)
        if not os.path.exists(path):
            print(f"skip {name}: {path} is missing", file=sys.stderr)
            continue
        out = os.path.join(here, f"tokens-{name}.json")
        write(golden(path), out)
        print(f"wrote {out}", file=sys.stderr)
        if name != "smollm2":
            continue
        for pre in ["smollm"] + PRE_VARIANTS:
            tiny = os.path.join(here, f"bpe-tiny-{pre}.gguf")
            write_tiny_bpe(path, pre, tiny)
            result = {"pre": pre, **golden(tiny, TINY_TEXTS + TEXTS)}
            out = os.path.join(here, f"tokens-bpe-tiny-{pre}.json")
            write(result, out)
            print(f"wrote {tiny} and {out}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            for pre in PRE_VARIANTS:
                variant = os.path.join(tmp, f"{name}-{pre}.gguf")
                write_pre_variant(path, pre, variant)
                result = golden(variant)
                result = {"pre": pre, **result, "model": f"{file} with tokenizer.ggml.pre = {pre}"}
                out = os.path.join(here, f"tokens-{name}-pre-{pre}.json")
                write(result, out)
                print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
