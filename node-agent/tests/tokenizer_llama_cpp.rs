//! Kiln's tokenizer against llama.cpp on the real models: token ids for a multilingual text set with every
//! (add_special, parse_special) setting and for 150 random mixed-script strings, detokenized text, special ids, the end-of-generation set and every
//! token's piece. The expectations in `tests/data/tokens-<model>.json` come from llama.cpp itself
//! (`tests/data/make_token_goldens.py`). Also checks round trips and streaming on every prefix.
//!
//! The real models come from `$KILN_MODELS` (default `~/.cache/kiln/models`, see `scripts/fetch-models.sh`); a
//! missing model skips its test with a printed reason. The BPE pre-tokenizers of families without a small model
//! here (qwen2, qwen35, llama3, gpt-2, default) are checked on tiny committed vocabularies
//! (`tests/data/bpe-tiny-<pre>.gguf`) whose merges cross the places where those pre types split differently.

use kiln_agent::gguf::GgufFile;
use kiln_agent::tokenizer::{DecodeOptions, Detokenizer, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

fn models_dir() -> PathBuf {
    match std::env::var_os("KILN_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln/models")
        }
    }
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn load(file: &str) -> Option<Tokenizer> {
    let path = models_dir().join(file);
    if !path.exists() {
        println!(
            "SKIP: {} is missing (run scripts/fetch-models.sh or set KILN_MODELS)",
            path.display()
        );
        return None;
    }
    let gguf = GgufFile::open(&path).expect("model opens");
    Some(Tokenizer::from_gguf(&gguf).expect("tokenizer loads"))
}

fn golden(name: &str) -> Value {
    let path = data_dir().join(format!("tokens-{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden parses")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn opt_id(v: &Value) -> Option<u32> {
    v.as_u64().map(|x| x as u32)
}

/// FNV-1a over each piece's length (u32 LE) and bytes: the checksum the golden script computes.
fn pieces_checksum(tok: &Tokenizer) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in 0..tok.vocab_size() as u32 {
        let piece = tok.token_to_piece(id);
        for &b in (piece.len() as u32).to_le_bytes().iter().chain(piece) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Every case of the golden file, failing with the differences listed.
fn check_against_llama_cpp(tok: &Tokenizer, name: &str, llama_cpp_eot_differs_to: Option<u32>) {
    let g = golden(name);
    assert_eq!(tok.vocab_size() as u64, g["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.bos(), opt_id(&g["bos"]), "bos");
    assert_eq!(tok.eos(), opt_id(&g["eos"]), "eos");
    assert_eq!(tok.adds_bos(), g["add_bos"].as_bool().unwrap(), "add_bos");
    assert_eq!(tok.adds_eos(), g["add_eos"].as_bool().unwrap(), "add_eos");
    assert_eq!(
        tok.eog_ids(),
        ids(&g["eog"]).as_slice(),
        "end-of-generation set"
    );
    match llama_cpp_eot_differs_to {
        None => assert_eq!(tok.eot(), opt_id(&g["eot"]), "eot"),
        Some(ours) => {
            // llama.cpp picks the EOT among several candidate texts in hash-map order; Kiln takes the first in
            // its list. Both are end-of-generation tokens.
            assert_eq!(tok.eot(), Some(ours), "eot");
            assert!(tok.is_eog(opt_id(&g["eot"]).unwrap()));
        }
    }
    assert_eq!(
        pieces_checksum(tok),
        g["pieces_fnv1a64"].as_str().unwrap(),
        "token pieces"
    );

    let cases = g["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    let mut texts_ok = std::collections::BTreeMap::<&str, bool>::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let add_special = case["add_special"].as_bool().unwrap();
        let parse_special = case["parse_special"].as_bool().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text, add_special, parse_special);
        let decoded = tok.decode(&want);
        let ok = got == want && decoded == case["decoded"].as_str().unwrap();
        *texts_ok.entry(text).or_insert(true) &= ok;
        if got != want {
            failures.push(format!(
                "encode({text:?}, add_special={add_special}, parse_special={parse_special})\n  llama.cpp {want:?}\n  kiln      {got:?}"
            ));
        }
        if decoded != case["decoded"].as_str().unwrap() {
            failures.push(format!(
                "decode({want:?})\n  llama.cpp {:?}\n  kiln      {decoded:?}",
                case["decoded"]
            ));
        }
    }
    let matching = texts_ok.values().filter(|&&ok| ok).count();
    println!(
        "{name}: {matching}/{} texts match llama.cpp in every flag setting tried ({} cases)",
        texts_ok.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// decode(encode(text)) is the text (unless the vocabulary cleans up spaces, as llama.cpp does for llama3, gpt-2
/// and default: the golden comparison covers that), and a stream over every prefix of the ids yields what decoding that prefix
/// does, never a broken character.
fn check_round_trips_and_streaming(tok: &Arc<Tokenizer>, name: &str) {
    let g = golden(name);
    for case in g["cases"].as_array().unwrap() {
        if case["add_special"].as_bool().unwrap() {
            continue;
        }
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, false, case["parse_special"].as_bool().unwrap());
        if !tok.cleans_spaces() {
            assert_eq!(tok.decode(&ids), text, "round trip of {text:?}");
        }

        let whole = tok.decode(&ids);
        let mut stream = Detokenizer::new(Arc::clone(tok), DecodeOptions::default());
        let mut streamed = String::new();
        for k in 1..=ids.len() {
            streamed.push_str(&stream.push(ids[k - 1]));
            let prefix_text = tok.decode(&ids[..k]);
            assert!(
                prefix_text.starts_with(&streamed) && whole.starts_with(&streamed),
                "stream of {text:?} after {k} tokens gave {streamed:?}, decoding the prefix gives {prefix_text:?}"
            );
            let mut fresh = tok.detokenizer(DecodeOptions::default());
            let mut all: String = ids[..k].iter().map(|&id| fresh.push(id)).collect();
            all.push_str(&fresh.finish());
            assert_eq!(
                all, prefix_text,
                "stream of the first {k} tokens of {text:?}"
            );
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, whole, "whole stream of {text:?}");
    }
}

#[test]
fn smollm2_matches_llama_cpp() {
    let Some(tok) = load("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let im_end = tok.token_id("<|im_end|>");
    check_against_llama_cpp(&tok, "smollm2", im_end);
    check_round_trips_and_streaming(&Arc::new(tok), "smollm2");
}

#[test]
fn gemma3_matches_llama_cpp() {
    let Some(tok) = load("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    check_against_llama_cpp(&tok, "gemma3", None);
    check_round_trips_and_streaming(&Arc::new(tok), "gemma3");
}

#[test]
fn bpe_pre_types_match_llama_cpp_on_tiny_vocabularies() {
    for pre in ["smollm", "qwen2", "qwen35", "llama-bpe", "gpt-2", "default"] {
        let gguf = GgufFile::open(data_dir().join(format!("bpe-tiny-{pre}.gguf")))
            .expect("tiny vocabulary opens");
        let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer loads");
        assert_eq!(tok.pre(), pre);
        let name = format!("bpe-tiny-{pre}");
        let im_end = tok.token_id("<|im_end|>");
        check_against_llama_cpp(&tok, &name, im_end);
        check_round_trips_and_streaming(&Arc::new(tok), &name);
    }
}
