//! Tokenizer tests on small hand-made vocabularies: the algorithms' rules, special-token handling and load
//! errors. Agreement with llama.cpp on real vocabularies is tested in `tests/tokenizer_llama_cpp.rs`.

use super::*;
use crate::gguf::Value;

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

fn meta(entries: Vec<(&str, Value)>) -> Metadata {
    let mut m = Metadata::default();
    for (k, v) in entries {
        m.entries.insert(k.to_string(), v);
    }
    m
}

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// A SentencePiece vocabulary: (text, score, type).
fn spm_meta(tokens: &[(&str, f32, i32)], extra: Vec<(&str, Value)>) -> Metadata {
    let texts: Vec<&str> = tokens.iter().map(|t| t.0).collect();
    let mut entries = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&texts)),
        (
            "tokenizer.ggml.scores",
            Value::Array(tokens.iter().map(|t| Value::F32(t.1)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(tokens.iter().map(|t| Value::I32(t.2)).collect()),
        ),
    ];
    entries.extend(extra);
    meta(entries)
}

fn small_spm(extra: Vec<(&str, Value)>) -> Tokenizer {
    let mut tokens = vec![
        ("<unk>", 0.0, 2),
        ("<s>", 0.0, CONTROL),
        ("</s>", 0.0, CONTROL),
        ("<start_of_turn>", 0.0, CONTROL),
        ("<br>", 0.0, USER_DEFINED),
        ("\u{2581}", -1.0, NORMAL),
        ("a", -2.0, NORMAL),
        ("b", -2.0, NORMAL),
        ("c", -2.0, NORMAL),
        ("ab", -3.0, NORMAL),
        ("bc", -1.5, NORMAL),
        ("abc", -0.5, NORMAL),
        ("\u{2581}a", -1.0, NORMAL),
    ];
    let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
    tokens.extend(bytes.iter().map(|b| (b.as_str(), 0.0, BYTE)));
    Tokenizer::from_metadata(&spm_meta(&tokens, extra)).expect("valid vocabulary")
}

fn id(t: &Tokenizer, text: &str) -> u32 {
    t.token_id(text)
        .unwrap_or_else(|| panic!("no token {text:?}"))
}

#[test]
fn spm_merges_highest_score_first_and_adds_bos_and_space_prefix() {
    let t = small_spm(vec![]);
    // "▁abc": ▁a (-1.0) and bc (-1.5) outrank ab (-3.0); then ▁a+bc is no token, so ▁a, bc remain.
    assert_eq!(
        t.encode("abc", true, false),
        vec![id(&t, "<s>"), id(&t, "\u{2581}a"), id(&t, "bc")]
    );
    // Without the space prefix, `bc` (-1.5) merges first; then a + bc spells `abc`, a token, so it merges too
    // (any adjacent pair whose text is a token can merge; there is no merge list).
    let t = small_spm(vec![(
        "tokenizer.ggml.add_space_prefix",
        Value::Bool(false),
    )]);
    assert_eq!(t.encode("abc", false, false), vec![id(&t, "abc")]);
    assert_eq!(
        t.encode("cab", false, false),
        vec![id(&t, "c"), id(&t, "ab")]
    );
    assert_eq!(t.decode(&t.encode("abc cab", false, false)), "abc cab");
}

#[test]
fn spm_spells_unknown_characters_in_bytes() {
    let t = small_spm(vec![(
        "tokenizer.ggml.add_space_prefix",
        Value::Bool(false),
    )]);
    let ids = t.encode("aé", false, false);
    assert_eq!(ids, vec![id(&t, "a"), id(&t, "<0xC3>"), id(&t, "<0xA9>")]);
    assert_eq!(t.decode(&ids), "aé");
}

#[test]
fn control_tokens_need_parse_special_user_defined_do_not() {
    let t = small_spm(vec![(
        "tokenizer.ggml.add_space_prefix",
        Value::Bool(false),
    )]);
    let sot = id(&t, "<start_of_turn>");
    let br = id(&t, "<br>");
    let parsed = t.encode("a<start_of_turn>b<br>c", false, true);
    assert_eq!(parsed, vec![id(&t, "a"), sot, id(&t, "b"), br, id(&t, "c")]);
    let plain = t.encode("a<start_of_turn>b<br>c", false, false);
    assert!(!plain.contains(&sot));
    assert!(plain.contains(&br));
    assert_eq!(t.decode(&parsed), "a<start_of_turn>b<br>c");
    let no_special = DecodeOptions {
        render_special: false,
        ..DecodeOptions::default()
    };
    assert_eq!(t.decode_with(&parsed, no_special), "ab<br>c");
}

#[test]
fn space_prefix_after_special_tokens_and_stripped_on_decode() {
    let t = small_spm(vec![]);
    let ids = t.encode("a<start_of_turn>a", false, true);
    let sp_a = id(&t, "\u{2581}a");
    assert_eq!(ids, vec![sp_a, id(&t, "<start_of_turn>"), sp_a]);
    assert_eq!(t.decode(&ids), "a<start_of_turn> a");
    let continuing = DecodeOptions {
        strip_space_prefix: false,
        ..DecodeOptions::default()
    };
    assert_eq!(t.decode_with(&ids[..1], continuing), " a");
}

#[test]
fn eog_and_eot_follow_token_texts() {
    let t = small_spm(vec![]);
    assert_eq!(t.bos(), Some(1));
    assert_eq!(t.eos(), Some(2));
    assert_eq!(t.eot(), None);
    assert!(t.is_eog(2), "</s> is EOS");
    assert!(!t.is_eog(1));
}

#[test]
fn inconsistent_vocabularies_are_errors() {
    let bad_scores = meta(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "c"])),
        ("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0)])),
    ]);
    let e = Tokenizer::from_metadata(&bad_scores)
        .unwrap_err()
        .to_string();
    assert!(e.contains("scores has 1 entries for 3 tokens"), "{e}");

    let bad_bos = meta(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "c"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(7)),
    ]);
    let e = Tokenizer::from_metadata(&bad_bos).unwrap_err().to_string();
    assert!(
        e.contains("bos_token_id = 7 is outside the 3-token vocabulary"),
        "{e}"
    );

    let bert = meta(vec![
        ("tokenizer.ggml.model", Value::String("bert".into())),
        ("tokenizer.ggml.tokens", strings(&["a"])),
    ]);
    assert!(matches!(
        Tokenizer::from_metadata(&bert),
        Err(TokenizerError::UnsupportedModel(m)) if m == "bert"
    ));

    let odd_pre = meta(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("chameleon".into())),
        ("tokenizer.ggml.tokens", strings(&["a"])),
        ("tokenizer.ggml.merges", strings(&[])),
    ]);
    assert!(matches!(
        Tokenizer::from_metadata(&odd_pre),
        Err(TokenizerError::UnsupportedPre(p)) if p == "chameleon"
    ));

    let no_merges = meta(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens", strings(&["a"])),
    ]);
    let e = Tokenizer::from_metadata(&no_merges)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.ggml.merges"), "{e}");
}

/// A byte-level BPE vocabulary with every byte character plus the given merges.
fn small_bpe(pre: &str, merges: &[&str], extra_tokens: &[(&str, i32)]) -> Tokenizer {
    let mut texts: Vec<String> = (0..=255u8)
        .map(|b| bpe::char_for_byte(b).to_string())
        .collect();
    let mut types = vec![NORMAL; 256];
    for m in merges {
        texts.push(m.replace(' ', ""));
        types.push(NORMAL);
    }
    for (t, ty) in extra_tokens {
        texts.push(t.to_string());
        types.push(*ty);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let m = meta(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(&refs)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges", strings(merges)),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ]);
    Tokenizer::from_metadata(&m).expect("valid vocabulary")
}

#[test]
fn bpe_merges_by_rank_within_pre_tokenizer_words() {
    // Ranks: "Ġ w" first, then "o r", then "Ġw or", "l d", "Ġwor ld".
    let merges = ["Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "h e"];
    let t = small_bpe("gpt-2", &merges, &[]);
    let ids = t.encode("he world", false, false);
    assert_eq!(ids, vec![id(&t, "he"), id(&t, "Ġworld")]);
    assert_eq!(t.decode(&ids), "he world");
    // Digits are words of their own under smollm's pre-tokenizer, so "Ġ1" never forms.
    let t = small_bpe("smollm", &["Ġ 1"], &[]);
    assert_eq!(t.encode(" 1", false, false), vec![id(&t, "Ġ"), id(&t, "1")]);
    let t = small_bpe("gpt-2", &["Ġ 1"], &[]);
    assert_eq!(t.encode(" 1", false, false), vec![id(&t, "Ġ1")]);
}

#[test]
fn bpe_user_defined_tokens_render_raw_and_control_tokens_need_parse_special() {
    let t = small_bpe(
        "qwen2",
        &[],
        &[("<think>", USER_DEFINED), ("<|im_end|>", CONTROL)],
    );
    let think = id(&t, "<think>");
    let end = id(&t, "<|im_end|>");
    assert_eq!(t.encode("<think>", false, false), vec![think]);
    assert_eq!(t.encode("<|im_end|>", false, true), vec![end]);
    assert_eq!(
        t.encode("<|im_end|>", false, false).len(),
        "<|im_end|>".len()
    );
    assert_eq!(t.token_to_piece(think), b"<think>");
    assert!(t.is_eog(end), "<|im_end|> ends generation by its text");
    assert_eq!(t.eot(), Some(end));
}

#[test]
fn detokenizer_streams_the_same_text_as_decode() {
    let t = small_bpe("gpt-2", &["Ġ w", "o r"], &[]);
    let text = "a , b ! I 'm ok ' x . é€😀 word";
    let ids = t.encode(text, false, false);
    let mut stream = t.detokenizer(DecodeOptions::default());
    let mut streamed = String::new();
    for &id in &ids {
        let piece = stream.push(id);
        assert!(!piece.contains('\u{fffd}'), "split a character: {piece:?}");
        streamed.push_str(&piece);
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, t.decode(&ids));
    assert_eq!(streamed, "a, b! I'm ok'x. é€😀 word", "gpt-2 cleans spaces");
}

/// The BPE pre-tokenizers of model families Kiln has no small model of, checked on SmolLM2's real vocabulary
/// with `tokenizer.ggml.pre` rewritten, against llama.cpp loading the same rewrite
/// (`tests/data/make_token_goldens.py`). Skips when the model file is missing.
#[test]
fn bpe_pre_types_match_llama_cpp_on_smollm2_vocabulary() {
    let models = std::env::var_os("KILN_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/kiln/models")
        });
    let path = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        println!("SKIP: {} is missing", path.display());
        return;
    }
    let gguf = crate::gguf::GgufFile::open(&path).expect("model opens");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for pre in ["qwen2", "qwen35", "llama-bpe", "gpt-2", "default"] {
        let golden_path = data.join(format!("tokens-smollm2-pre-{pre}.json"));
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&golden_path).expect("golden exists"))
                .expect("golden parses");
        let mut meta = gguf.metadata.clone();
        meta.entries
            .insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
        let tok = Tokenizer::from_metadata(&meta).expect("tokenizer loads");
        let as_ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        assert_eq!(
            tok.eog_ids(),
            as_ids(&golden["eog"]).as_slice(),
            "{pre}: eog"
        );
        assert_eq!(
            tok.adds_bos(),
            golden["add_bos"].as_bool().unwrap(),
            "{pre}: add_bos"
        );
        let mut failures = Vec::new();
        let cases = golden["cases"].as_array().unwrap();
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let add_special = case["add_special"].as_bool().unwrap();
            let parse_special = case["parse_special"].as_bool().unwrap();
            let want = as_ids(&case["ids"]);
            let got = tok.encode(text, add_special, parse_special);
            if got != want {
                failures.push(format!(
                    "encode({text:?}, {add_special}, {parse_special})\n  llama.cpp {want:?}\n  kiln      {got:?}"
                ));
            }
            let decoded = tok.decode(&want);
            if decoded != case["decoded"].as_str().unwrap() {
                failures.push(format!(
                    "decode({want:?})\n  llama.cpp {:?}\n  kiln      {decoded:?}",
                    case["decoded"]
                ));
            }
        }
        println!(
            "pre {pre}: {} of {} cases match llama.cpp",
            cases.len() - failures.len(),
            cases.len()
        );
        assert!(failures.is_empty(), "pre {pre}:\n{}", failures.join("\n"));
    }
}
