//! Splitting special tokens out of the text before the model's algorithm runs on the rest.
//!
//! The order matters and follows llama.cpp: one token at a time, longest text first, each splitting every text
//! fragment at all of its occurrences (left to right). A leftmost-longest multi-pattern match would differ
//! where tokens overlap, so an Aho–Corasick automaton is used only to learn which special tokens occur at
//! all; gemma has ~6,400 special tokens and scanning the text once per token would dominate long prompts.

use super::vocab::{TokenAttr, Vocab};
use super::TokenizerError;
use aho_corasick::{AhoCorasick, MatchKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

pub(crate) struct SpecialSplitter {
    /// Special token ids, longest text first; pattern `i` of `finder` is `order[i]`.
    order: Vec<u32>,
    finder: Option<AhoCorasick>,
}

/// C's `isspace` in the "C" locale, which is what llama.cpp strips around LSTRIP/RSTRIP tokens.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

impl SpecialSplitter {
    pub fn new(vocab: &Vocab) -> Result<Self, TokenizerError> {
        let order = vocab.special_tokens_longest_first();
        let finder = if order.is_empty() {
            None
        } else {
            let patterns = order.iter().map(|&id| vocab.texts[id as usize].as_str());
            let finder = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(patterns)
                .map_err(|e| TokenizerError::Invalid(format!("special token matcher: {e}")))?;
            Some(finder)
        };
        Ok(SpecialSplitter { order, finder })
    }

    /// The text as alternating text fragments and special tokens. Control and unknown tokens are split out only
    /// with `parse_special`; user-defined tokens always are.
    pub fn split<'t>(
        &self,
        vocab: &Vocab,
        text: &'t str,
        parse_special: bool,
    ) -> Vec<Fragment<'t>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(text)];
        let Some(finder) = &self.finder else {
            return fragments;
        };
        let mut present = vec![false; self.order.len()];
        for m in finder.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
        }
        for (index, &id) in self.order.iter().enumerate() {
            if !present[index] {
                continue;
            }
            let attr = vocab.attr(id);
            if !parse_special && (attr.has(TokenAttr::CONTROL) || attr.has(TokenAttr::UNKNOWN)) {
                continue;
            }
            let token_text = vocab.texts[id as usize].as_str();
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                match fragment {
                    Fragment::Text(s) => split_one(s, token_text, id, attr, &mut next),
                    token => next.push(token),
                }
            }
            fragments = next;
        }
        fragments
    }
}

/// Splits `s` at every occurrence of `token_text`, pushing the pieces (empty text pieces are dropped).
fn split_one<'t>(
    s: &'t str,
    token_text: &str,
    id: u32,
    attr: TokenAttr,
    out: &mut Vec<Fragment<'t>>,
) {
    let mut rest = s;
    while let Some(pos) = rest.find(token_text) {
        let mut left = &rest[..pos];
        if attr.has(TokenAttr::LSTRIP) {
            left = left.trim_end_matches(is_c_space);
        }
        if !left.is_empty() {
            out.push(Fragment::Text(left));
        }
        out.push(Fragment::Token(id));
        rest = &rest[pos + token_text.len()..];
        if attr.has(TokenAttr::RSTRIP) {
            rest = rest.trim_start_matches(is_c_space);
        }
    }
    if !rest.is_empty() {
        out.push(Fragment::Text(rest));
    }
}
