//! From an OpenAI chat request to the prompt text: messages checked and normalised, tools and
//! `tool_choice`, thinking on/off (`chat_template_kwargs.enable_thinking`, `reasoning_effort`, the server
//! default), the model's chat template, and what the output must look like (free text, one JSON object,
//! a forced tool call).

use super::error::ApiError;
use super::json::JsonState;
use super::types::{content_text, ChatRequest};
use crate::chat::{ChatError, ChatTemplate};
use serde_json::{json, Map, Value};

/// How the generated text is turned into a response.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Text, with `<think>` and (when `parse_tools`) `<tool_call>` blocks split out.
    Free { parse_tools: bool },
    /// `response_format` json_object: constrained to one JSON object.
    Json,
    /// `tool_choice` required / named: the prompt ends with `<tool_call>\n` + `prefix`, and the output is
    /// constrained to complete the JSON object `{"name": …, "arguments": …}` that `prefix` starts.
    Tool { prefix: String },
}

pub struct ChatPlan {
    pub prompt: String,
    pub thinking: bool,
    /// The prompt leaves a `<think>` block open: the output starts as reasoning.
    pub thinking_open: bool,
    pub output: Output,
}

impl ChatPlan {
    /// The JSON constraint for the engine, primed with any forced prefix.
    pub fn json_state(&self) -> Option<JsonState> {
        match &self.output {
            Output::Free { .. } => None,
            Output::Json => Some(JsonState::new()),
            Output::Tool { prefix } => {
                let mut s = JsonState::new();
                s.feed(prefix.as_bytes());
                Some(s)
            }
        }
    }
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// Hermes / Qwen2.5 tool instructions, for chat templates that know nothing of tools.
fn tools_system_text(tools: &[Value]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str(&t.to_string());
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments \
         within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \
         \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function")?.get("name")?.as_str()
}

/// Thinking on or off for this request.
pub fn thinking(req: &ChatRequest, default_on: bool) -> Result<bool, ApiError> {
    if let Some(v) = req
        .chat_template_kwargs
        .as_ref()
        .and_then(|k| k.get("enable_thinking"))
    {
        return v.as_bool().ok_or_else(|| {
            ApiError::param(
                "chat_template_kwargs.enable_thinking",
                "`enable_thinking` must be true or false",
            )
        });
    }
    match req.reasoning_effort.as_deref() {
        None => Ok(default_on),
        Some("none") => Ok(false),
        Some("minimal" | "low" | "medium" | "high") => Ok(true),
        Some(other) => Err(ApiError::param(
            "reasoning_effort",
            format!("`reasoning_effort` must be none, minimal, low, medium or high, got `{other}`"),
        )),
    }
}

pub fn build_chat(
    template: &ChatTemplate,
    req: &ChatRequest,
    default_thinking: bool,
) -> Result<ChatPlan, ApiError> {
    let native_tools = template.source().contains("tools");
    let raw = match &req.messages {
        Some(Value::Array(m)) => m,
        Some(_) => return Err(ApiError::param("messages", "`messages` must be an array")),
        None => return Err(ApiError::param("messages", "`messages` is required")),
    };
    if raw.is_empty() {
        return Err(ApiError::param("messages", "`messages` must not be empty"));
    }

    // Tools and tool_choice.
    let tools: Vec<Value> = req.tools.clone().unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if tool_name(t).is_none_or(str::is_empty) {
            return Err(ApiError::param(
                &format!("tools[{i}]"),
                "each tool must be {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": {...}}}",
            ));
        }
    }
    #[derive(PartialEq)]
    enum Choice {
        Auto,
        None,
        Required,
        Named(String),
    }
    let choice = match &req.tool_choice {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Choice::Auto,
            "none" => Choice::None,
            "required" => Choice::Required,
            other => {
                return Err(ApiError::param(
                    "tool_choice",
                    format!(
                    "`tool_choice` must be auto, none, required or a named function, got `{other}`"
                ),
                ))
            }
        },
        Some(v) => match v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Choice::Named(name.to_string()),
            None => return Err(ApiError::param(
                "tool_choice",
                "a named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )),
        },
    };
    if matches!(choice, Choice::Required | Choice::Named(_)) && tools.is_empty() {
        return Err(ApiError::param(
            "tool_choice",
            "`tool_choice` requires `tools`",
        ));
    }
    if let Choice::Named(n) = &choice {
        if !tools.iter().any(|t| tool_name(t) == Some(n.as_str())) {
            return Err(ApiError::param(
                "tool_choice",
                format!("`tool_choice` names `{n}`, which is not in `tools`"),
            ));
        }
    }
    let use_tools = !tools.is_empty() && choice != Choice::None;
    // `required` with a single tool can only mean that tool.
    let choice = match choice {
        Choice::Required if tools.len() == 1 => {
            Choice::Named(tool_name(&tools[0]).unwrap_or_default().to_string())
        }
        c => c,
    };

    // Messages, normalised for the template.
    let mut messages: Vec<Value> = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(ApiError::param(
                &format!("messages[{i}]"),
                "each message must be an object",
            ));
        };
        let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
        if !ROLES.contains(&role) {
            return Err(ApiError::param(
                &format!("messages[{i}].role"),
                format!(
                    "`role` must be one of system, developer, user, assistant, tool; got `{role}`"
                ),
            ));
        }
        let role = if role == "developer" { "system" } else { role };
        let content = content_text(obj.get("content"), i)?;
        let mut out = Map::new();
        out.insert("role".into(), json!(role));
        out.insert("content".into(), json!(content));
        if let Some(calls) = obj.get("tool_calls").filter(|c| !c.is_null()) {
            let Some(calls) = calls.as_array() else {
                return Err(ApiError::param(
                    &format!("messages[{i}].tool_calls"),
                    "`tool_calls` must be an array",
                ));
            };
            let mut norm = Vec::new();
            for (j, c) in calls.iter().enumerate() {
                let f = c.get("function");
                let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
                let Some(name) = name else {
                    return Err(ApiError::param(
                        &format!("messages[{i}].tool_calls[{j}].function.name"),
                        "a tool call needs `function.name`",
                    ));
                };
                // Templates expect the arguments as an object (llama.cpp parses the string the same way).
                let args = match f.and_then(|f| f.get("arguments")) {
                    Some(Value::String(s)) => serde_json::from_str::<Value>(s).unwrap_or(json!(s)),
                    Some(v) => v.clone(),
                    None => json!({}),
                };
                let id = c.get("id").cloned().unwrap_or(Value::Null);
                norm.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}));
            }
            out.insert("tool_calls".into(), Value::Array(norm));
        }
        for key in ["tool_call_id", "name"] {
            if let Some(v) = obj.get(key).filter(|v| v.is_string()) {
                out.insert(key.into(), v.clone());
            }
        }
        messages.push(Value::Object(out));
    }

    if !native_tools {
        // The template cannot show tools: describe them in the system message and write calls and results
        // as text, in the format the output parser reads.
        for m in messages.iter_mut() {
            let role = m["role"].as_str().unwrap_or("").to_string();
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array).cloned() {
                let mut text = m["content"].as_str().unwrap_or("").to_string();
                for c in calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    let call = json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]});
                    text.push_str(&format!("<tool_call>\n{call}\n</tool_call>"));
                }
                m["content"] = json!(text);
                if let Some(o) = m.as_object_mut() {
                    o.remove("tool_calls");
                }
            }
            if role == "tool" {
                let text = format!(
                    "<tool_response>\n{}\n</tool_response>",
                    m["content"].as_str().unwrap_or("")
                );
                m["role"] = json!("user");
                m["content"] = json!(text);
            }
        }
        if use_tools {
            let sys = tools_system_text(&tools);
            match messages.first_mut() {
                Some(m) if m["role"] == "system" => {
                    let old = m["content"].as_str().unwrap_or("").to_string();
                    m["content"] = json!(format!("{old}\n\n{sys}"));
                }
                _ => messages.insert(0, json!({"role": "system", "content": sys})),
            }
        }
    }

    let thinking = thinking(req, default_thinking)?;
    let mut extra = req.chat_template_kwargs.clone().unwrap_or_default();
    extra.insert("enable_thinking".into(), Value::Bool(thinking));
    let tools_arg = if use_tools && native_tools {
        Some(tools.as_slice())
    } else {
        None
    };
    let mut prompt = template
        .render(&messages, tools_arg, true, &extra)
        .map_err(|e| match e {
            ChatError::Rejected(m) => ApiError::param(
                "messages",
                format!("the chat template refused the conversation: {m}"),
            ),
            other => ApiError::param(
                "messages",
                format!("the chat template could not render the conversation: {other}"),
            ),
        })?;
    let thinking_open = prompt.trim_end().ends_with("<think>");

    let json_mode = match &req.response_format {
        None | Some(Value::Null) => false,
        Some(v) => match v.get("type").and_then(Value::as_str) {
            Some("text") => false,
            Some("json_object" | "json_schema") => true,
            _ => {
                return Err(ApiError::param(
                    "response_format",
                    "`response_format.type` must be text, json_object or json_schema",
                ))
            }
        },
    };
    let output = match &choice {
        Choice::Required | Choice::Named(_) => {
            let prefix = match &choice {
                Choice::Named(n) => format!("{{\"name\": {}, \"arguments\": {{", json!(n)),
                _ => "{\"name\": \"".to_string(),
            };
            Output::Tool { prefix }
        }
        _ if json_mode => Output::Json,
        _ => Output::Free {
            parse_tools: use_tools,
        },
    };
    let mut thinking_open = thinking_open;
    if thinking_open && !matches!(output, Output::Free { .. }) {
        // Constrained output starts right away: close the thinking block first.
        prompt.push_str("\n</think>\n\n");
        thinking_open = false;
    }
    if let Output::Tool { prefix } = &output {
        prompt.push_str("<tool_call>\n");
        prompt.push_str(prefix);
    }
    Ok(ChatPlan {
        prompt,
        thinking,
        thinking_open,
        output,
    })
}
