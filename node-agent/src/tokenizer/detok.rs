//! Token ids back to text: whole sequences and streams.
//!
//! Matches llama.cpp's `llama_detokenize(tokens, remove_special = false, unparse_special)`: pieces are joined,
//! the first piece loses one leading space when the vocabulary adds a space prefix, and for vocabularies with
//! `clean_spaces` the spaces before `?!.,` and inside ` ' ` / ` 's` / ` 'm` / ` 're` / ` 've` are removed.
//! The stream yields exactly the text of the whole sequence, split into pieces as soon as they are final.

use super::Tokenizer;

/// How ids become text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Render control and unknown tokens (`<|im_end|>`, `<bos>`) as their text (llama.cpp's `unparse_special`).
    pub render_special: bool,
    /// Drop the leading space of the first piece when the vocabulary adds a space prefix while encoding
    /// (SentencePiece models with `add_space_prefix`). Right for a whole text; a stream that continues after a
    /// prompt wants `false`, or its first word loses its space.
    pub strip_space_prefix: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            render_special: true,
            strip_space_prefix: true,
        }
    }
}

/// Incremental decoder for streaming: feed ids, get back the text that is final so far.
///
/// Never splits a UTF-8 character (bytes of an incomplete one wait for the next token) and never emits text
/// that a later token could still change. The concatenation of everything `push` and `finish` return equals
/// [`Tokenizer::decode_with`] of all ids.
pub struct Detokenizer<T: AsRef<Tokenizer>> {
    tokenizer: T,
    options: DecodeOptions,
    seen_first: bool,
    /// Raw bytes still subject to space clean-up (only used when the vocabulary cleans spaces).
    unclean: Vec<u8>,
    /// Final bytes not yet returned because they end in an incomplete UTF-8 sequence.
    undecoded: Vec<u8>,
}

impl<T: AsRef<Tokenizer>> Detokenizer<T> {
    pub fn new(tokenizer: T, options: DecodeOptions) -> Self {
        Detokenizer {
            tokenizer,
            options,
            seen_first: false,
            unclean: Vec::new(),
            undecoded: Vec::new(),
        }
    }

    /// Adds one token; returns the text it completes (often empty mid-character, or a whole word).
    pub fn push(&mut self, id: u32) -> String {
        let tokenizer = self.tokenizer.as_ref();
        let piece = tokenizer.piece_for_decode(id, self.options, !self.seen_first);
        self.seen_first = true;
        if tokenizer.clean_spaces {
            self.unclean.extend_from_slice(piece);
            let settled = settled_prefix(&self.unclean);
            self.undecoded
                .extend(clean_spaces(&self.unclean[..settled]));
            self.unclean.drain(..settled);
        } else {
            self.undecoded.extend_from_slice(piece);
        }
        take_utf8(&mut self.undecoded, false)
    }

    /// Ends the stream: returns whatever was held back (an incomplete trailing character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let unclean = std::mem::take(&mut self.unclean);
        self.undecoded.extend(clean_spaces(&unclean));
        take_utf8(&mut self.undecoded, true)
    }
}

/// Decodes a whole sequence.
pub(super) fn decode(tokenizer: &Tokenizer, ids: &[u32], options: DecodeOptions) -> String {
    let mut bytes = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        bytes.extend_from_slice(tokenizer.piece_for_decode(id, options, i == 0));
    }
    if tokenizer.clean_spaces {
        bytes = clean_spaces(&bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The length of the prefix of `raw` that clean-up can no longer change: it must end after three non-space
/// bytes, because every clean-up rule starts at a space and looks at most three bytes past it.
fn settled_prefix(raw: &[u8]) -> usize {
    let mut run = 0;
    let mut settled = 0;
    for (i, &b) in raw.iter().enumerate() {
        run = if b == b' ' { 0 } else { run + 1 };
        if run >= 3 {
            settled = i + 1;
        }
    }
    settled
}

/// llama.cpp's `clean_spaces` passes, in its order:
/// 1. drop a space before `?`, `!`, `.`, `,`;
/// 2. ` ' ` becomes `'`;
/// 3. drop a space before `'s`, `'m`, `'re`, `'ve` (not before `'t`, `'d`, `'ll`).
///
/// Each pass looks at the bytes as they were before it started.
fn clean_spaces(text: &[u8]) -> Vec<u8> {
    let before_punct = keep_filter(text, |t, i| {
        t[i - 1] == b' ' && matches!(t[i], b'?' | b'!' | b'.' | b',')
    });
    let quote = unquote_spaced_apostrophes(&before_punct);
    keep_filter(&quote, |t, i| {
        if t[i - 1] != b' ' || t[i] != b'\'' || i + 1 >= t.len() {
            return false;
        }
        match t[i + 1] {
            b's' | b'm' => true,
            b'r' | b'v' => t.get(i + 2) == Some(&b'e'),
            _ => false,
        }
    })
}

/// Copies `text`, dropping the byte before position `i` (i ≥ 1) whenever `drop_prev(text, i)`.
fn keep_filter(text: &[u8], drop_prev: impl Fn(&[u8], usize) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for i in 0..text.len() {
        if i >= 1 && drop_prev(text, i) {
            out.pop();
        }
        out.push(text[i]);
    }
    out
}

/// Pass 2: ` ' ` → `'`. The space after the apostrophe is consumed, and the byte after it then counts as
/// following a non-space (llama.cpp overwrites the consumed space in place).
fn unquote_spaced_apostrophes(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut prev_is_space = false;
    let mut i = 0;
    while i < text.len() {
        let x = text[i];
        if i >= 1 && x == b'\'' && prev_is_space && text.get(i + 1) == Some(&b' ') {
            out.pop();
            out.push(x);
            i += 2;
            prev_is_space = false;
            continue;
        }
        out.push(x);
        prev_is_space = x == b' ';
        i += 1;
    }
    out
}

/// Removes and returns the longest prefix of `bytes` that is complete UTF-8 (invalid bytes become U+FFFD as
/// in `String::from_utf8_lossy`). An incomplete sequence at the end stays, unless `flush`.
fn take_utf8(bytes: &mut Vec<u8>, flush: bool) -> String {
    let mut out = String::new();
    let mut at = 0;
    while at < bytes.len() {
        match std::str::from_utf8(&bytes[at..]) {
            Ok(s) => {
                out.push_str(s);
                at = bytes.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[at..at + valid]).unwrap_or_default());
                at += valid;
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        at += n;
                    }
                    None if flush => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        at = bytes.len();
                    }
                    None => break,
                }
            }
        }
    }
    bytes.drain(..at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        String::from_utf8(clean_spaces(s.as_bytes())).unwrap()
    }

    #[test]
    fn clean_spaces_follows_llama_cpp_rules() {
        assert_eq!(clean("Hello , world ! Yes ?"), "Hello, world! Yes?");
        assert_eq!(clean("rock ' n roll"), "rock'n roll");
        assert_eq!(clean("it 's I 'm we 're you 've"), "it's I'm we're you've");
        assert_eq!(clean("don 't I 'd we 'll"), "don 't I 'd we 'll");
        assert_eq!(clean(" ."), ".");
        assert_eq!(clean("a ."), "a.");
        assert_eq!(clean(""), "");
    }

    #[test]
    fn clean_spaces_splits_where_settled() {
        let text = "I 'm here , ok ' x 's . done   ' ve ab 're";
        let whole = clean(text);
        for cut in 0..=text.len() {
            let s = settled_prefix(&text.as_bytes()[..cut]);
            let mut pieced = clean_spaces(&text.as_bytes()[..s]);
            pieced.extend(clean_spaces(&text.as_bytes()[s..]));
            assert_eq!(
                String::from_utf8(pieced).unwrap(),
                whole,
                "cut at {cut} settled {s}"
            );
        }
    }

    #[test]
    fn take_utf8_waits_for_whole_characters() {
        let mut b = "a€".as_bytes()[..2].to_vec();
        assert_eq!(take_utf8(&mut b, false), "a");
        b.extend_from_slice(&"€".as_bytes()[1..]);
        assert_eq!(take_utf8(&mut b, false), "€");
        let mut bad = vec![b'x', 0xff, b'y', 0xe2];
        assert_eq!(take_utf8(&mut bad, false), "x\u{fffd}y");
        assert_eq!(take_utf8(&mut bad, true), "\u{fffd}");
    }
}
