//! OpenAI request types and their validation. Every field is optional (`null` is accepted as absent) and
//! unknown fields are ignored, as OpenAI clients send many; values are checked here with messages that
//! name the parameter.

use super::error::ApiError;
use crate::engine::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<Value>,
    pub n: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Value>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub response_format: Option<Value>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    pub reasoning_effort: Option<String>,
    pub logprobs: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Value>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub echo: Option<bool>,
    pub logprobs: Option<Value>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// What the engine needs from the sampling fields.
#[derive(Debug, Clone)]
pub struct Generation {
    pub params: SamplingParams,
    /// Explicit `max_tokens` / `max_completion_tokens`, if any.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
}

/// The most stop strings and their longest length accepted.
const MAX_STOPS: usize = 16;
const MAX_STOP_LEN: usize = 512;

fn finite(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(Some(x as f32)),
        Some(x) => Err(ApiError::param(
            name,
            format!("`{name}` must be between {lo} and {hi}, got {x}"),
        )),
    }
}

pub fn parse_stop(v: &Option<Value>) -> Result<Vec<String>, ApiError> {
    let stops = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::param("stop", "`stop` must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::param(
                "stop",
                "`stop` must be a string or a list of strings",
            ))
        }
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::param(
            "stop",
            format!("at most {MAX_STOPS} stop sequences are supported"),
        ));
    }
    if stops.iter().any(|s| s.len() > MAX_STOP_LEN) {
        return Err(ApiError::param(
            "stop",
            format!("stop sequences are limited to {MAX_STOP_LEN} bytes"),
        ));
    }
    Ok(stops)
}

impl Sampling {
    /// Checks the values and fills in llama-server's defaults (temperature 0.8, top-k 40, top-p 0.95,
    /// min-p 0.05). Temperature 0 is greedy.
    pub fn validate(&self) -> Result<Generation, ApiError> {
        let d = SamplingParams::default();
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::param("n", "only `n: 1` is supported"));
            }
        }
        finite("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        finite("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        let top_k = match self.top_k {
            None => d.top_k,
            Some(k) if (0..=1_000_000).contains(&k) => k as usize,
            Some(k) => {
                return Err(ApiError::param(
                    "top_k",
                    format!("`top_k` must be between 0 and 1000000, got {k}"),
                ))
            }
        };
        let params = SamplingParams {
            temperature: finite("temperature", self.temperature, 0.0, 2.0)?
                .unwrap_or(d.temperature),
            top_p: finite("top_p", self.top_p, 0.0, 1.0)?.unwrap_or(d.top_p),
            top_k,
            min_p: finite("min_p", self.min_p, 0.0, 1.0)?.unwrap_or(d.min_p),
            repeat_penalty: finite("repeat_penalty", self.repeat_penalty, 0.0, 10.0)?
                .unwrap_or(d.repeat_penalty),
            repeat_last_n: d.repeat_last_n,
            seed: match self.seed {
                Some(s) => s as u64,
                None => rand::random(),
            },
        };
        // top_p = 0 means "only the best token" to OpenAI users; the sampler wants (0, 1].
        let params = SamplingParams {
            top_p: if params.top_p <= 0.0 {
                1e-6
            } else {
                params.top_p
            },
            ..params
        };
        params.validate().map_err(ApiError::invalid)?;
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => None,
            Some(n) if n >= 1 => Some(n as usize),
            Some(n) => {
                let name = if self.max_completion_tokens.is_some() {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                return Err(ApiError::param(
                    name,
                    format!("`{name}` must be at least 1, got {n}"),
                ));
            }
        };
        Ok(Generation {
            params,
            max_tokens,
            stop: parse_stop(&self.stop)?,
        })
    }
}

/// Message content as text: a string, `null`, or an array of `{"type": "text", "text": …}` parts.
pub fn content_text(v: Option<&Value>, index: usize) -> Result<String, ApiError> {
    let param = format!("messages[{index}].content");
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push_str(t),
                    (Some(t), _) if t != "text" => {
                        return Err(ApiError::param(
                            &param,
                            format!("content part type `{t}` is not supported (text only)"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::param(
                            &param,
                            "each content part must be {\"type\": \"text\", \"text\": \"...\"}",
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(ApiError::param(
            &param,
            "`content` must be a string or an array of text parts",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(v: Value) -> Result<Generation, ApiError> {
        serde_json::from_value::<Sampling>(v)
            .map_err(|e| ApiError::invalid(e.to_string()))?
            .validate()
    }

    #[test]
    fn defaults_and_values() {
        let g = sampling(serde_json::json!({})).unwrap();
        assert_eq!(g.params.temperature, 0.8);
        assert_eq!(g.max_tokens, None);
        let g = sampling(
            serde_json::json!({"temperature": 0, "max_tokens": 5, "stop": "x", "seed": 3}),
        )
        .unwrap();
        assert_eq!(g.params.temperature, 0.0);
        assert_eq!(g.params.seed, 3);
        assert_eq!(g.max_tokens, Some(5));
        assert_eq!(g.stop, vec!["x".to_string()]);
        let g = sampling(serde_json::json!({"max_tokens": 5, "max_completion_tokens": 7})).unwrap();
        assert_eq!(g.max_tokens, Some(7));
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (body, param) in [
            (serde_json::json!({"temperature": -1}), "temperature"),
            (serde_json::json!({"temperature": 1e9}), "temperature"),
            (serde_json::json!({"top_p": 1.5}), "top_p"),
            (serde_json::json!({"top_k": -3}), "top_k"),
            (serde_json::json!({"min_p": 2}), "min_p"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (
                serde_json::json!({"max_completion_tokens": -5}),
                "max_completion_tokens",
            ),
            (serde_json::json!({"stop": 5}), "stop"),
            (serde_json::json!({"stop": ["a", 1]}), "stop"),
            (serde_json::json!({"n": 3}), "n"),
            (
                serde_json::json!({"presence_penalty": 9}),
                "presence_penalty",
            ),
        ] {
            let e = sampling(body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        // Wrong JSON types are refused by the decoder.
        assert!(sampling(serde_json::json!({"temperature": "hot"})).is_err());
    }

    #[test]
    fn content_parts() {
        let v = serde_json::json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
        assert_eq!(content_text(Some(&v), 0).unwrap(), "ab");
        let img = serde_json::json!([{"type": "image_url", "image_url": {"url": "x"}}]);
        assert!(content_text(Some(&img), 0).is_err());
        assert!(content_text(Some(&serde_json::json!(5)), 0).is_err());
        assert_eq!(content_text(None, 0).unwrap(), "");
    }
}
