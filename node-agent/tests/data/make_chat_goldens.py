#!/usr/bin/env python3
"""Writes chat-goldens.json beside this script: real chat templates rendered by Python's jinja2 the way
Hugging Face transformers renders them (apply_chat_template), for Kiln's minijinja renderer to match byte for byte.

Templates: SmolLM2's `tokenizer.chat_template` from its GGUF ($KILN_MODELS, default ~/.cache/kiln/models), and
the Qwen3 and Qwen3.5 templates that llama.cpp's source carries in models/templates/ ($KILN_LLAMA_CPP_SRC, by
default the llama-cpp-python 0.3.36 sdist under ~/.cache/kiln). The templates are not copied here: the golden
records each one's FNV-1a 64 checksum and the test renders the same files.

Usage: python3 node-agent/tests/data/make_chat_goldens.py   (needs jinja2)
"""

import json
import os
import struct
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.expanduser("~/.cache/kiln")
LLAMA_CPP_CANDIDATES = [
    os.path.join(CACHE, "dl/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"),
    os.path.join(CACHE, "llama-cpp-python-0.3.36/src/llama_cpp_python-0.3.36/vendor/llama.cpp"),
]


def llama_cpp_src():
    env = os.environ.get("KILN_LLAMA_CPP_SRC")
    for path in [env] if env else LLAMA_CPP_CANDIDATES:
        if path and os.path.isdir(os.path.join(path, "models/templates")):
            return path
    return None


def gguf_strings(path, keys):
    """The string values of `keys` and the token texts, from a GGUF v2/v3 file's metadata."""
    with open(path, "rb") as f:
        data = f.read()
    _magic, _version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    out, ints, tokens = {}, {}, None

    def read_str(off):
        (n,) = struct.unpack_from("<Q", data, off)
        return data[off + 8 : off + 8 + n].decode(), off + 8 + n

    off = 24
    for _ in range(n_kv):
        key, off = read_str(off)
        (ty,) = struct.unpack_from("<I", data, off)
        off += 4
        if ty == 8:
            value, off = read_str(off)
            if key in keys:
                out[key] = value
        elif ty == 9:
            sub, n = struct.unpack_from("<IQ", data, off)
            off += 12
            if sub == 8:
                items = []
                for _ in range(n):
                    s, off = read_str(off)
                    items.append(s)
                if key == "tokenizer.ggml.tokens":
                    tokens = items
            else:
                off += n * sizes[sub]
        else:
            if ty == 4:
                (ints[key],) = struct.unpack_from("<I", data, off)
            off += sizes[ty]
    return out, ints, tokens


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


# transformers' chat template environment (src/transformers/utils/chat_template_utils.py).
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def compile_template(source):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle pour une ville — \"quoted\" & <tagged>",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["city"],
        },
    },
}

TOOL_CONVERSATION = [
    {"role": "system", "content": "You are a weather bot."},
    {"role": "user", "content": "Weather in Zürich and 東京?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2, "detailed": True}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "東京", "unit": "celsius", "extra": {"a": [1, 2.5, None]}}}},
        ],
    },
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "tool", "content": "{\"temp\": 25}"},
]

CASES = [
    ("smollm2", "system and user", [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ], None, True, {}),
    ("smollm2", "user only gets the default system prompt", [
        {"role": "user", "content": "Hi there 👋"},
    ], None, True, {}),
    ("smollm2", "multi-turn without generation prompt", [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ], None, False, {}),
    ("qwen3", "thinking disabled", [
        {"role": "user", "content": "Hello!"},
    ], None, True, {"enable_thinking": False}),
    ("qwen3", "thinking default", [
        {"role": "user", "content": "Hello!"},
    ], None, True, {}),
    ("qwen3", "history with reasoning in content", [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "<think>\nRayleigh scattering.\n</think>\n\nBecause of Rayleigh scattering."},
        {"role": "user", "content": "Thanks. And sunsets?"},
    ], None, True, {}),
    ("qwen3", "tools, tool calls and tool responses", TOOL_CONVERSATION, [WEATHER_TOOL], True, {}),
    ("qwen3", "tool call arguments as a string", [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        ]},
    ], [WEATHER_TOOL], False, {}),
    ("qwen3.5", "thinking disabled", [
        {"role": "user", "content": "Hello!"},
    ], None, True, {"enable_thinking": False}),
    ("qwen3.5", "thinking default", [
        {"role": "user", "content": "Hello!"},
    ], None, True, {}),
    ("qwen3.5", "content parts, tools and tool calls", [
        {"role": "system", "content": [{"type": "text", "text": "You are a weather bot."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Zürich?"}]},
        *TOOL_CONVERSATION[2:],
    ], [WEATHER_TOOL], True, {}),
    ("qwen3.5", "reasoning_content field", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "  The user greets me.  "},
        {"role": "user", "content": "Bye"},
    ], None, True, {"enable_thinking": True}),
    ("qwen3.5", "no user message is rejected", [
        {"role": "system", "content": "Only a system prompt."},
    ], None, True, {}),
]


def main():
    templates = {}
    models = os.environ.get("KILN_MODELS", os.path.join(CACHE, "models"))
    smol = os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf")
    strings, ints, tokens = gguf_strings(smol, {"tokenizer.chat_template"})
    templates["smollm2"] = {
        "source": "gguf:SmolLM2-135M-Instruct.Q4_1.gguf",
        "text": strings["tokenizer.chat_template"],
        "bos": tokens[ints["tokenizer.ggml.bos_token_id"]],
        "eos": tokens[ints["tokenizer.ggml.eos_token_id"]],
    }
    src = llama_cpp_src()
    if src is None:
        sys.exit("llama.cpp source with models/templates not found: set KILN_LLAMA_CPP_SRC")
    for name, file in [("qwen3", "Qwen-Qwen3-0.6B.jinja"), ("qwen3.5", "Qwen3.5-4B.jinja")]:
        with open(os.path.join(src, "models/templates", file), encoding="utf-8") as f:
            text = f.read()
        # Qwen's tokenizer_config.json: no BOS token, EOS <|im_end|>.
        templates[name] = {"source": f"llama.cpp:models/templates/{file}", "text": text, "bos": "", "eos": "<|im_end|>"}

    compiled = {name: compile_template(t["text"]) for name, t in templates.items()}
    cases = []
    for template, name, messages, tools, add_generation_prompt, extra in CASES:
        t = templates[template]
        case = {
            "template": template,
            "name": name,
            "messages": messages,
            "tools": tools,
            "add_generation_prompt": add_generation_prompt,
            "extra": extra,
        }
        try:
            case["expected"] = compiled[template].render(
                messages=messages,
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                bos_token=t["bos"],
                eos_token=t["eos"],
                **extra,
            )
        except jinja2.exceptions.TemplateError as e:
            case["error"] = str(e)
        cases.append(case)

    golden = {
        "reference": f"jinja2 {jinja2.__version__} in transformers' chat-template environment",
        "templates": {
            name: {"source": t["source"], "fnv1a64": fnv1a64(t["text"]), "bos": t["bos"], "eos": t["eos"]}
            for name, t in templates.items()
        },
        "cases": cases,
    }
    out = os.path.join(HERE, "chat-goldens.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
