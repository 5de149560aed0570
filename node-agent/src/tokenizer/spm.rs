//! SentencePiece tokenization the way llama.cpp does it for `tokenizer.ggml.model = "llama"`.
//!
//! Not SentencePiece's own unigram/BPE search: llama.cpp starts from single UTF-8 characters and repeatedly
//! merges the adjacent pair whose concatenation is the highest-scoring token in the vocabulary (ties: the
//! leftmost pair), then spells any character that never became a token with byte tokens `<0xNN>`. Token ids
//! must match llama.cpp's, so this is that algorithm, not the crate-of-the-day's.

use super::vocab::Vocab;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A run of the text: `start..start + len` bytes. `len == 0` once merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols. `size` is their combined length when it was queued, which tells
/// a stale candidate (one side has merged since) from a live one: symbols only grow or vanish.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The greatest is popped first: highest score, then leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

struct Session<'a> {
    vocab: &'a Vocab,
    text: &'a str,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

/// Appends the tokens of `text` (already space-escaped with `▁`) to `out`.
pub(crate) fn tokenize(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    if text.is_empty() {
        return;
    }
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    let n_chars = text.chars().count();
    for (i, (start, c)) in text.char_indices().enumerate() {
        symbols.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: (i + 1 < n_chars).then_some(i + 1),
        });
    }
    let mut session = Session {
        vocab,
        text,
        symbols,
        queue: BinaryHeap::new(),
    };
    session.run(out);
}

impl Session<'_> {
    fn run(&mut self, out: &mut Vec<u32>) {
        for i in 1..self.symbols.len() {
            self.try_add_bigram(Some(i - 1), Some(i));
        }
        while let Some(bigram) = self.queue.pop() {
            let left = self.symbols[bigram.left];
            let right = self.symbols[bigram.right];
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
                continue;
            }
            // Merge the right symbol into the left one and unlink it.
            self.symbols[bigram.left].len += right.len;
            self.symbols[bigram.right].len = 0;
            self.symbols[bigram.left].next = right.next;
            if let Some(next) = right.next {
                self.symbols[next].prev = Some(bigram.left);
            }
            self.try_add_bigram(left.prev, Some(bigram.left));
            self.try_add_bigram(Some(bigram.left), right.next);
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let symbol = self.symbols[i];
            self.emit(symbol, out);
            at = symbol.next;
        }
    }

    fn try_add_bigram(&mut self, left: Option<usize>, right: Option<usize>) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let l = self.symbols[left];
        let r = self.symbols[right];
        let joined = &self.text[l.start..r.start + r.len];
        if let Some(id) = self.vocab.id(joined) {
            self.queue.push(Bigram {
                left,
                right,
                score: self.vocab.scores[id as usize],
                size: joined.len(),
            });
        }
    }

    /// A final symbol is a token, or is spelled in byte tokens. (llama.cpp first tries to undo the merges that
    /// built a symbol, but merges only ever build vocabulary tokens and a single character cannot be the
    /// concatenation of two, so for valid UTF-8 that path never applies.)
    fn emit(&self, symbol: Symbol, out: &mut Vec<u32>) {
        let piece = &self.text[symbol.start..symbol.start + symbol.len];
        if let Some(id) = self.vocab.id(piece) {
            out.push(id);
            return;
        }
        for &byte in piece.as_bytes() {
            if let Some(id) = byte_token(self.vocab, byte) {
                out.push(id);
            }
        }
    }
}

/// The token for one raw byte: `<0xNN>`, else the byte itself as a one-character token. llama.cpp aborts
/// the tokenization when neither exists; we fall back to the unknown token (or drop the byte if there is none).
fn byte_token(vocab: &Vocab, byte: u8) -> Option<u32> {
    vocab
        .id(&format!("<0x{byte:02X}>"))
        .or_else(|| {
            byte.is_ascii()
                .then(|| vocab.id(std::str::from_utf8(&[byte]).unwrap_or_default()))
                .flatten()
        })
        .or(vocab.special.unk)
}
