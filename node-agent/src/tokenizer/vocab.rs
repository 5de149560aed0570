//! The vocabulary as llama.cpp loads it from GGUF metadata: token texts, scores, per-token attributes, the
//! special token ids, and the end-of-generation set.
//!
//! llama.cpp decides several things by token *text* rather than metadata (which token ends a turn, which
//! ones end generation, which "control-looking" tokens get the control attribute). Those rules are repeated
//! here because they change tokenization (control tokens are split out only with `parse_special`) and
//! rendering (control tokens render only when asked).

use super::TokenizerError;
use crate::gguf::Metadata;
use std::collections::{BTreeSet, HashMap};

/// Per-token attributes, the same bits as llama.cpp's `llama_token_attr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenAttr(u16);

impl TokenAttr {
    pub const UNDEFINED: TokenAttr = TokenAttr(0);
    pub const UNKNOWN: TokenAttr = TokenAttr(1 << 0);
    pub const UNUSED: TokenAttr = TokenAttr(1 << 1);
    pub const NORMAL: TokenAttr = TokenAttr(1 << 2);
    pub const CONTROL: TokenAttr = TokenAttr(1 << 3);
    pub const USER_DEFINED: TokenAttr = TokenAttr(1 << 4);
    pub const BYTE: TokenAttr = TokenAttr(1 << 5);
    /// Whitespace left of the token is dropped when it is split out of the text.
    pub const LSTRIP: TokenAttr = TokenAttr(1 << 7);
    /// Whitespace right of the token is dropped when it is split out of the text.
    pub const RSTRIP: TokenAttr = TokenAttr(1 << 8);

    pub fn has(self, other: TokenAttr) -> bool {
        self.0 & other.0 != 0
    }
    fn set(&mut self, other: TokenAttr, on: bool) {
        if on {
            self.0 |= other.0;
        } else {
            self.0 &= !other.0;
        }
    }
    /// The attribute for a GGUF `tokenizer.ggml.token_type` value.
    fn from_gguf_type(ty: i64) -> TokenAttr {
        match ty {
            1 => TokenAttr::NORMAL,
            2 => TokenAttr::UNKNOWN,
            3 => TokenAttr::CONTROL,
            4 => TokenAttr::USER_DEFINED,
            5 => TokenAttr::UNUSED,
            6 => TokenAttr::BYTE,
            _ => TokenAttr::UNDEFINED,
        }
    }
}

/// Which of the two algorithm families the vocabulary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// `tokenizer.ggml.model = "llama"`: SentencePiece with scores.
    SentencePiece,
    /// `tokenizer.ggml.model = "gpt2"`: byte-level BPE with merges.
    Bpe,
}

/// Special token ids; `None` where the vocabulary has none.
#[derive(Clone, Debug, Default)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

pub(crate) struct Vocab {
    pub kind: VocabKind,
    pub texts: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<TokenAttr>,
    /// Text → id; where two ids share a text the later id wins, as in llama.cpp.
    pub ids: HashMap<String, u32>,
    pub special: SpecialIds,
    /// Sorted ids of the tokens that end generation.
    pub eog: Vec<u32>,
}

// Candidate texts, in the order llama.cpp lists them. llama.cpp takes the first candidate met while walking
// a hash map, so when a vocabulary holds several its pick is arbitrary; we take the first in list order.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts that end generation wherever they appear in a vocabulary.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

fn err(reason: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid(reason.into())
}

impl Vocab {
    /// Reads tokens, scores and types, then applies llama.cpp's special-token rules. `default_bos_eos_unk`
    /// are llama.cpp's per-model defaults, used where the metadata names no id.
    pub fn load(
        meta: &Metadata,
        kind: VocabKind,
        defaults: SpecialIds,
    ) -> Result<Vocab, TokenizerError> {
        let raw_texts = meta.get_str_array("tokenizer.ggml.tokens")?;
        let n = raw_texts.len();
        if n == 0 {
            return Err(err("tokenizer.ggml.tokens is empty"));
        }
        if n > u32::MAX as usize / 2 {
            return Err(err(format!(
                "{n} tokens is more than a token id can address"
            )));
        }
        let scores = match meta.get("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(_) => meta.get_f32_array("tokenizer.ggml.scores")?,
        };
        if scores.len() != n {
            return Err(err(format!(
                "tokenizer.ggml.scores has {} entries for {n} tokens",
                scores.len()
            )));
        }
        let attrs: Vec<TokenAttr> = match meta.get("tokenizer.ggml.token_type") {
            None => vec![TokenAttr::NORMAL; n],
            Some(_) => meta
                .get_i64_array("tokenizer.ggml.token_type")?
                .into_iter()
                .map(TokenAttr::from_gguf_type)
                .collect(),
        };
        if attrs.len() != n {
            return Err(err(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                attrs.len()
            )));
        }

        let mut texts = Vec::with_capacity(n);
        let mut ids = HashMap::with_capacity(n);
        for (i, text) in raw_texts.into_iter().enumerate() {
            // llama.cpp renames empty tokens so that every id keeps a distinct, non-empty text.
            let text = if text.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                text.to_string()
            };
            ids.insert(text.clone(), i as u32);
            texts.push(text);
        }

        let mut vocab = Vocab {
            kind,
            texts,
            scores,
            attrs,
            ids,
            special: SpecialIds::default(),
            eog: Vec::new(),
        };
        vocab.special = vocab.read_special_ids(meta, defaults)?;
        vocab.detect_special_by_text();
        vocab.mark_unused();
        vocab.eog = vocab.end_of_generation_set();
        vocab.apply_model_attrs(meta)?;
        Ok(vocab)
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn attr(&self, id: u32) -> TokenAttr {
        self.attrs
            .get(id as usize)
            .copied()
            .unwrap_or(TokenAttr::UNDEFINED)
    }

    fn read_special_ids(
        &self,
        meta: &Metadata,
        defaults: SpecialIds,
    ) -> Result<SpecialIds, TokenizerError> {
        let n = self.len() as u64;
        // A default outside the vocabulary is dropped (llama.cpp does the same); an id the file names must be
        // inside it.
        let in_range = |id: Option<u32>| id.filter(|&id| (id as u64) < n);
        let read = |key: &str, default: Option<u32>| -> Result<Option<u32>, TokenizerError> {
            match meta.opt_u64(key)? {
                None => Ok(in_range(default)),
                Some(id) if id < n => Ok(Some(id as u32)),
                Some(id) => Err(err(format!(
                    "{key} = {id} is outside the {n}-token vocabulary"
                ))),
            }
        };
        let mut s = SpecialIds {
            bos: read("tokenizer.ggml.bos_token_id", defaults.bos)?,
            eos: read("tokenizer.ggml.eos_token_id", defaults.eos)?,
            eot: read("tokenizer.ggml.eot_token_id", None)?,
            eom: read("tokenizer.ggml.eom_token_id", None)?,
            unk: read("tokenizer.ggml.unknown_token_id", defaults.unk)?,
            sep: read("tokenizer.ggml.seperator_token_id", None)?,
            pad: read("tokenizer.ggml.padding_token_id", None)?,
            mask: read("tokenizer.ggml.mask_token_id", None)?,
            fim_pre: read("tokenizer.ggml.fim_pre_token_id", None)?,
            fim_suf: read("tokenizer.ggml.fim_suf_token_id", None)?,
            fim_mid: read("tokenizer.ggml.fim_mid_token_id", None)?,
            fim_pad: read("tokenizer.ggml.fim_pad_token_id", None)?,
            fim_rep: read("tokenizer.ggml.fim_rep_token_id", None)?,
            fim_sep: read("tokenizer.ggml.fim_sep_token_id", None)?,
        };
        // Deprecated spellings of the FIM keys.
        s.fim_pre = read("tokenizer.ggml.prefix_token_id", s.fim_pre)?;
        s.fim_suf = read("tokenizer.ggml.suffix_token_id", s.fim_suf)?;
        s.fim_mid = read("tokenizer.ggml.middle_token_id", s.fim_mid)?;
        Ok(s)
    }

    /// Fills ids the metadata left unset from well-known token texts, and makes the chosen tokens control
    /// tokens (conversion scripts sometimes mark them normal).
    fn detect_special_by_text(&mut self) {
        type Slot = fn(&mut SpecialIds) -> &mut Option<u32>;
        let lists: [(&[&str], Slot); 8] = [
            (EOT_TEXTS, |s| &mut s.eot),
            (EOM_TEXTS, |s| &mut s.eom),
            (FIM_PRE_TEXTS, |s| &mut s.fim_pre),
            (FIM_SUF_TEXTS, |s| &mut s.fim_suf),
            (FIM_MID_TEXTS, |s| &mut s.fim_mid),
            (FIM_PAD_TEXTS, |s| &mut s.fim_pad),
            (FIM_REP_TEXTS, |s| &mut s.fim_rep),
            (FIM_SEP_TEXTS, |s| &mut s.fim_sep),
        ];
        for (texts, slot) in lists {
            if slot(&mut self.special).is_some() {
                continue;
            }
            if let Some(id) = texts.iter().find_map(|t| self.id(t)) {
                *slot(&mut self.special) = Some(id);
                self.attrs[id as usize].set(TokenAttr::CONTROL, true);
            }
        }
    }

    /// Control tokens whose text says "unused" are unused (gemma's `<unused12>`).
    fn mark_unused(&mut self) {
        for (text, attr) in self.texts.iter().zip(self.attrs.iter_mut()) {
            if attr.has(TokenAttr::CONTROL) && text.contains("unused") {
                attr.set(TokenAttr::UNUSED, true);
            }
        }
    }

    fn end_of_generation_set(&mut self) -> Vec<u32> {
        let s = self.special.clone();
        let mut eog: BTreeSet<u32> = [s.fim_pad, s.fim_rep, s.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for text in EOG_TEXTS {
            if let Some(id) = self.id(text) {
                eog.insert(id);
                self.attrs[id as usize].set(TokenAttr::CONTROL, true);
            }
        }
        // gpt-oss renders these framing tokens as text.
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = self.id(text) {
                self.attrs[id as usize] = TokenAttr::USER_DEFINED;
            }
        }
        eog.extend([s.eos, s.eot, s.eom].into_iter().flatten());

        // Harmony (gpt-oss) and solar-open use `<|end|>` between messages, not at the end of generation.
        let in_eog =
            |vocab: &Vocab, eog: &BTreeSet<u32>, t: &str| vocab.id(t).filter(|id| eog.contains(id));
        let has_return = in_eog(self, &eog, "<|return|>").is_some();
        let has_call =
            in_eog(self, &eog, "<|call|>").is_some() || in_eog(self, &eog, "<|calls|>").is_some();
        let has_flush = in_eog(self, &eog, "<|flush|>").is_some();
        if let Some(end) = in_eog(self, &eog, "<|end|>") {
            if has_call && (has_return || has_flush) {
                eog.remove(&end);
                self.attrs[end as usize] = TokenAttr::USER_DEFINED;
            }
        }
        // Gemma 4 and PLaMo have an ordinary `</s>`.
        let ordinary_s = in_eog(self, &eog, "<|tool_response>").is_some()
            || in_eog(self, &eog, "<|plamo:eos|>").is_some();
        if ordinary_s {
            if let Some(s_id) = in_eog(self, &eog, "</s>") {
                eog.remove(&s_id);
                self.attrs[s_id as usize] = TokenAttr::NORMAL;
            }
        }
        eog.into_iter().collect()
    }

    /// Per-model attribute fixes llama.cpp applies by model name (only those for vocab types Kiln loads).
    fn apply_model_attrs(&mut self, meta: &Metadata) -> Result<(), TokenizerError> {
        let name = meta
            .opt_str("general.name")?
            .unwrap_or_default()
            .to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for attr in self.attrs.iter_mut() {
                if attr.has(TokenAttr::CONTROL)
                    || attr.has(TokenAttr::USER_DEFINED)
                    || attr.has(TokenAttr::UNKNOWN)
                {
                    attr.set(TokenAttr::RSTRIP, true);
                }
            }
            for (text, on) in [
                ("</s>", true),
                ("<unk>", false),
                ("<s>", false),
                ("<|endoftext|>", false),
            ] {
                if let Some(id) = self.id(text) {
                    self.attrs[id as usize].set(TokenAttr::RSTRIP, on);
                }
            }
        }
        Ok(())
    }

    /// Tokens split out of text before the model sees it, longest text first (llama.cpp's special cache).
    pub fn special_tokens_longest_first(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..self.len() as u32)
            .filter(|&id| {
                let a = self.attr(id);
                a.has(TokenAttr::CONTROL)
                    || a.has(TokenAttr::USER_DEFINED)
                    || a.has(TokenAttr::UNKNOWN)
            })
            .collect();
        // Stable, so equal lengths keep id order (llama.cpp's sort leaves that order unspecified).
        ids.sort_by_key(|&id| std::cmp::Reverse(self.texts[id as usize].len()));
        ids
    }
}
