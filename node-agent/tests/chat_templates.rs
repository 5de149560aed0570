//! Chat templates rendered by Kiln (minijinja) against Python's jinja2 in transformers' environment
//! (`tests/data/chat-goldens.json`, made by `tests/data/make_chat_goldens.py`), on real templates: SmolLM2's from
//! its GGUF and Qwen3 / Qwen3.5 from llama.cpp's source tree. Plus the built-in fallbacks.
//!
//! SmolLM2 and Gemma need `$KILN_MODELS` (default `~/.cache/kiln/models`); the Qwen templates need llama.cpp's
//! source (`$KILN_LLAMA_CPP_SRC`, default the llama-cpp-python 0.3.36 sdist that `scripts/fetch-llama-cpp-src.sh` unpacks under `~/.cache/kiln`). Whatever is
//! missing is skipped with a printed reason.

mod common;

use kiln_agent::chat::{ChatError, ChatTemplate};
use kiln_agent::gguf::GgufFile;
use kiln_agent::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
}

fn llama_cpp_templates() -> Option<PathBuf> {
    let candidates = match std::env::var_os("KILN_LLAMA_CPP_SRC") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![home().join(
            ".cache/kiln/llama-cpp-python-0.3.36/src/llama_cpp_python-0.3.36/vendor/llama.cpp",
        )],
    };
    let found = candidates
        .iter()
        .map(|dir| dir.join("models/templates"))
        .find(|dir| dir.is_dir());
    if found.is_none() {
        println!("SKIP: llama.cpp source with models/templates not found (KILN_LLAMA_CPP_SRC)");
    }
    found
}

fn goldens() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat-goldens.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("chat goldens exist"))
        .expect("goldens parse")
}

fn fnv1a64(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in text.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn empty() -> Map<String, Value> {
    Map::new()
}

/// Renders every golden case of `template_name` and compares byte for byte.
fn check_template(template: &ChatTemplate, template_name: &str) {
    let g = goldens();
    let info = &g["templates"][template_name];
    assert_eq!(
        fnv1a64(template.source()),
        info["fnv1a64"].as_str().unwrap(),
        "{template_name}: the template text differs from the one the goldens were rendered from ({})",
        info["source"]
    );
    let mut n = 0;
    for case in g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["template"] == template_name)
    {
        let name = case["name"].as_str().unwrap();
        let tools = case["tools"].as_array().map(Vec::as_slice);
        let result = template.render(
            case["messages"].as_array().unwrap(),
            tools,
            case["add_generation_prompt"].as_bool().unwrap(),
            case["extra"].as_object().unwrap(),
        );
        match (&case["expected"], &case["error"]) {
            (Value::String(expected), _) => {
                let got = result.unwrap_or_else(|e| panic!("{template_name} / {name}: {e}"));
                assert_eq!(&got, expected, "{template_name} / {name}");
            }
            (_, Value::String(error)) => match result {
                Err(ChatError::Rejected(message)) => {
                    assert_eq!(&message, error, "{template_name} / {name}")
                }
                other => {
                    panic!("{template_name} / {name}: expected rejection {error:?}, got {other:?}")
                }
            },
            _ => panic!("golden case {name} has neither expected text nor error"),
        }
        n += 1;
    }
    assert!(n > 0, "no golden cases for {template_name}");
    println!("{template_name}: {n} conversations render exactly as jinja2 does");
}

fn qwen_template(file: &str) -> Option<ChatTemplate> {
    let dir = llama_cpp_templates()?;
    let source = std::fs::read_to_string(dir.join(file)).expect("template readable");
    Some(ChatTemplate::new(&source, "", "<|im_end|>").expect("template compiles"))
}

#[test]
fn smollm2_template_matches_jinja2() {
    let Some(path) = common::cached_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    let template = ChatTemplate::from_gguf(&gguf)
        .expect("SmolLM2 ships a template")
        .unwrap();
    check_template(&template, "smollm2");

    // The rendered prompt tokenizes into the ChatML control tokens, not their spelling.
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let prompt = template
        .render(
            &[json!({"role": "user", "content": "Hi"})],
            None,
            true,
            &empty(),
        )
        .unwrap();
    let ids = tok.encode(&prompt, true, true);
    let im_start = tok.token_id("<|im_start|>").unwrap();
    assert_eq!(ids[0], im_start);
    assert_eq!(ids.iter().filter(|&&id| id == im_start).count(), 3);
}

#[test]
fn qwen3_template_matches_jinja2() {
    let Some(template) = qwen_template("Qwen-Qwen3-0.6B.jinja") else {
        return;
    };
    check_template(&template, "qwen3");
}

#[test]
fn qwen35_template_matches_jinja2() {
    let Some(template) = qwen_template("Qwen3.5-4B.jinja") else {
        return;
    };
    check_template(&template, "qwen3.5");
}

#[test]
fn qwen_templates_close_thinking_when_it_is_disabled() {
    let user = [json!({"role": "user", "content": "Hello!"})];
    let mut no_thinking = Map::new();
    no_thinking.insert("enable_thinking".into(), json!(false));
    for file in ["Qwen-Qwen3-0.6B.jinja", "Qwen3.5-4B.jinja"] {
        let Some(template) = qwen_template(file) else {
            return;
        };
        let prompt = template.render(&user, None, true, &no_thinking).unwrap();
        assert!(
            prompt.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
            "{file}: {prompt:?}"
        );
    }
}

#[test]
fn models_without_a_template_fall_back_to_chatml_or_gemma_turns() {
    let conversation = [
        json!({"role": "system", "content": "Be brief."}),
        json!({"role": "user", "content": [{"type": "text", "text": " Hi "}]}),
        json!({"role": "assistant", "content": "Hello."}),
        json!({"role": "user", "content": "Bye"}),
    ];
    // A committed tiny BPE vocabulary without a template and without <start_of_turn>: ChatML.
    let tiny = GgufFile::open(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bpe-tiny-qwen2.gguf"),
    )
    .unwrap();
    let tok = Tokenizer::from_gguf(&tiny).unwrap();
    assert!(ChatTemplate::from_gguf(&tiny).is_none());
    let chatml = ChatTemplate::for_model(&tiny, &tok).unwrap();
    assert_eq!(
        chatml.render(&conversation, None, true, &empty()).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n\
         <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );

    let Some(path) = common::cached_model("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert!(
        ChatTemplate::from_gguf(&gguf).is_none(),
        "this Gemma GGUF ships no template"
    );
    let gemma = ChatTemplate::for_model(&gguf, &tok).unwrap();
    let prompt = gemma.render(&conversation, None, true, &empty()).unwrap();
    assert_eq!(
        prompt,
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = tok.encode(&prompt, true, true);
    assert_eq!(ids[0], tok.bos().unwrap(), "the tokenizer adds Gemma's BOS");
    assert_eq!(ids[1], tok.token_id("<start_of_turn>").unwrap());
}
