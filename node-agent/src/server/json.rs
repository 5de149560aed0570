//! A byte-level JSON prefix checker used to constrain sampling: `response_format: {"type":"json_object"}`
//! and forced tool calls. Each candidate token's bytes are fed to a copy of the state; a token that would
//! make the text an invalid JSON prefix is masked out. Generation ends when the top-level object closes.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Obj {
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,`: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After `:`: a value.
    Value,
    /// After a value: `,` or `}`.
    CommaOrEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arr {
    ValueOrEnd,
    Value,
    CommaOrEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    Obj(Obj),
    Arr(Arr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scalar {
    None,
    /// Inside a string; `esc`: 0 plain, 1 after `\`, 2..=5 hex digits of `\u` still due.
    Str {
        key: bool,
        esc: u8,
    },
    Num(Num),
    Lit {
        word: &'static [u8],
        at: u8,
    },
}

/// Most nesting accepted. Whitespace between tokens is one space at a most: compact JSON, so a small
/// model cannot spend its tokens on newlines and indentation.
const MAX_DEPTH: usize = 16;
const MAX_WS_RUN: usize = 1;

#[derive(Clone, Debug)]
pub struct JsonState {
    stack: Vec<Frame>,
    scalar: Scalar,
    started: bool,
    done: bool,
    ws_run: usize,
}

impl Default for JsonState {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonState {
    /// Expects one JSON object.
    pub fn new() -> Self {
        JsonState {
            stack: Vec::new(),
            scalar: Scalar::None,
            started: false,
            done: false,
            ws_run: 0,
        }
    }

    /// The top-level object is complete.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Feeds bytes; false (and the state is then meaningless) when they cannot continue valid JSON.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.byte(b))
    }

    /// Whether `bytes` would keep the text a valid prefix (the state is not changed).
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return false;
        }
        self.clone().feed(bytes)
    }

    fn value_done(&mut self) {
        match self.stack.last_mut() {
            None => self.done = true,
            Some(Frame::Obj(s)) => *s = Obj::CommaOrEnd,
            Some(Frame::Arr(s)) => *s = Arr::CommaOrEnd,
        }
    }

    fn byte(&mut self, b: u8) -> bool {
        match self.scalar {
            Scalar::Str { key, esc } => return self.string_byte(b, key, esc),
            Scalar::Lit { word, at } => {
                if word.get(at as usize) != Some(&b) {
                    return false;
                }
                if at as usize + 1 == word.len() {
                    self.scalar = Scalar::None;
                    self.value_done();
                } else {
                    self.scalar = Scalar::Lit { word, at: at + 1 };
                }
                return true;
            }
            Scalar::Num(n) => {
                if let Some(next) = num_step(n, b) {
                    self.scalar = Scalar::Num(next);
                    return true;
                }
                if !matches!(n, Num::Zero | Num::Int | Num::Frac | Num::Exp) {
                    return false;
                }
                self.scalar = Scalar::None;
                self.value_done();
                // The byte that ended the number belongs to the structure around it.
            }
            Scalar::None => {}
        }
        if b == b' ' {
            self.ws_run += 1;
            return self.ws_run <= MAX_WS_RUN;
        }
        self.ws_run = 0;
        if self.done {
            return false;
        }
        if !self.started {
            // The top level must be an object.
            if b != b'{' {
                return false;
            }
            self.started = true;
            self.stack.push(Frame::Obj(Obj::KeyOrEnd));
            return true;
        }
        let Some(top) = self.stack.last().copied() else {
            return false;
        };
        match top {
            Frame::Obj(Obj::KeyOrEnd) | Frame::Obj(Obj::Key) => {
                if b == b'"' {
                    self.scalar = Scalar::Str { key: true, esc: 0 };
                    true
                } else if b == b'}' && top == Frame::Obj(Obj::KeyOrEnd) {
                    self.stack.pop();
                    self.value_done();
                    true
                } else {
                    false
                }
            }
            Frame::Obj(Obj::Colon) => {
                if b == b':' {
                    self.set_top(Frame::Obj(Obj::Value));
                    true
                } else {
                    false
                }
            }
            Frame::Obj(Obj::CommaOrEnd) | Frame::Arr(Arr::CommaOrEnd) => match (top, b) {
                (Frame::Obj(_), b',') => {
                    self.set_top(Frame::Obj(Obj::Key));
                    true
                }
                (Frame::Arr(_), b',') => {
                    self.set_top(Frame::Arr(Arr::Value));
                    true
                }
                (Frame::Obj(_), b'}') | (Frame::Arr(_), b']') => {
                    self.stack.pop();
                    self.value_done();
                    true
                }
                _ => false,
            },
            Frame::Arr(Arr::ValueOrEnd) if b == b']' => {
                self.stack.pop();
                self.value_done();
                true
            }
            Frame::Obj(Obj::Value) | Frame::Arr(_) => self.value_start(b),
        }
    }

    fn set_top(&mut self, f: Frame) {
        if let Some(t) = self.stack.last_mut() {
            *t = f;
        }
    }

    fn value_start(&mut self, b: u8) -> bool {
        match b {
            b'{' | b'[' => {
                if self.stack.len() >= MAX_DEPTH {
                    return false;
                }
                self.stack.push(if b == b'{' {
                    Frame::Obj(Obj::KeyOrEnd)
                } else {
                    Frame::Arr(Arr::ValueOrEnd)
                });
                true
            }
            b'"' => {
                self.scalar = Scalar::Str { key: false, esc: 0 };
                true
            }
            b'-' => {
                self.scalar = Scalar::Num(Num::Minus);
                true
            }
            b'0' => {
                self.scalar = Scalar::Num(Num::Zero);
                true
            }
            b'1'..=b'9' => {
                self.scalar = Scalar::Num(Num::Int);
                true
            }
            b't' | b'f' | b'n' => {
                let word: &'static [u8] = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.scalar = Scalar::Lit { word, at: 1 };
                true
            }
            _ => false,
        }
    }

    fn string_byte(&mut self, b: u8, key: bool, esc: u8) -> bool {
        match esc {
            0 => match b {
                b'"' => {
                    self.scalar = Scalar::None;
                    if key {
                        self.set_top(Frame::Obj(Obj::Colon));
                    } else {
                        self.value_done();
                    }
                    true
                }
                b'\\' => {
                    self.scalar = Scalar::Str { key, esc: 1 };
                    true
                }
                0..=0x1f => false,
                _ => true,
            },
            1 => {
                let next = match b {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 0,
                    b'u' => 5,
                    _ => return false,
                };
                self.scalar = Scalar::Str { key, esc: next };
                true
            }
            n => {
                if !b.is_ascii_hexdigit() {
                    return false;
                }
                self.scalar = Scalar::Str {
                    key,
                    esc: if n == 2 { 0 } else { n - 1 },
                };
                true
            }
        }
    }
}

fn num_step(n: Num, b: u8) -> Option<Num> {
    use Num::*;
    Some(match (n, b) {
        (Minus, b'0') => Zero,
        (Minus, b'1'..=b'9') => Int,
        (Int, b'0'..=b'9') => Int,
        (Zero | Int, b'.') => Dot,
        (Zero | Int | Frac, b'e' | b'E') => E,
        (Dot | Frac, b'0'..=b'9') => Frac,
        (E, b'+' | b'-') => ESign,
        (E | ESign | Exp, b'0'..=b'9') => Exp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (bool, bool) {
        let mut st = JsonState::new();
        let valid = st.feed(s.as_bytes());
        (valid, valid && st.done())
    }

    #[test]
    fn complete_objects() {
        for s in [
            "{}",
            r#"{"a": 1}"#,
            r#" {"a": [1, -2.5e+3, true, false, null, "x\"\u00e9"], "b": {"c": {}}}"#,
            r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":{"j":{}}}}}}}}}}}"#,
            "{\"é\": \"日本\"}",
            r#"{"a":0,"b":[],"c":[[]]}"#,
        ] {
            assert_eq!(ok(s), (true, true), "{s}");
        }
    }

    #[test]
    fn valid_prefixes_are_not_done() {
        for s in [
            "{",
            r#"{"a"#,
            r#"{"a": [1, "#,
            r#"{"a": tr"#,
            r#"{"a": 12"#,
            r#"{"a": "\u00"#,
        ] {
            assert_eq!(ok(s), (true, false), "{s}");
        }
    }

    #[test]
    fn invalid_text_is_rejected() {
        for s in [
            "[1]",
            "x",
            "{a",
            r#"{"a" 1}"#,
            r#"{"a": 01}"#,
            r#"{"a": tru }"#,
            "{,}",
            r#"{"a": 1,}"#,
            r#"{"a": "\q"}"#,
            "{\"a\": \"\n\"}",
            "{} x",
            r#"{"a": 1.}"#,
            r#"{"a": -}"#,
        ] {
            assert!(!ok(s).0, "{s}");
        }
    }

    #[test]
    fn number_ends_at_structure() {
        let mut st = JsonState::new();
        assert!(st.feed(br#"{"a": 5"#));
        assert!(st.accepts(b"}"));
        assert!(st.accepts(b"0, \"b\": 1}"));
        assert!(!st.accepts(b"x"));
        assert!(st.feed(b"}"));
        assert!(st.done());
        assert!(st.accepts(b" "));
        assert!(!st.accepts(b"{"));
    }

    #[test]
    fn whitespace_runs_are_bounded() {
        let mut st = JsonState::new();
        assert!(st.feed(b"{"));
        assert!(!st.accepts(&[b' '; 2]));
        assert!(!st.accepts(b"\n"));
        assert!(st.accepts(b" "));
    }

    #[test]
    fn empty_token_is_not_accepted() {
        assert!(!JsonState::new().accepts(b""));
    }
}
