//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) through the `tokenizers` crate, configured to split words
//! exactly where llama.cpp splits them for the GGUF's `tokenizer.ggml.pre`.
//!
//! llama.cpp applies a pre type's regexes in sequence, each one cutting every piece the previous one left into
//! matches and the gaps between them; that is a chain of `Split` pre-tokenizers with `Isolated` behaviour. The
//! pieces are then mapped to GPT-2's byte alphabet (`ByteLevel` without its own regex) and merged by rank,
//! lowest first and leftmost on ties, which is what both llama.cpp and `tokenizers`' BPE do.
//!
//! Where the two could part ways, and what is done about it:
//! - llama.cpp runs its hand-written splitters for the gpt2 / llama3 / qwen2 / qwen35 regexes and `std::regex`
//!   over category-collapsed text for the rest; here `fancy-regex` runs the regexes themselves. The splitters
//!   are written to be equivalent to the regexes; Unicode category tables of different Unicode versions can
//!   still disagree on characters assigned recently.
//! - The case-insensitive contraction group `(?i:'s|…)` is written as llama.cpp's adapted `'[sS]|…`, so that
//!   Unicode case folding (e.g. `ſ` matching `s`) cannot apply.
//! - `tokenizers` refuses merges whose parts or result are not tokens; llama.cpp would still apply such a merge
//!   and later spell the non-token result in single-byte tokens. Such merges are dropped here (no known GGUF
//!   has them). Duplicate merges keep their first rank, as in llama.cpp.
//! - `fancy-regex` gives up past its backtracking limit and `tokenizers` then leaves the rest of that piece
//!   unsplit. The regexes used here backtrack at most linearly, so this needs pieces of around a million
//!   characters of one class.

use super::vocab::Vocab;
use super::TokenizerError;
use std::collections::HashSet;
use std::sync::OnceLock;
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper,
    SplitDelimiterBehavior,
};

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex with combining marks (`\p{M}`) kept inside letter runs.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp treats one `tokenizer.ggml.pre` value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreType {
    pub regexes: &'static [&'static str],
    /// A whole piece that is a token is emitted as that token without merging.
    pub ignore_merges: bool,
    /// The detokenizer removes spaces before punctuation (`clean_up_tokenization_spaces`).
    pub clean_spaces: bool,
    /// The pre type turns BOS insertion on unless `tokenizer.ggml.add_bos_token` says otherwise.
    pub add_bos: bool,
}

impl PreType {
    const fn new(regexes: &'static [&'static str], clean_spaces: bool) -> Self {
        PreType {
            regexes,
            ignore_merges: false,
            clean_spaces,
            add_bos: false,
        }
    }
}

/// The pre types Kiln supports: the families of the models it runs, plus aliases llama.cpp maps onto the
/// same regexes. `None` for any other value.
pub(crate) fn pre_type(pre: &str) -> Option<PreType> {
    const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];
    const STARCODER: &[&str] = &[r"\p{N}", GPT2];
    let t = match pre {
        "" | "default" => PreType::new(DEFAULT, true),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreType {
            ignore_merges: true,
            add_bos: true,
            ..PreType::new(&[LLAMA3], true)
        },
        "dbrx" | "smaug-bpe" => PreType::new(&[LLAMA3], true),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4" => {
            PreType::new(&[GPT2], true)
        }
        "trillion" | "granite-docling" => PreType::new(&[GPT2], false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            PreType::new(STARCODER, true)
        }
        "smollm" | "command-r" => PreType::new(STARCODER, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
            PreType::new(&[QWEN2], false)
        }
        "stablelm2" | "megrez" => PreType::new(&[QWEN2], true),
        "qwen35" => PreType::new(&[QWEN35], false),
        _ => return None,
    };
    Some(t)
}

pub(crate) struct BpeModel {
    pre_tokenizer: PreTokenizerWrapper,
    model: BPE,
}

fn tk_err(what: &str, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Invalid(format!("{what}: {e}"))
}

impl BpeModel {
    pub fn new(vocab: &Vocab, merges: &[&str], pre: &PreType) -> Result<Self, TokenizerError> {
        let mut steps = Vec::with_capacity(pre.regexes.len() + 1);
        for regex in pre.regexes {
            let split = Split::new(
                SplitPattern::Regex((*regex).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tk_err("pre-tokenizer regex", e))?;
            steps.push(PreTokenizerWrapper::Split(split));
        }
        steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, false, false,
        )));
        let pre_tokenizer = PreTokenizerWrapper::Sequence(Sequence::new(steps));

        let bpe_vocab: BpeVocab = vocab.ids.iter().map(|(t, &id)| (t.clone(), id)).collect();
        let model = BPE::builder()
            .vocab_and_merges(bpe_vocab, usable_merges(vocab, merges))
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(|e| tk_err("BPE model", e))?;
        Ok(BpeModel {
            pre_tokenizer,
            model,
        })
    }

    /// Appends the tokens of one text fragment (no special tokens in it) to `out`.
    pub fn tokenize(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut pieces = PreTokenizedString::from(text);
        // Neither step can fail on a `&str` (the regexes compiled at load); if one ever did, the fragment would
        // come out short, which the golden tests would catch.
        if self.pre_tokenizer.pre_tokenize(&mut pieces).is_err() {
            return;
        }
        for (piece, _, _) in pieces.get_splits(OffsetReferential::Original, OffsetType::None) {
            if let Ok(tokens) = self.model.tokenize(piece) {
                out.extend(tokens.iter().map(|t| t.id));
            }
        }
    }
}

/// Merges as `(left, right)` in rank order, split at the first space after the first character (llama.cpp's
/// rule, so a left part may itself start with a space), without duplicates or merges off the vocabulary.
fn usable_merges(vocab: &Vocab, merges: &[&str]) -> Vec<(String, String)> {
    let mut seen = HashSet::with_capacity(merges.len());
    let mut out = Vec::with_capacity(merges.len());
    for merge in merges {
        let Some(first_len) = merge.chars().next().map(char::len_utf8) else {
            continue;
        };
        let Some(space) = merge[first_len..].find(' ').map(|p| p + first_len) else {
            continue;
        };
        let (left, right) = (&merge[..space], &merge[space + 1..]);
        let known = vocab.ids.contains_key(left)
            && vocab.ids.contains_key(right)
            && vocab.ids.contains_key(&format!("{left}{right}"));
        if known && seen.insert((left, right)) {
            out.push((left.to_string(), right.to_string()));
        }
    }
    out
}

/// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes take the code
/// points from U+0100 on, in byte order. Indexed by code point (all of them are below U+0144).
fn byte_alphabet() -> &'static [Option<u8>; 0x144] {
    static TABLE: OnceLock<[Option<u8>; 0x144]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut table = [None; 0x144];
        let mut next = 0x100;
        for b in 0..=255u8 {
            if printable(b) {
                table[b as usize] = Some(b);
            } else {
                table[next] = Some(b);
                next += 1;
            }
        }
        table
    })
}

fn byte_for_char(c: char) -> Option<u8> {
    byte_alphabet().get(c as usize).copied().flatten()
}

/// The character that stands for `byte` (for building test vocabularies).
#[cfg(test)]
pub(crate) fn char_for_byte(byte: u8) -> char {
    (0u32..0x144)
        .filter_map(char::from_u32)
        .find(|&c| byte_for_char(c) == Some(byte))
        .expect("every byte has a character")
}

/// A byte-level token's text as the bytes it stands for. A character outside the byte alphabet is kept
/// as llama.cpp keeps it: `[UNK_BYTE_0x<its UTF-8 in hex><the whole token text>]`.
pub(crate) fn byte_level_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match byte_for_char(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection_onto_bytes() {
        let chars: Vec<char> = (0u32..0x200).filter_map(char::from_u32).collect();
        let mut seen = [false; 256];
        for c in chars {
            if let Some(b) = byte_for_char(c) {
                assert!(!seen[b as usize], "byte {b} mapped twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_for_char('Ġ'), Some(b' '));
        assert_eq!(byte_for_char('Ċ'), Some(b'\n'));
        assert_eq!(byte_for_char('a'), Some(b'a'));
    }

    #[test]
    fn unknown_characters_render_like_llama_cpp() {
        assert_eq!(
            byte_level_decode("a€"),
            b"a[UNK_BYTE_0xe282aca\xe2\x82\xac]".to_vec()
        );
    }
}
