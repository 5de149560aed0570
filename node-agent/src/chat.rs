//! Chat templates: a conversation (OpenAI-style messages, optional tools) rendered to the prompt text the
//! model was trained on, with the model's own Jinja template (`tokenizer.chat_template`).
//!
//! Templates are written for Python's `jinja2` as Hugging Face `transformers` sets it up, so the environment
//! here imitates that one: `trim_blocks` and `lstrip_blocks`, Python string/dict methods (`.strip()`,
//! `.startswith()`, `.items()`), `raise_exception`, `strftime_now`, a `tojson` that writes what Python's
//! `json.dumps` writes (`", "` and `": "` separators, no HTML escaping, keys in their given order), and
//! printing of `None` / `True` / lists the way Python's `str()` does. Extra keyword arguments such as
//! `enable_thinking` pass through to the template.

use crate::gguf::{GgufFile, Value as GgufValue};
use crate::tokenizer::Tokenizer;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use thiserror::Error as ThisError;

#[derive(Debug, ThisError)]
pub enum ChatError {
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// The template itself refused the conversation (`raise_exception(..)`), e.g. "No user query found".
    #[error("chat template rejected the conversation: {0}")]
    Rejected(String),
    #[error("chat template failed: {0}")]
    Render(String),
}

/// A compiled chat template with the BOS/EOS texts it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
    /// The tokenizer adds BOS / EOS itself, so a rendered leading BOS / trailing EOS text is dropped.
    tokenizer_adds_bos: bool,
    tokenizer_adds_eos: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// Message content as text: a string, or the text parts of an OpenAI content array.
const CONTENT_TEXT_MACRO: &str = "{%- macro content_text(content) -%}\
{%- if content is string -%}{{ content }}\
{%- elif content is iterable and content is not mapping -%}\
{%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}{%- endif -%}{%- endfor -%}\
{%- elif content is defined and content is not none -%}{{ content }}\
{%- endif -%}\
{%- endmacro -%}";

/// ChatML, for models that ship no template and have no turn format of their own.
const CHATML_BODY: &str = "{%- for message in messages -%}\
{{- '<|im_start|>' + message.role + '\\n' + content_text(message.content) + '<|im_end|>\\n' -}}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

/// Gemma's turn format: roles `user` and `model`, system text folded into the next user turn (Gemma has no
/// system role). BOS is left to the tokenizer (`encode(.., add_special = true, ..)`).
const GEMMA_BODY: &str = "{%- set ns = namespace(system='') -%}\
{%- for message in messages -%}\
{%- if message.role == 'system' -%}{%- set ns.system = ns.system + (content_text(message.content) | trim) + '\\n\\n' -%}\
{%- else -%}\
{%- set role = 'model' if message.role == 'assistant' else message.role -%}\
{{- '<start_of_turn>' + role + '\\n' + ns.system + (content_text(message.content) | trim) + '<end_of_turn>\\n' -}}\
{%- set ns.system = '' -%}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}";

impl ChatTemplate {
    /// Compiles `source`. `bos` and `eos` are the token texts templates see as `bos_token` / `eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            let text = match value.as_str() {
                Some(s) => s.to_string(),
                None => py::str(value),
            };
            out.write_str(&text).map_err(Error::from)
        });
        env.add_filter("tojson", py::tojson_filter);
        env.add_filter("string", |value: Value| -> Value {
            if value.kind() == ValueKind::String {
                value
            } else {
                Value::from(py::str(&value))
            }
        });
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message.clone())
                    .with_source(RaisedByTemplate(message)))
            },
        );
        env.add_function("strftime_now", |format: String| -> Value {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default();
            Value::from(strftime(&format, now))
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ChatError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos: bos.to_string(),
            eos: eos.to_string(),
            tokenizer_adds_bos: false,
            tokenizer_adds_eos: false,
        })
    }

    /// Declares that the prompt will be tokenized with `add_special = true` by a tokenizer that adds BOS / EOS
    /// (`Tokenizer::adds_bos` / `adds_eos`). As llama.cpp does, `render` then drops a BOS text the template put
    /// at the start (Llama 3's and Gemma's templates begin with `{{ bos_token }}`) and an EOS text at the end,
    /// so the prompt does not get them twice.
    pub fn with_tokenizer_adding(mut self, adds_bos: bool, adds_eos: bool) -> ChatTemplate {
        self.tokenizer_adds_bos = adds_bos;
        self.tokenizer_adds_eos = adds_eos;
        self
    }

    /// The template in the GGUF's `tokenizer.chat_template`, or `None` when the file has none.
    pub fn from_gguf(file: &GgufFile) -> Option<Result<ChatTemplate, ChatError>> {
        let meta = &file.metadata;
        let source = match meta.opt_str("tokenizer.chat_template") {
            Ok(Some(source)) => source,
            Ok(None) => return None,
            Err(e) => return Some(Err(ChatError::Syntax(e.to_string()))),
        };
        let token_text = |key: &str| -> String {
            let id = meta.opt_u64(key).ok().flatten();
            let tokens = meta.opt_array("tokenizer.ggml.tokens").ok().flatten();
            match (id, tokens) {
                (Some(id), Some(tokens)) => match tokens.get(id as usize) {
                    Some(GgufValue::String(s)) => s.clone(),
                    _ => String::new(),
                },
                _ => String::new(),
            }
        };
        let bos = token_text("tokenizer.ggml.bos_token_id");
        let eos = token_text("tokenizer.ggml.eos_token_id");
        Some(ChatTemplate::new(source, &bos, &eos))
    }

    /// For a model without a template: Gemma's turn format when the vocabulary has `<start_of_turn>`, else
    /// ChatML.
    pub fn fallback(tokenizer: &Tokenizer) -> ChatTemplate {
        let body = if tokenizer.token_id("<start_of_turn>").is_some() {
            GEMMA_BODY
        } else {
            CHATML_BODY
        };
        let text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or_default()
                .to_string()
        };
        ChatTemplate::new(
            &format!("{CONTENT_TEXT_MACRO}{body}"),
            &text(tokenizer.bos()),
            &text(tokenizer.eos()),
        )
        .expect("the built-in templates compile")
    }

    /// The model's own template, else [`ChatTemplate::fallback`], set up for prompts that `tokenizer` encodes
    /// with `add_special = true` (see [`ChatTemplate::with_tokenizer_adding`]).
    pub fn for_model(file: &GgufFile, tokenizer: &Tokenizer) -> Result<ChatTemplate, ChatError> {
        let template = ChatTemplate::from_gguf(file)
            .unwrap_or_else(|| Ok(ChatTemplate::fallback(tokenizer)))?;
        Ok(template.with_tokenizer_adding(tokenizer.adds_bos(), tokenizer.adds_eos()))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation. `tools` are OpenAI tool objects (`None` renders as Python's `None`, as
    /// `transformers` passes it); `extra` holds further template variables such as `enable_thinking`.
    /// Variables named by the arguments (`messages`, `tools`, `add_generation_prompt`, `bos_token`,
    /// `eos_token`) take precedence over entries of `extra`.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, ChatError> {
        let mut ctx: BTreeMap<String, Value> = extra
            .iter()
            .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
            .collect();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "tools".into(),
            tools.map_or(Value::from(()), Value::from_serialize),
        );
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("bos_token".into(), Value::from(self.bos.as_str()));
        ctx.insert("eos_token".into(), Value::from(self.eos.as_str()));
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Render(describe(&e)))?;
        let mut prompt = template.render(ctx).map_err(|e| match raised_message(&e) {
            Some(message) => ChatError::Rejected(message),
            None => ChatError::Render(describe(&e)),
        })?;
        if self.tokenizer_adds_bos && !self.bos.is_empty() && prompt.starts_with(&self.bos) {
            prompt.drain(..self.bos.len());
        }
        if self.tokenizer_adds_eos && !self.eos.is_empty() && prompt.ends_with(&self.eos) {
            prompt.truncate(prompt.len() - self.eos.len());
        }
        Ok(prompt)
    }
}

/// The error `raise_exception` attaches, so that a refusal by the template can be told from a failure.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

fn raised_message(e: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(raised) = err.downcast_ref::<RaisedByTemplate>() {
            return Some(raised.0.clone());
        }
        source = err.source();
    }
    None
}

/// The error with its template line, without minijinja's multi-line debug dump.
fn describe(e: &Error) -> String {
    let mut text = e.kind().to_string();
    if let Some(detail) = e.detail() {
        let _ = write!(text, ": {detail}");
    }
    if let Some(line) = e.line() {
        let _ = write!(text, " (line {line})");
    }
    text
}

/// `strftime` for a UTC time: `%Y %m %d %e %H %I %M %S %p %y %b %B %a %A %j %Z %z %%`; other directives are
/// kept as written. (Servers run in UTC; templates use it for "today's date" lines.)
fn strftime(format: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{hour12:02}"),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('b') => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            Some('B') => write!(out, "{}", MONTHS[month as usize - 1]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('j') => write!(out, "{day_of_year:03}"),
            Some('Z') => write!(out, "UTC"),
            Some('z') => write!(out, "+0000"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * mp + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Python's renderings of template values: `str()`, `repr()` and `json.dumps()`.
mod py {
    use super::*;

    /// Python's `str(value)`, which is what jinja2 prints for `{{ value }}`.
    pub fn str(value: &Value) -> String {
        match value.kind() {
            ValueKind::Undefined => String::new(),
            ValueKind::String => value.as_str().unwrap_or_default().to_string(),
            _ => repr(value),
        }
    }

    /// Deeper nesting than JSON input can have (serde_json stops at 128) means a structure that contains
    /// itself, which a template can build with a namespace; it is cut off instead of overflowing the stack.
    const MAX_DEPTH: usize = 200;

    /// Python's `repr(value)` for the types JSON and templates produce.
    pub fn repr(value: &Value) -> String {
        repr_at(value, 0)
    }

    fn repr_at(value: &Value, depth: usize) -> String {
        if depth > MAX_DEPTH {
            return "...".into();
        }
        let repr = |v: &Value| repr_at(v, depth + 1);
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => "None".into(),
            ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
            ValueKind::Number => number(value, false),
            ValueKind::String => string_repr(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<String> = match value.try_iter() {
                    Ok(iter) => iter.map(|v| repr(&v)).collect(),
                    Err(_) => Vec::new(),
                };
                format!("[{}]", items.join(", "))
            }
            ValueKind::Map => {
                let items: Vec<String> = map_entries(value)
                    .iter()
                    .map(|(k, v)| format!("{}: {}", repr(k), repr(v)))
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
            _ => value.to_string(),
        }
    }

    fn map_entries(value: &Value) -> Vec<(Value, Value)> {
        match value.try_iter() {
            Ok(keys) => keys
                .map(|k| {
                    let v = value.get_item(&k).unwrap_or_default();
                    (k, v)
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// `repr(str)`: single quotes unless the text has a single quote and no double quote.
    fn string_repr(s: &str) -> String {
        let quote = if s.contains('\'') && !s.contains('"') {
            '"'
        } else {
            '\''
        };
        let mut out = String::with_capacity(s.len() + 2);
        out.push(quote);
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c == quote => {
                    out.push('\\');
                    out.push(c);
                }
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push(quote);
        out
    }

    /// A number as Python prints it; floats in `repr` form (`1.0`, `1e-05`, `1e+16`), or JSON's `NaN` /
    /// `Infinity` spellings when `json`.
    fn number(value: &Value, json: bool) -> String {
        if value.is_integer() {
            return value.to_string();
        }
        let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
        if f.is_nan() {
            return if json { "NaN" } else { "nan" }.into();
        }
        if f.is_infinite() {
            let s = if json { "Infinity" } else { "inf" };
            return if f < 0.0 { format!("-{s}") } else { s.into() };
        }
        float_repr(f)
    }

    /// Python's float `repr`: the shortest round-tripping digits, in positional form for exponents -4..16.
    pub(super) fn float_repr(f: f64) -> String {
        let sci = format!("{f:e}"); // e.g. "1.5e-7", "-3e10"
        let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        if f == 0.0 || (-4..16).contains(&exp) {
            let plain = format!("{f}");
            if plain.contains('.') {
                plain
            } else {
                format!("{plain}.0")
            }
        } else {
            let sign = if exp < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", exp.abs())
        }
    }

    struct JsonStyle {
        ensure_ascii: bool,
        indent: Option<String>,
        item_sep: String,
        key_sep: String,
        sort_keys: bool,
    }

    /// `tojson` as `transformers` defines it: `json.dumps(value, ensure_ascii=False, indent=None,
    /// separators=None, sort_keys=False)`, the four also accepted positionally in that order.
    pub fn tojson_filter(
        value: Value,
        args: minijinja::value::Rest<Value>,
        kwargs: Kwargs,
    ) -> Result<Value, Error> {
        let positional = |i: usize| args.get(i).cloned();
        let named =
            |key: &str| -> Result<Option<Value>, Error> { kwargs.get::<Option<Value>>(key) };
        let ensure_ascii = named("ensure_ascii")?
            .or(positional(0))
            .is_some_and(|v| v.is_true());
        let indent = match named("indent")?.or(positional(1)) {
            Some(v) if v.is_none() || v.is_undefined() => None,
            Some(v) if v.kind() == ValueKind::String => {
                Some(v.as_str().unwrap_or_default().to_string())
            }
            Some(v) => Some(" ".repeat(v.as_usize().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                )
            })?)),
            None => None,
        };
        let (item_sep, key_sep) = match named("separators")?.or(positional(2)) {
            Some(v) if !v.is_none() && !v.is_undefined() => {
                let part = |i: usize| -> Result<String, Error> {
                    v.get_item_by_index(i)?
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::InvalidOperation,
                                "tojson: separators must be two strings",
                            )
                        })
                };
                (part(0)?, part(1)?)
            }
            _ if indent.is_some() => (",".to_string(), ": ".to_string()),
            _ => (", ".to_string(), ": ".to_string()),
        };
        let sort_keys = named("sort_keys")?
            .or(positional(3))
            .is_some_and(|v| v.is_true());
        kwargs.assert_all_used()?;
        let style = JsonStyle {
            ensure_ascii,
            indent,
            item_sep,
            key_sep,
            sort_keys,
        };
        let mut out = String::new();
        write_json(&mut out, &value, &style, 0)?;
        Ok(Value::from(out))
    }

    fn write_json(
        out: &mut String,
        value: &Value,
        style: &JsonStyle,
        depth: usize,
    ) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: value nests too deeply (does it contain itself?)",
            ));
        }
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&number(value, true)),
            ValueKind::String => {
                json_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii)
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                write_container(out, '[', ']', &items, style, depth, |out, item, depth| {
                    write_json(out, item, style, depth)
                })?;
            }
            ValueKind::Map => {
                let mut entries = map_entries(value);
                let key_text = |k: &Value| match k.as_str() {
                    Some(s) => s.to_string(),
                    None => str(k),
                };
                if style.sort_keys {
                    entries.sort_by_key(|(k, _)| key_text(k));
                }
                write_container(
                    out,
                    '{',
                    '}',
                    &entries,
                    style,
                    depth,
                    |out, (k, v), depth| {
                        json_string(out, &key_text(k), style.ensure_ascii);
                        out.push_str(&style.key_sep);
                        write_json(out, v, style, depth)
                    },
                )?;
            }
            ValueKind::Undefined => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: value is undefined",
                ));
            }
            _ => json_string(out, &value.to_string(), style.ensure_ascii),
        }
        Ok(())
    }

    fn write_container<T>(
        out: &mut String,
        open: char,
        close: char,
        items: &[T],
        style: &JsonStyle,
        depth: usize,
        mut write_item: impl FnMut(&mut String, &T, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&style.item_sep);
            }
            if let Some(indent) = &style.indent {
                out.push('\n');
                out.push_str(&indent.repeat(depth + 1));
            }
            write_item(out, item, depth + 1)?;
        }
        if let Some(indent) = &style.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
        out.push(close);
        Ok(())
    }

    fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if ensure_ascii && !c.is_ascii() => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(source: &str, messages: serde_json::Value) -> Result<String, ChatError> {
        let t = ChatTemplate::new(source, "<s>", "</s>")?;
        t.render(
            messages.as_array().unwrap(),
            None,
            true,
            &serde_json::Map::new(),
        )
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let messages =
            json!([{"z": 1, "a": [1.5, -3e10, 1e16, 0.0001, 1e-5, true, null], "é": "\"<&>'\n"}]);
        let out = render("{{ messages[0] | tojson }}", messages.clone()).unwrap();
        assert_eq!(
            out,
            r#"{"z": 1, "a": [1.5, -30000000000.0, 1e+16, 0.0001, 1e-05, true, null], "é": "\"<&>'\n"}"#
        );
        let out = render(
            "{{ messages[0].a[:2] | tojson(indent=2) }}",
            messages.clone(),
        )
        .unwrap();
        assert_eq!(out, "[\n  1.5,\n  -30000000000.0\n]");
        let out = render(
            "{{ messages[0] | tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }}",
            messages,
        )
        .unwrap();
        assert!(
            out.starts_with(r#"{"a":[1.5,"#) && out.ends_with(r#""z":1,"\u00e9":"\"<&>'\n"}"#),
            "{out}"
        );
    }

    #[test]
    fn values_print_like_python_str() {
        let messages = json!([{"n": null, "t": true, "f": 1.0, "l": ["a", "it's", 2, false], "m": {"k": null}}]);
        let out = render(
            "{{ messages[0].n }}|{{ messages[0].t }}|{{ messages[0].f }}|{{ messages[0].l }}|{{ messages[0].m }}|{{ messages[0].t | string }}|{{ messages[0].missing }}",
            messages,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"None|True|1.0|['a', "it's", 2, False]|{'k': None}|True|"#
        );
    }

    #[test]
    fn raise_exception_is_a_rejection_and_bad_templates_are_errors() {
        let e = render(
            "{{ raise_exception('No user query found in messages.') }}",
            json!([]),
        )
        .unwrap_err();
        assert!(
            matches!(&e, ChatError::Rejected(m) if m == "No user query found in messages."),
            "{e}"
        );
        let e = ChatTemplate::new("{% if %}", "", "").unwrap_err();
        assert!(matches!(e, ChatError::Syntax(_)), "{e}");
        let e = render(
            "{{ messages[0].content.nosuchmethod() }}",
            json!([{"content": "x"}]),
        )
        .unwrap_err();
        assert!(matches!(e, ChatError::Render(_)), "{e}");
        let e = render("{{ messages[0] + 1 }}", json!([{"content": "x"}])).unwrap_err();
        assert!(matches!(e, ChatError::Render(_)), "{e}");
    }

    #[test]
    fn bos_and_eos_the_tokenizer_adds_are_not_rendered_twice() {
        let source = "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}";
        let messages = [json!({"content": "hi"})];
        let no_extra = serde_json::Map::new();
        let t = ChatTemplate::new(source, "<bos>", "<eos>").unwrap();
        assert_eq!(
            t.render(&messages, None, false, &no_extra).unwrap(),
            "<bos>hi<eos>"
        );
        let t = t.with_tokenizer_adding(true, false);
        assert_eq!(
            t.render(&messages, None, false, &no_extra).unwrap(),
            "hi<eos>"
        );
        let t = t.with_tokenizer_adding(true, true);
        assert_eq!(t.render(&messages, None, false, &no_extra).unwrap(), "hi");
    }

    #[test]
    fn self_containing_values_do_not_overflow_the_stack() {
        let source = "{% set ns = namespace(a=1) %}{% set ns.me = ns %}";
        let out = render(&format!("{source}{{{{ ns }}}}"), json!([])).unwrap();
        assert!(out.contains("..."), "{out}");
        let e = render(&format!("{source}{{{{ ns | tojson }}}}"), json!([])).unwrap_err();
        assert!(matches!(e, ChatError::Render(_)), "{e}");
    }

    #[test]
    fn templates_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<ChatTemplate>();
        shareable::<Tokenizer>();
    }

    #[test]
    fn python_string_methods_and_extra_variables_work() {
        let t = ChatTemplate::new(
            "{{ messages[0].content.split('</think>')[-1].lstrip('\\n').upper() }}{% if enable_thinking is false %}!{% endif %}{{ bos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert("enable_thinking".into(), json!(false));
        let out = t
            .render(
                &[json!({"content": "<think>x</think>\n\nhi"})],
                None,
                false,
                &extra,
            )
            .unwrap();
        assert_eq!(out, "HI!<s>");
    }

    #[test]
    fn strftime_formats_utc_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60 of a leap year.
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(
            strftime("%d %b %Y, %A %j %I%p %% %q", t),
            "29 Feb 2024, Thursday 060 01PM % %q"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert_eq!(strftime("%Y-%m-%d", -86_400), "1969-12-31");
    }

    #[test]
    fn float_repr_matches_python() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-7, "1.5e-07"),
            (123456789.0, "123456789.0"),
            (-0.0001, "-0.0001"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(py::float_repr(f), want);
        }
    }
}
