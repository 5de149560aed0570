//! The router and handlers: `/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/health`,
//! `/healthz`, `/readyz`, `/metrics`, `/status` (the agent status contract), and llama-server's
//! `/tokenize` and `/apply-template`.

use super::error::ApiError;
use super::prompt::{build_chat, ChatPlan, Output};
use super::scheduler::{Event, Job, SubmitError, Summary};
use super::sse::{self, Meta};
use super::tools::{self, Delta, OutputParser, ToolCall};
use super::types::{ChatRequest, CompletionRequest, Generation};
use super::{AppState, Core, ServeConfig};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>, cfg: &ServeConfig) -> anyhow::Result<Router> {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/models/{id}", get(model_one))
        .route("/tokenize", post(tokenize))
        .route("/apply-template", post(apply_template))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let open = Router::new()
        .route("/health", get(health))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(super::status::status));
    let mut app = api
        .merge(open)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(cfg.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state);
    if let Some(origin) = &cfg.cors_origin {
        use tower_http::cors::{Any, CorsLayer};
        let cors = CorsLayer::new().allow_methods(Any).allow_headers(Any);
        let cors =
            if origin == "*" {
                cors.allow_origin(Any)
            } else {
                cors.allow_origin(HeaderValue::from_str(origin).map_err(|_| {
                    anyhow::anyhow!("--cors-origin `{origin}` is not a valid origin")
                })?)
            };
        app = app.layer(cors);
    }
    Ok(app)
}

/// Counts requests by endpoint (the route pattern, never the raw path) and status.
async fn track(State(st): St, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let resp = next.run(req).await;
    st.metrics
        .requests
        .with_label_values(&[endpoint.as_str(), resp.status().as_str()])
        .inc();
    resp
}

/// `Authorization: Bearer KEY`, compared in constant time, when an API key is set.
async fn auth(State(st): St, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        let ok: bool = given.as_bytes().ct_eq(key.as_bytes()).into();
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn fallback(req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

async fn health(State(st): St) -> Response {
    if st.ready() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        let msg = if st.shutting_down.load(Ordering::SeqCst) {
            "Shutting down"
        } else {
            "Loading model"
        };
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": 503, "message": msg, "type": "unavailable_error"}})),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): St) -> Response {
    if st.ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready"})),
        )
            .into_response()
    }
}

async fn metrics(State(st): St) -> Response {
    // Read at scrape time, so a pod stuck loading (or failed) exports 0 without anyone having to set it.
    st.metrics.ready.set(i64::from(st.ready()));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.metrics.render(),
    )
        .into_response()
}

fn core(st: &AppState) -> Result<&Core, ApiError> {
    if st.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("The server is shutting down.", 5));
    }
    st.core
        .get()
        .ok_or_else(|| ApiError::unavailable("Loading model", 5))
}

fn model_json(st: &AppState) -> Value {
    let mut meta = json!({});
    if let Some(c) = st.core.get() {
        meta = json!({
            "arch": c.info.arch,
            "n_vocab": c.info.n_vocab,
            "n_ctx_train": c.info.n_ctx_train,
            "n_ctx": c.sched.n_ctx(),
            "n_embd": c.info.n_embd,
            "n_layer": c.info.n_layer,
            "parallel": c.sched.parallel,
        });
    }
    json!({"id": st.model_id, "object": "model", "created": st.created, "owned_by": "kiln", "meta": meta})
}

async fn models(State(st): St) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_json(&st)]}))
}

async fn model_one(State(st): St, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if id != st.model_id {
        return Err(ApiError::model_not_found(&id));
    }
    Ok(Json(model_json(&st)))
}

/// The body as JSON of type `T`, with OpenAI errors for a too-large, non-JSON or mistyped body.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "The request body is too large.",
            )
            .with_code("request_too_large")
        } else {
            ApiError::invalid(format!("Could not read the request body: {rej}"))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "The request body is empty; send a JSON object.",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let what = if e.is_data() {
            "The request body has a field of the wrong type"
        } else {
            "The request body is not valid JSON"
        };
        ApiError::invalid(format!("{what}: {e}"))
    })
}

fn check_model(st: &AppState, model: &Option<String>) -> Result<(), ApiError> {
    match model.as_deref() {
        None | Some("") => Ok(()),
        Some(m) if m == st.model_id || m == format!("{}.gguf", st.model_id) => Ok(()),
        Some(m) => Err(ApiError::model_not_found(m)),
    }
}

/// Checks the prompt against the context, queues the job, and returns its event stream.
fn submit(
    st: &AppState,
    core: &Core,
    prompt: Vec<u32>,
    gen: &Generation,
    json_state: Option<super::json::JsonState>,
) -> Result<(mpsc::UnboundedReceiver<Event>, Instant), ApiError> {
    let n_ctx = core.sched.n_ctx();
    if prompt.is_empty() {
        return Err(ApiError::invalid("The prompt is empty."));
    }
    if prompt.len() >= n_ctx {
        return Err(ApiError::invalid(format!(
            "This model's maximum context length is {n_ctx} tokens. However, your prompt is {} tokens.",
            prompt.len()
        ))
        .with_param("messages")
        .with_code("context_length_exceeded"));
    }
    let room = n_ctx - prompt.len();
    let max_tokens = match gen.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::invalid(format!(
                "max_tokens is too large: the prompt is {} tokens and the context is {n_ctx}, \
                 so at most {room} tokens can be generated.",
                prompt.len()
            ))
            .with_param("max_tokens")
            .with_code("context_length_exceeded"))
        }
        Some(m) => m,
        None => room,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    let deadline = now + st.timeout;
    let job = Job {
        prompt,
        max_tokens,
        sampling: gen.params.clone(),
        stop: gen.stop.clone(),
        json: json_state,
        deadline,
        received: now,
        events: tx,
    };
    match core.sched.submit(job) {
        Ok(()) => Ok((rx, deadline)),
        Err(SubmitError::QueueFull) => Err(ApiError::unavailable(
            "The server is busy: every slot is in use and the queue is full. Retry later.",
            2,
        )
        .with_code("queue_full")),
        Err(SubmitError::Stopped) => Err(ApiError::unavailable("The engine has stopped.", 5)),
    }
}

/// A request the engine could not run because its context is being resized: retryable.
fn resizing(message: String) -> ApiError {
    ApiError::unavailable(message, 5).with_code("context_resizing")
}

/// Waits for the whole generation (non-streaming).
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    deadline: Instant,
) -> Result<(String, Summary), ApiError> {
    let mut text = String::new();
    let until = tokio::time::Instant::from_std(deadline + Duration::from_secs(2));
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Err(_) => return Err(ApiError::timeout("The request timed out.")),
            Ok(None) => return Err(ApiError::internal("The engine stopped.")),
            Ok(Some(Event::Prefilled { .. })) => {}
            Ok(Some(Event::Text(t))) => text.push_str(&t),
            Ok(Some(Event::Done(s))) => return Ok((text, s)),
            Ok(Some(Event::Error { message, timeout })) => {
                return Err(if timeout {
                    ApiError::timeout(message)
                } else {
                    ApiError::internal(message)
                })
            }
            Ok(Some(Event::Unavailable(message))) => return Err(resizing(message)),
        }
    }
}

/// Turns generated text into reasoning / content / tool calls for one request.
struct Shaper {
    output: Output,
    parser: OutputParser,
    forced: String,
    /// Tool calls sent so far (the `index` of the next one).
    tool_index: usize,
}

impl Shaper {
    fn new(plan: &ChatPlan) -> Self {
        let parse_tools = matches!(plan.output, Output::Free { parse_tools: true });
        Shaper {
            output: plan.output.clone(),
            parser: OutputParser::new(parse_tools, plan.thinking_open),
            forced: String::new(),
            tool_index: 0,
        }
    }

    fn push(&mut self, text: &str) -> Vec<Delta> {
        match &self.output {
            Output::Free { .. } => self.parser.push(text),
            Output::Json => vec![Delta::Content(text.to_string())],
            Output::Tool { .. } => {
                self.forced.push_str(text);
                Vec::new()
            }
        }
    }

    fn chunks_json(&mut self, deltas: Vec<Delta>) -> Vec<Value> {
        deltas
            .iter()
            .map(|d| sse::delta_json(d, &mut self.tool_index))
            .collect()
    }

    fn finish(&mut self) -> Vec<Delta> {
        match &self.output {
            Output::Free { .. } => self.parser.finish(),
            Output::Json => Vec::new(),
            Output::Tool { prefix } => {
                let full = format!("{prefix}{}", self.forced);
                match tools::parse_call_body(&full) {
                    Some((name, arguments)) => vec![Delta::ToolCall(ToolCall {
                        id: tools::new_call_id(),
                        name,
                        arguments,
                    })],
                    // The model did not finish the call (max_tokens): hand back what it wrote.
                    None => vec![Delta::Content(std::mem::take(&mut self.forced))],
                }
            }
        }
    }
}

fn record_duration(st: &AppState, t0: Instant) {
    st.metrics
        .request_duration
        .observe(t0.elapsed().as_secs_f64());
}

async fn chat(State(st): St, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req: ChatRequest = parse_body(body)?;
    check_model(&st, &req.model)?;
    let core = core(&st)?;
    if req.logprobs == Some(true) {
        return Err(ApiError::param(
            "logprobs",
            "`logprobs` is not supported yet",
        ));
    }
    let gen = req.sampling.validate()?;
    let plan = build_chat(&core.template, &req, st.reasoning)?;
    let prompt = core.tok.encode(&plan.prompt, true, true);
    let (mut rx, deadline) = submit(&st, core, prompt, &gen, plan.json_state())?;
    let meta = Meta {
        id: tools::random_id("chatcmpl-", 24),
        created: now_secs(),
        model: st.model_id.clone(),
    };
    let mut shaper = Shaper::new(&plan);
    if !req.stream.unwrap_or(false) {
        let (text, summary) = collect(&mut rx, deadline).await?;
        let mut deltas = shaper.push(&text);
        deltas.extend(shaper.finish());
        let c = tools::collect(deltas);
        let content = if c.tool_calls.is_empty() {
            c.content
        } else {
            c.content.trim().to_string()
        };
        let finish = sse::finish_reason(summary.finish, !c.tool_calls.is_empty());
        let message = sse::chat_message(&c.reasoning, &content, &c.tool_calls);
        record_duration(&st, t0);
        return Ok(Json(sse::chat_completion(&meta, message, finish, &summary)).into_response());
    }
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let st2 = st.clone();
    Ok(stream(deadline, rx, move |ev, out| match ev {
        StreamEv::Start => out.push(sse::chat_chunk(
            &meta,
            json!({"role": "assistant", "content": ""}),
            None,
            include_usage,
        )),
        StreamEv::Text(t) => {
            let deltas = shaper.push(&t);
            for d in shaper.chunks_json(deltas) {
                out.push(sse::chat_chunk(&meta, d, None, include_usage));
            }
        }
        StreamEv::Done(s) => {
            let deltas = shaper.finish();
            for d in shaper.chunks_json(deltas) {
                out.push(sse::chat_chunk(&meta, d, None, include_usage));
            }
            let finish = sse::finish_reason(s.finish, shaper.tool_index > 0);
            out.push(sse::chat_chunk(
                &meta,
                json!({}),
                Some(finish),
                include_usage,
            ));
            if include_usage {
                out.push(sse::usage_chunk(&meta, "chat.completion.chunk", &s));
            }
            record_duration(&st2, t0);
        }
    }))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

enum StreamEv {
    Start,
    Text(String),
    Done(Summary),
}

async fn send_all(tx: &mpsc::Sender<Result<SseEvent, Infallible>>, out: &mut Vec<Value>) -> bool {
    for v in out.drain(..) {
        if tx
            .send(Ok(SseEvent::default().data(v.to_string())))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// An SSE response fed by the engine's events: `on` turns each event into chunks; the stream ends with
/// `data: [DONE]`, or with an error object after a failure. When the client goes away the task ends and
/// drops the event receiver, which frees the slot at the engine's next step.
fn stream(
    deadline: Instant,
    mut rx: mpsc::UnboundedReceiver<Event>,
    mut on: impl FnMut(StreamEv, &mut Vec<Value>) + Send + 'static,
) -> Response {
    let (tx, srx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let until = tokio::time::Instant::from_std(deadline + Duration::from_secs(2));
        let mut out = Vec::new();
        on(StreamEv::Start, &mut out);
        if !send_all(&tx, &mut out).await {
            return;
        }
        loop {
            let ev = tokio::select! {
                _ = tx.closed() => return,
                r = tokio::time::timeout_at(until, rx.recv()) => r,
            };
            let err = match ev {
                Err(_) => Some(ApiError::timeout("The request timed out.")),
                Ok(None) => Some(ApiError::internal("The engine stopped.")),
                Ok(Some(Event::Prefilled { .. })) => None,
                Ok(Some(Event::Text(t))) => {
                    on(StreamEv::Text(t), &mut out);
                    None
                }
                Ok(Some(Event::Done(s))) => {
                    on(StreamEv::Done(s), &mut out);
                    if send_all(&tx, &mut out).await {
                        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    }
                    return;
                }
                Ok(Some(Event::Error { message, timeout })) => Some(if timeout {
                    ApiError::timeout(message)
                } else {
                    ApiError::internal(message)
                }),
                Ok(Some(Event::Unavailable(message))) => Some(resizing(message)),
            };
            if let Some(e) = err {
                out.push(e.body());
                send_all(&tx, &mut out).await;
                return;
            }
            if !send_all(&tx, &mut out).await {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(srx)).into_response()
}

/// `prompt` for `/v1/completions`: a string, a one-element list of strings, or a list of token ids.
fn completion_prompt(core: &Core, v: &Option<Value>) -> Result<Vec<u32>, ApiError> {
    let bad = || {
        ApiError::param(
            "prompt",
            "`prompt` must be a string, a list with one string, or a list of token ids",
        )
    };
    match v {
        None | Some(Value::Null) => Err(ApiError::param("prompt", "`prompt` is required")),
        Some(Value::String(s)) => Ok(core.tok.encode(s, true, true)),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            Ok(core.tok.encode(items[0].as_str().unwrap_or(""), true, true))
        }
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            let n_vocab = core.info.n_vocab as u64;
            items
                .iter()
                .map(|i| match i.as_u64() {
                    Some(t) if t < n_vocab => Ok(t as u32),
                    _ => Err(ApiError::param(
                        "prompt",
                        format!("token id {i} is outside the vocabulary of {n_vocab}"),
                    )),
                })
                .collect()
        }
        Some(Value::Array(items)) if items.len() > 1 && items.iter().all(Value::is_string) => Err(
            ApiError::param("prompt", "only one prompt per request is supported"),
        ),
        Some(_) => Err(bad()),
    }
}

async fn completions(
    State(st): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req: CompletionRequest = parse_body(body)?;
    check_model(&st, &req.model)?;
    let core = core(&st)?;
    if req.echo == Some(true) {
        return Err(ApiError::param("echo", "`echo` is not supported"));
    }
    if req.logprobs.as_ref().is_some_and(|l| !l.is_null()) {
        return Err(ApiError::param(
            "logprobs",
            "`logprobs` is not supported yet",
        ));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param("suffix", "`suffix` is not supported"));
    }
    let mut gen = req.sampling.validate()?;
    // OpenAI's default for this endpoint is 16 tokens.
    gen.max_tokens.get_or_insert(16);
    let prompt = completion_prompt(core, &req.prompt)?;
    let (mut rx, deadline) = submit(&st, core, prompt, &gen, None)?;
    let meta = Meta {
        id: tools::random_id("cmpl-", 24),
        created: now_secs(),
        model: st.model_id.clone(),
    };
    if !req.stream.unwrap_or(false) {
        let (text, s) = collect(&mut rx, deadline).await?;
        record_duration(&st, t0);
        let finish = sse::finish_reason(s.finish, false);
        return Ok(Json(sse::text_completion(&meta, &text, finish, &s)).into_response());
    }
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let st2 = st.clone();
    Ok(stream(deadline, rx, move |ev, out| match ev {
        StreamEv::Start => {}
        StreamEv::Text(t) => out.push(sse::text_chunk(&meta, &t, None, include_usage)),
        StreamEv::Done(s) => {
            let finish = sse::finish_reason(s.finish, false);
            out.push(sse::text_chunk(&meta, "", Some(finish), include_usage));
            if include_usage {
                out.push(sse::usage_chunk(&meta, "text_completion", &s));
            }
            record_duration(&st2, t0);
        }
    }))
}

#[derive(serde::Deserialize)]
struct TokenizeRequest {
    content: String,
    add_special: Option<bool>,
    parse_special: Option<bool>,
}

/// llama-server's `/tokenize`: `{"content", "add_special"?, "parse_special"?}` → `{"tokens": [...]}`.
async fn tokenize(
    State(st): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: TokenizeRequest = parse_body(body)?;
    let core = core(&st)?;
    let tokens = core.tok.encode(
        &req.content,
        req.add_special.unwrap_or(false),
        req.parse_special.unwrap_or(true),
    );
    Ok(Json(json!({"tokens": tokens})).into_response())
}

/// llama-server's `/apply-template`: the chat request's prompt text, as it would be generated from
/// (forced tool-call or thinking prefixes included).
async fn apply_template(
    State(st): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_body(body)?;
    let core = core(&st)?;
    let plan = build_chat(&core.template, &req, st.reasoning)?;
    Ok(Json(json!({"prompt": plan.prompt, "thinking": plan.thinking})).into_response())
}
