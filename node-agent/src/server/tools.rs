//! The model's output split into what OpenAI clients expect: `reasoning_content` (`<think>…</think>`),
//! `content`, and `tool_calls` parsed from the Qwen/Hermes native format
//! `<tool_call>{"name": …, "arguments": {…}}</tool_call>`. Works incrementally: text arrives in pieces
//! (a tag may be split across tokens) and comes out as deltas as soon as it is unambiguous.

use serde_json::Value;

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TOOL_OPEN: &str = "<tool_call>";
const TOOL_CLOSE: &str = "</tool_call>";

#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    Reasoning(String),
    Content(String),
    ToolCall(ToolCall),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON string, as OpenAI sends them.
    pub arguments: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Content,
    Think,
    Tool,
}

pub struct OutputParser {
    parse_tools: bool,
    mode: Mode,
    buf: String,
    /// Nothing but whitespace seen yet (a `<think>` block is only recognised at the start).
    at_start: bool,
    /// Drop the whitespace that follows `</think>` / `</tool_call>`.
    trim_next: bool,
    n_calls: usize,
    id_prefix: String,
}

/// `call_` + 24 random alphanumerics, like OpenAI's ids.
pub fn new_call_id() -> String {
    random_id("call_", 24)
}

pub fn random_id(prefix: &str, n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let mut s = String::from(prefix);
    for _ in 0..n {
        s.push(CHARS[rng.random_range(0..CHARS.len())] as char);
    }
    s
}

/// Parses the body of one tool call: `{"name": "...", "arguments": {...}}` (arguments may also be a JSON
/// string, or be called `parameters`). Trailing text after the object is ignored.
pub fn parse_call_body(body: &str) -> Option<(String, String)> {
    let mut it = serde_json::Deserializer::from_str(body.trim()).into_iter::<Value>();
    let v = it.next()?.ok()?;
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?.to_string();
    if name.is_empty() {
        return None;
    }
    let args = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => {
            // A string holding JSON is passed through; anything else is wrapped as a JSON string.
            if serde_json::from_str::<Value>(s).is_ok() {
                s.clone()
            } else {
                Value::String(s.clone()).to_string()
            }
        }
        Some(other) => other.to_string(),
    };
    Some((name, args))
}

impl OutputParser {
    /// `parse_tools`: look for `<tool_call>` blocks. `thinking_open`: the prompt already opened a
    /// `<think>` block, so output starts as reasoning.
    pub fn new(parse_tools: bool, thinking_open: bool) -> Self {
        OutputParser {
            parse_tools,
            mode: if thinking_open {
                Mode::Think
            } else {
                Mode::Content
            },
            buf: String::new(),
            at_start: true,
            trim_next: false,
            n_calls: 0,
            id_prefix: String::new(),
        }
    }

    /// Fixed call ids (`<prefix>0`, `<prefix>1`, …) instead of random ones: for tests.
    pub fn with_id_prefix(mut self, prefix: &str) -> Self {
        self.id_prefix = prefix.to_string();
        self
    }

    fn call_id(&mut self) -> String {
        let id = if self.id_prefix.is_empty() {
            new_call_id()
        } else {
            format!("{}{}", self.id_prefix, self.n_calls)
        };
        self.n_calls += 1;
        id
    }

    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        self.drain(&mut out, false);
        out
    }

    pub fn finish(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        self.drain(&mut out, true);
        out
    }

    fn emit(&mut self, out: &mut Vec<Delta>, mode: Mode, mut text: &str) {
        if self.trim_next {
            text = text.trim_start();
            if text.is_empty() {
                return;
            }
            self.trim_next = false;
        }
        if text.is_empty() {
            return;
        }
        if !text.trim().is_empty() {
            self.at_start = false;
        }
        let s = text.to_string();
        match (mode, out.last_mut()) {
            (Mode::Think, Some(Delta::Reasoning(r))) => r.push_str(&s),
            (Mode::Content, Some(Delta::Content(c))) => c.push_str(&s),
            (Mode::Think, _) => out.push(Delta::Reasoning(s)),
            _ => out.push(Delta::Content(s)),
        }
    }

    fn drain(&mut self, out: &mut Vec<Delta>, eof: bool) {
        loop {
            match self.mode {
                Mode::Content => {
                    let mut tags: Vec<&str> = Vec::new();
                    if self.parse_tools {
                        tags.push(TOOL_OPEN);
                    }
                    if self.at_start {
                        tags.push(THINK_OPEN);
                    }
                    match find_first(&self.buf, &tags) {
                        Some((at, tag)) => {
                            let before = self.buf[..at].to_string();
                            let leading_ws = before.trim().is_empty();
                            if tag == THINK_OPEN && !leading_ws {
                                // Not at the start after all: plain text.
                                self.at_start = false;
                                continue;
                            }
                            if tag == TOOL_OPEN && leading_ws {
                                // Whitespace before a tool call is not content.
                            } else {
                                self.emit(out, Mode::Content, &before);
                            }
                            self.buf.drain(..at + tag.len());
                            self.mode = if tag == THINK_OPEN {
                                self.at_start = false;
                                self.trim_next = true;
                                Mode::Think
                            } else {
                                Mode::Tool
                            };
                        }
                        None => {
                            let hold = if eof {
                                0
                            } else {
                                partial_tag(&self.buf, &tags)
                            };
                            let cut = self.buf.len() - hold;
                            // Whitespace alone may still precede a tag: keep it back.
                            let chunk = self.buf[..cut].to_string();
                            if !eof && self.parse_tools && chunk.trim().is_empty() {
                                return;
                            }
                            self.emit(out, Mode::Content, &chunk);
                            self.buf.drain(..cut);
                            return;
                        }
                    }
                }
                Mode::Think => match self.buf.find(THINK_CLOSE) {
                    Some(at) => {
                        let text = self.buf[..at].to_string();
                        self.emit(out, Mode::Think, text.trim_end());
                        self.buf.drain(..at + THINK_CLOSE.len());
                        self.mode = Mode::Content;
                        self.trim_next = true;
                        self.at_start = false;
                    }
                    None => {
                        let hold = if eof {
                            0
                        } else {
                            partial_tag(&self.buf, &[THINK_CLOSE])
                        };
                        let mut cut = self.buf.len() - hold;
                        if !eof {
                            // Whitespace may be the end of the block: wait for what follows.
                            cut = self.buf[..cut].trim_end().len();
                        }
                        let text = self.buf[..cut].to_string();
                        self.emit(out, Mode::Think, &text);
                        self.buf.drain(..cut);
                        return;
                    }
                },
                Mode::Tool => match self.buf.find(TOOL_CLOSE) {
                    Some(at) => {
                        let body = self.buf[..at].to_string();
                        self.buf.drain(..at + TOOL_CLOSE.len());
                        self.mode = Mode::Content;
                        self.trim_next = true;
                        self.tool_call(out, &body);
                    }
                    None => {
                        if eof {
                            // Unterminated: a complete JSON call still counts (the model stopped right
                            // after the object, or a stop string cut the closing tag).
                            let body = std::mem::take(&mut self.buf);
                            self.mode = Mode::Content;
                            self.tool_call(out, &body);
                        }
                        return;
                    }
                },
            }
        }
    }

    fn tool_call(&mut self, out: &mut Vec<Delta>, body: &str) {
        match parse_call_body(body) {
            Some((name, arguments)) => {
                let id = self.call_id();
                self.at_start = false;
                out.push(Delta::ToolCall(ToolCall {
                    id,
                    name,
                    arguments,
                }));
            }
            None => {
                // Not a call we can read: give the text back as content rather than lose it.
                let text = format!("{TOOL_OPEN}{body}");
                self.trim_next = false;
                self.emit(out, Mode::Content, &text);
            }
        }
    }
}

fn find_first<'a>(hay: &str, tags: &[&'a str]) -> Option<(usize, &'a str)> {
    tags.iter()
        .filter_map(|t| hay.find(t).map(|at| (at, *t)))
        .min_by_key(|(at, _)| *at)
}

/// Length of the longest suffix of `hay` that is a proper prefix of one of `tags`.
fn partial_tag(hay: &str, tags: &[&str]) -> usize {
    let mut best = 0;
    for t in tags {
        for n in (1..t.len().min(hay.len() + 1)).rev() {
            if n <= best {
                break;
            }
            let start = hay.len() - n;
            if hay.is_char_boundary(start) && t.starts_with(&hay[start..]) {
                best = n;
                break;
            }
        }
    }
    best
}

/// Joins deltas of one kind: for non-streaming responses.
pub struct Collected {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

pub fn collect(deltas: impl IntoIterator<Item = Delta>) -> Collected {
    let mut c = Collected {
        reasoning: String::new(),
        content: String::new(),
        tool_calls: Vec::new(),
    };
    for d in deltas {
        match d {
            Delta::Reasoning(r) => c.reasoning.push_str(&r),
            Delta::Content(t) => c.content.push_str(&t),
            Delta::ToolCall(t) => c.tool_calls.push(t),
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `n` bytes (on char boundaries) and collects the result.
    fn parse(text: &str, n: usize, tools: bool, think_open: bool) -> Collected {
        let mut p = OutputParser::new(tools, think_open).with_id_prefix("call_");
        let mut deltas = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = n.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            deltas.extend(p.push(&rest[..cut]));
            rest = &rest[cut..];
        }
        deltas.extend(p.finish());
        collect(deltas)
    }

    const CALL: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    #[test]
    fn one_tool_call_any_chunking() {
        for n in 1..12 {
            let c = parse(CALL, n, true, false);
            assert_eq!(c.content, "", "chunk {n}");
            assert_eq!(c.tool_calls.len(), 1, "chunk {n}");
            assert_eq!(c.tool_calls[0].name, "get_weather");
            assert_eq!(c.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
            assert_eq!(c.tool_calls[0].id, "call_0");
        }
    }

    #[test]
    fn content_then_two_calls() {
        let text = format!(
            "Let me check.\n{CALL}\n<tool_call>{{\"name\":\"time\",\"arguments\":\"{{\\\"tz\\\":\\\"UTC\\\"}}\"}}</tool_call>"
        );
        for n in [1, 3, 7, 100] {
            let c = parse(&text, n, true, false);
            assert_eq!(c.content.trim(), "Let me check.");
            assert_eq!(c.tool_calls.len(), 2);
            assert_eq!(c.tool_calls[1].name, "time");
            assert_eq!(c.tool_calls[1].arguments, r#"{"tz":"UTC"}"#);
            assert_eq!(c.tool_calls[1].id, "call_1");
        }
    }

    #[test]
    fn tags_ignored_without_tools() {
        let c = parse(CALL, 4, false, false);
        assert_eq!(c.content, CALL);
        assert!(c.tool_calls.is_empty());
    }

    #[test]
    fn unterminated_call_with_complete_json_counts() {
        let c = parse(
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}",
            5,
            true,
            false,
        );
        assert_eq!(c.tool_calls.len(), 1);
        assert_eq!(c.tool_calls[0].arguments, "{}");
    }

    #[test]
    fn broken_call_becomes_content() {
        let c = parse("<tool_call>not json</tool_call> ok", 3, true, false);
        assert!(c.tool_calls.is_empty());
        assert!(c.content.contains("not json"), "{}", c.content);
    }

    #[test]
    fn partial_tag_lookalike_is_content() {
        let c = parse("a <tool or <think> b", 2, true, false);
        assert_eq!(c.content, "a <tool or <think> b");
    }

    #[test]
    fn think_block_goes_to_reasoning() {
        for n in [1, 2, 5, 64] {
            let c = parse(
                "<think>\nstep 1\n</think>\n\nThe answer is 4.",
                n,
                false,
                false,
            );
            assert_eq!(c.reasoning, "step 1");
            assert_eq!(c.content, "The answer is 4.");
        }
    }

    #[test]
    fn think_opened_by_the_prompt() {
        let c = parse("hmm\n</think>\nDone", 3, true, true);
        assert_eq!(c.reasoning, "hmm");
        assert_eq!(c.content, "Done");
    }

    #[test]
    fn think_then_tool_call() {
        let c = parse(&format!("<think>plan</think>\n{CALL}"), 4, true, false);
        assert_eq!(c.reasoning, "plan");
        assert_eq!(c.content, "");
        assert_eq!(c.tool_calls.len(), 1);
    }

    #[test]
    fn unicode_content_survives_byte_chunking() {
        let c = parse("Привет, 世界 <tool_call", 1, true, false);
        assert_eq!(c.content, "Привет, 世界 <tool_call");
    }
}
