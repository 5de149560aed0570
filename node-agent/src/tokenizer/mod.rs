//! Text ↔ token ids for GGUF models, matching llama.cpp (`llama_tokenize` / `llama_token_to_piece` /
//! `llama_detokenize`) token for token, so that prompts, prefix caches and benchmarks line up with the
//! reference engine.
//!
//! Two vocabulary types are supported: byte-level BPE (`tokenizer.ggml.model = "gpt2"`: SmolLM, Qwen, Llama 3)
//! through the `tokenizers` crate with llama.cpp's per-`pre` word splitting, and llama.cpp's SentencePiece
//! variant (`"llama"`: Gemma, Llama 2) written out here. Special tokens are split out of the text first, by
//! llama.cpp's rules, in [`partition`].

mod bpe;
mod detok;
mod partition;
mod spm;
mod vocab;

#[cfg(test)]
mod tests;

pub use detok::{DecodeOptions, Detokenizer};
pub use vocab::{SpecialIds, TokenAttr, VocabKind};

use crate::gguf::{GgufError, GgufFile, Metadata};
use partition::{Fragment, SpecialSplitter};
use thiserror::Error;
use vocab::Vocab;

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tokenizer model `{0}` is not supported (Kiln reads `gpt2` byte-level BPE and `llama` SentencePiece)")]
    UnsupportedModel(String),
    #[error("BPE pre-tokenizer `{0}` is not supported (tokenizer.ggml.pre)")]
    UnsupportedPre(String),
    #[error("invalid tokenizer data: {0}")]
    Invalid(String),
}

enum Algorithm {
    SentencePiece,
    Bpe(Box<bpe::BpeModel>),
}

pub struct Tokenizer {
    vocab: Vocab,
    algorithm: Algorithm,
    splitter: SpecialSplitter,
    /// Every token's text as llama.cpp renders it with `special = true`.
    pieces: Vec<Box<[u8]>>,
    pre: String,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
}

impl AsRef<Tokenizer> for Tokenizer {
    fn as_ref(&self) -> &Tokenizer {
        self
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.vocab.kind)
            .field("pre", &self.pre)
            .field("vocab_size", &self.vocab.len())
            .field("special", &self.vocab.special)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish()
    }
}

impl Tokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Self::from_metadata(&file.metadata)
    }

    pub fn from_metadata(meta: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let model = meta.get_str("tokenizer.ggml.model")?;
        let pre = meta.opt_str("tokenizer.ggml.pre")?.unwrap_or_default();
        // llama.cpp's per-model defaults, before the metadata has its say.
        let (kind, defaults, pre_type) = match model {
            "llama" => {
                let defaults = SpecialIds {
                    bos: Some(1),
                    eos: Some(2),
                    unk: Some(0),
                    ..SpecialIds::default()
                };
                (VocabKind::SentencePiece, defaults, None)
            }
            "gpt2" => {
                let pre_type = bpe::pre_type(pre)
                    .ok_or_else(|| TokenizerError::UnsupportedPre(pre.to_string()))?;
                // GPT-2's `<|endoftext|>` id, which llama.cpp assumes when a BPE file names no BOS/EOS.
                let defaults = SpecialIds {
                    bos: Some(11),
                    eos: Some(11),
                    ..SpecialIds::default()
                };
                (VocabKind::Bpe, defaults, Some(pre_type))
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let vocab = Vocab::load(meta, kind, defaults)?;

        let (mut add_bos, mut add_space_prefix, clean_spaces) = match &pre_type {
            None => (true, true, false),
            Some(p) => (p.add_bos, false, p.clean_spaces),
        };
        let mut add_eos = false;
        if let Some(v) = meta.opt_bool("tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = v;
        }
        if let Some(v) = meta.opt_bool("tokenizer.ggml.add_bos_token")? {
            add_bos = v;
        }
        if let Some(v) = meta.opt_bool("tokenizer.ggml.add_eos_token")? {
            add_eos = v;
        }
        if add_bos && vocab.special.bos.is_none() {
            return Err(TokenizerError::Invalid(
                "add_bos_token is set but the vocabulary has no BOS token".into(),
            ));
        }
        if add_eos && vocab.special.eos.is_none() {
            return Err(TokenizerError::Invalid(
                "add_eos_token is set but the vocabulary has no EOS token".into(),
            ));
        }

        let algorithm = match &pre_type {
            None => Algorithm::SentencePiece,
            Some(p) => {
                let merges = meta.get_str_array("tokenizer.ggml.merges")?;
                Algorithm::Bpe(Box::new(bpe::BpeModel::new(&vocab, &merges, p)?))
            }
        };
        let splitter = SpecialSplitter::new(&vocab)?;
        let pieces = (0..vocab.len() as u32)
            .map(|id| render_piece(&vocab, id).into_boxed_slice())
            .collect();
        Ok(Tokenizer {
            vocab,
            algorithm,
            splitter,
            pieces,
            pre: pre.to_string(),
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
        })
    }

    /// Token ids for `text`, as `llama_tokenize(text, add_special, parse_special)` gives them.
    ///
    /// `add_special` adds BOS / EOS where the model asks for them (`tokenizer.ggml.add_bos_token` /
    /// `add_eos_token`, else the model type's default). `parse_special` turns the text of control tokens
    /// (`<|im_start|>`, `<start_of_turn>`) into those tokens; without it they are tokenized as plain text.
    /// User-defined tokens are always recognised.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let fragments = self.splitter.split(&self.vocab, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.vocab.special.bos);
        }
        match &self.algorithm {
            Algorithm::SentencePiece => {
                // SentencePiece puts a space before the text and after every special token.
                let mut after_special = true;
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(t) => {
                            let prefix = if self.add_space_prefix && after_special {
                                " "
                            } else {
                                ""
                            };
                            let escaped = format!("{prefix}{t}").replace(' ', "\u{2581}");
                            spm::tokenize(&self.vocab, &escaped, &mut out);
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
            }
            Algorithm::Bpe(model) => {
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(t) => model.tokenize(t, &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.vocab.special.eos);
        }
        out
    }

    /// The bytes one token stands for, special tokens rendered as their text (llama.cpp's
    /// `llama_token_to_piece(.., special = true)`). Empty for an id outside the vocabulary. May be part of a
    /// UTF-8 character.
    pub fn token_to_piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p)
    }

    /// The text of a whole sequence (lossy UTF-8): `llama_detokenize(ids, remove_special = false,
    /// unparse_special = true)`.
    pub fn decode(&self, ids: &[u32]) -> String {
        detok::decode(self, ids, DecodeOptions::default())
    }

    pub fn decode_with(&self, ids: &[u32], options: DecodeOptions) -> String {
        detok::decode(self, ids, options)
    }

    /// A streaming decoder borrowing this tokenizer (use [`Detokenizer::new`] with an `Arc<Tokenizer>` to own it).
    pub fn detokenizer(&self, options: DecodeOptions) -> Detokenizer<&Tokenizer> {
        Detokenizer::new(self, options)
    }

    pub fn bos(&self) -> Option<u32> {
        self.vocab.special.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.vocab.special.eos
    }

    /// The end-of-turn token: `tokenizer.ggml.eot_token_id`, else the first of `<|eot_id|>`, `<|im_end|>`,
    /// `<|end|>`, `<end_of_turn>`, `<|endoftext|>`, … that the vocabulary has.
    pub fn eot(&self) -> Option<u32> {
        self.vocab.special.eot
    }

    pub fn special_ids(&self) -> &SpecialIds {
        &self.vocab.special
    }

    /// Whether generation stops at `id`: EOS, EOT, EOM, the FIM pad/repo/separator tokens, and every token whose
    /// text llama.cpp treats as an end of generation (`<|im_end|>`, `<|endoftext|>`, `<end_of_turn>`, …).
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.vocab.eog
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The id of the token whose text is exactly `text` (raw vocabulary text: `▁Hello`, `ĠHello`, `<|im_end|>`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }

    /// The raw vocabulary text of a token.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    pub fn token_attr(&self, id: u32) -> TokenAttr {
        self.vocab.attr(id)
    }

    /// Control or unknown token: not rendered unless asked, and only parsed from text with `parse_special`.
    pub fn is_control(&self, id: u32) -> bool {
        let attr = self.vocab.attr(id);
        attr.has(TokenAttr::CONTROL) || attr.has(TokenAttr::UNKNOWN)
    }

    pub fn kind(&self) -> VocabKind {
        self.vocab.kind
    }

    /// `tokenizer.ggml.pre` ("" when absent).
    pub fn pre(&self) -> &str {
        &self.pre
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether decoding removes spaces before punctuation and in contractions (llama.cpp's
    /// `clean_up_tokenization_spaces`, set by the pre type: on for llama3, gpt-2 and default, off for qwen2,
    /// qwen35, smollm and SentencePiece). When on, `decode(encode(text))` can differ from `text`.
    pub fn cleans_spaces(&self) -> bool {
        self.clean_spaces
    }

    /// The piece `decode` uses for `id`: empty for control tokens unless rendered, and without its leading
    /// space when it is the first piece of a space-prefixed text.
    fn piece_for_decode(&self, id: u32, options: DecodeOptions, first: bool) -> &[u8] {
        if !options.render_special && self.is_control(id) {
            return &[];
        }
        let piece = self.token_to_piece(id);
        if first && options.strip_space_prefix && self.add_space_prefix {
            piece.strip_prefix(b" ").unwrap_or(piece)
        } else {
            piece
        }
    }
}

/// One token's bytes, the way llama.cpp's `token_to_piece` renders it with `special = true`.
fn render_piece(vocab: &Vocab, id: u32) -> Vec<u8> {
    let attr = vocab.attr(id);
    let text = &vocab.texts[id as usize];
    if attr.has(TokenAttr::CONTROL)
        || attr.has(TokenAttr::UNKNOWN)
        || attr.has(TokenAttr::USER_DEFINED)
    {
        return text.as_bytes().to_vec();
    }
    if attr.has(TokenAttr::NORMAL) {
        return match vocab.kind {
            VocabKind::SentencePiece => text.replace('\u{2581}', " ").into_bytes(),
            VocabKind::Bpe => bpe::byte_level_decode(text),
        };
    }
    if attr.has(TokenAttr::BYTE) {
        // `<0xNN>`; llama.cpp reads the two hex digits at offset 3.
        let byte = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok());
        return byte.map(|b| vec![b]).unwrap_or_default();
    }
    // Unused and undefined tokens render as nothing.
    Vec::new()
}
