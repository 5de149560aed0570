//! Response bodies: whole chat/text completions and the chunks of a stream, as OpenAI sends them
//! (`chat.completion`, `chat.completion.chunk`, `text_completion`), plus `usage` and llama-server's
//! `timings`.

use super::scheduler::{Finish, Summary};
use super::tools::{Delta, ToolCall};
use serde_json::{json, Value};

pub fn fingerprint() -> String {
    format!("kiln-{}", env!("CARGO_PKG_VERSION"))
}

pub fn finish_reason(finish: Finish, tool_calls: bool) -> &'static str {
    if tool_calls {
        "tool_calls"
    } else {
        match finish {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

pub fn usage(s: &Summary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
    })
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// llama-server's `timings`: prompt tokens computed (`prompt_n`, cached ones excluded) and `cache_n`,
/// prefill and decode speeds.
pub fn timings(s: &Summary) -> Value {
    let computed = s.prompt_tokens - s.cached_tokens;
    // The first generated token comes from the prefill's logits: decode time covers the rest.
    let decoded = s.completion_tokens.saturating_sub(1);
    json!({
        "prompt_n": computed,
        "cache_n": s.cached_tokens,
        "prompt_ms": s.prefill_ms,
        "prompt_per_second": per_second(computed, s.prefill_ms),
        "predicted_n": s.completion_tokens,
        "predicted_ms": s.decode_ms,
        "predicted_per_second": per_second(decoded, s.decode_ms),
        "queue_ms": s.queue_ms,
    })
}

pub fn tool_call_json(index: Option<usize>, c: &ToolCall) -> Value {
    let mut v = json!({
        "id": c.id,
        "type": "function",
        "function": {"name": c.name, "arguments": c.arguments},
    });
    if let Some(i) = index {
        v["index"] = json!(i);
    }
    v
}

pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

pub fn chat_message(reasoning: &str, content: &str, calls: &[ToolCall]) -> Value {
    let mut m = json!({"role": "assistant"});
    m["content"] = if content.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        json!(content)
    };
    if !reasoning.is_empty() {
        m["reasoning_content"] = json!(reasoning);
    }
    if !calls.is_empty() {
        m["tool_calls"] = calls.iter().map(|c| tool_call_json(None, c)).collect();
    }
    m
}

pub fn chat_completion(meta: &Meta, message: Value, finish: &str, s: &Summary) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": fingerprint(),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": usage(s),
        "timings": timings(s),
    })
}

pub fn chat_chunk(meta: &Meta, delta: Value, finish: Option<&str>, with_usage: bool) -> Value {
    let mut c = json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": fingerprint(),
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if with_usage {
        c["usage"] = Value::Null;
    }
    c
}

/// The extra last chunk of `stream_options.include_usage`: no choices, the usage.
pub fn usage_chunk(meta: &Meta, object: &str, s: &Summary) -> Value {
    json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": fingerprint(),
        "choices": [],
        "usage": usage(s),
        "timings": timings(s),
    })
}

/// A stream delta for one parsed piece; `tool_index` counts the calls sent so far.
pub fn delta_json(d: &Delta, tool_index: &mut usize) -> Value {
    match d {
        Delta::Content(t) => json!({"content": t}),
        Delta::Reasoning(t) => json!({"reasoning_content": t}),
        Delta::ToolCall(c) => {
            let v = json!({"tool_calls": [tool_call_json(Some(*tool_index), c)]});
            *tool_index += 1;
            v
        }
    }
}

pub fn text_completion(meta: &Meta, text: &str, finish: &str, s: &Summary) -> Value {
    json!({
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": fingerprint(),
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
        "usage": usage(s),
        "timings": timings(s),
    })
}

pub fn text_chunk(meta: &Meta, text: &str, finish: Option<&str>, with_usage: bool) -> Value {
    let mut c = json!({
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": fingerprint(),
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
    });
    if with_usage {
        c["usage"] = Value::Null;
    }
    c
}
