//! `kiln-agent serve`: the OpenAI-compatible HTTP server (axum on tokio; the engine on its own thread).
//!
//! One concern per file: `routes` (handlers, router, auth, health), `types` (request types and
//! validation), `prompt` (chat request → prompt text), `sse` (response and stream chunk bodies), `tools`
//! (reasoning and tool-call parsing), `stop` (stop strings), `json` (JSON-constrained sampling),
//! `scheduler` (slots, queue, the engine thread), `metrics` (Prometheus), `error` (OpenAI errors),
//! `downsize` (the memory watcher that resizes the context), `status` (`/status` for the operator).

pub mod downsize;
pub mod error;
pub mod json;
pub mod metrics;
pub mod prompt;
pub mod routes;
pub mod scheduler;
pub mod sse;
pub mod status;
pub mod stop;
pub mod tools;
pub mod types;

use crate::chat::ChatTemplate;
use crate::device::{Device, OnBackend};
use crate::engine::Engine;
use crate::gguf::GgufFile;
use crate::gpu::vram::MemorySource;
use crate::gpu::ProbeOptions;
use crate::model::ModelInfo;
use crate::plan::{self, ModelFacts, PlanOptions};
use crate::tokenizer::Tokenizer;
use anyhow::Context;
use kiln_kernels::backend::{Backend, KvType};
use metrics::Metrics;
use scheduler::{Scheduler, SchedulerConfig};
use status::NodeState;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub model: PathBuf,
    /// Where the model runs (`auto` picks a GPU when there is one).
    pub device: Device,
    /// MTP speculative decoding with up to this many drafts per round (None: off).
    pub draft_max: Option<usize>,
    /// The id `/v1/models` reports and requests may name (default: the file name without `.gguf`).
    pub alias: Option<String>,
    pub threads: usize,
    /// Requested context per slot (default: the model's training context, at most 4096).
    pub ctx: Option<usize>,
    pub kv_type: KvType,
    pub host: String,
    pub port: u16,
    pub parallel: usize,
    pub queue: usize,
    pub api_key: Option<String>,
    pub reasoning: bool,
    pub timeout: Duration,
    pub cors_origin: Option<String>,
    pub body_limit: usize,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Device memory kept free; the context shrinks before free memory falls below it.
    pub vram_headroom: u64,
    /// The smallest context downsizing may reach.
    pub ctx_min: usize,
    pub auto_downsize: bool,
    /// `auto`, `sysfs`, `nvml`, `fake:FILE`, `none` (see `gpu::vram::from_spec`).
    pub memory_source: String,
    pub sysfs_root: PathBuf,
    pub memory_poll: Duration,
    /// How long memory must stay free before the context grows back.
    pub grow_after: Duration,
    /// How long in-flight requests may run once a downsize starts.
    pub downsize_drain: Duration,
}

/// What exists once the model is loaded.
pub struct Core {
    pub sched: Scheduler,
    pub tok: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub info: ModelInfo,
    /// The ladder the watcher resizes along, with the footprint at each rung.
    pub ladder: downsize::Ladder,
}

pub struct AppState {
    pub core: OnceLock<Core>,
    pub model_id: String,
    pub api_key: Option<String>,
    pub reasoning: bool,
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub shutting_down: AtomicBool,
    pub created: u64,
    pub node: Arc<NodeState>,
}

impl AppState {
    pub fn ready(&self) -> bool {
        self.core.get().is_some_and(|c| c.sched.ready())
            && !self.shutting_down.load(Ordering::SeqCst)
    }
}

pub fn model_id(cfg: &ServeConfig) -> String {
    cfg.alias.clone().unwrap_or_else(|| {
        cfg.model
            .file_name()
            .map(|f| f.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_else(|| "model".into())
    })
}

/// Loads the model, tokenizer and chat template, plans the context against the device memory `source`
/// reports (if any), and starts the engine thread, stepping down the ladder if an allocation fails.
pub fn load(
    cfg: &ServeConfig,
    metrics: Arc<Metrics>,
    node: &NodeState,
    source: Option<&dyn MemorySource>,
) -> anyhow::Result<Core> {
    struct LoadOn<'a> {
        cfg: &'a ServeConfig,
        metrics: Arc<Metrics>,
        node: &'a NodeState,
        source: Option<&'a dyn MemorySource>,
    }
    impl OnBackend for LoadOn<'_> {
        type Output = Core;
        fn run<B: Backend + 'static>(
            self,
            backend: Arc<B>,
            device: Device,
        ) -> anyhow::Result<Core> {
            *self.node.device.lock().unwrap_or_else(|p| p.into_inner()) = Some(device.to_string());
            load_on(self.cfg, backend, self.metrics, self.node, self.source)
        }
    }
    let job = LoadOn {
        cfg,
        metrics,
        node,
        source,
    };
    crate::device::run_on(cfg.device, cfg.threads, job)
}

fn load_on<B: Backend + 'static>(
    cfg: &ServeConfig,
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    node: &NodeState,
    source: Option<&dyn MemorySource>,
) -> anyhow::Result<Core> {
    let file =
        GgufFile::open(&cfg.model).with_context(|| format!("loading {}", cfg.model.display()))?;
    let model = crate::model::load(&file, backend.clone())
        .with_context(|| format!("loading {}", cfg.model.display()))?;
    let info = model.info().clone();
    let requested = cfg
        .ctx
        .unwrap_or_else(|| info.n_ctx_train.min(4096))
        .max(16);
    let facts = ModelFacts::from_file(&file).context("planning device memory")?;
    let available = match source {
        Some(src) => {
            let gpus = src.sample().context("sampling device memory")?;
            let g = &gpus[0];
            *node.gpus.lock().unwrap_or_else(|p| p.into_inner()) = gpus.clone();
            metrics.set_gpus(&gpus);
            Some(g.vram_free_bytes())
        }
        None => None,
    };
    let popts = PlanOptions {
        ctx: Some(requested),
        ctx_min: cfg.ctx_min.clamp(16, requested),
        kv_type: cfg.kv_type,
        mtp_draft_max: cfg.draft_max,
        parallel: cfg.parallel,
        ubatch: scheduler::PREFILL_CHUNK,
        // The engine keeps no recurrent-state checkpoints on the device yet.
        prefix_checkpoints: 0,
        available,
        headroom: cfg.vram_headroom,
    };
    let planned = popts.plan(&facts)?;
    let rungs = plan::ladder(requested, popts.ctx_min);
    let mut footprints = Vec::with_capacity(rungs.len());
    for &r in &rungs {
        footprints.push(popts.footprint(&facts, r)?.total_bytes);
    }
    let ladder = downsize::Ladder { rungs, footprints };
    if available.is_some() {
        tracing::info!(
            "memory plan: context {} of {requested} requested, {} on the device, {} headroom",
            planned.context,
            plan::gb(planned.total_bytes),
            plan::gb(cfg.vram_headroom)
        );
    }
    let contexts: Vec<usize> = ladder
        .rungs
        .iter()
        .copied()
        .filter(|&r| r <= planned.context)
        .collect();
    let tok = Arc::new(Tokenizer::from_gguf(&file).context("reading the tokenizer")?);
    let template = ChatTemplate::for_model(&file, &tok).context("reading the chat template")?;
    metrics
        .context_size
        .with_label_values(&["requested"])
        .set(requested as i64);
    let sched = Scheduler::start(
        Engine::new(backend, model),
        tok.clone(),
        SchedulerConfig {
            parallel: cfg.parallel,
            contexts,
            kv_type: cfg.kv_type,
            queue: cfg.queue,
            draft_max: cfg.draft_max,
        },
        metrics.clone(),
    )?;
    let n_ctx = sched.n_ctx();
    metrics
        .context_size
        .with_label_values(&["effective"])
        .set(n_ctx as i64);
    node.requested.store(requested, Ordering::SeqCst);
    node.effective.store(n_ctx, Ordering::SeqCst);
    node.resident
        .store(ladder.footprint_at(n_ctx), Ordering::SeqCst);
    // Sample again now that the agent's own bytes are known, so the first `/status` that says Ready
    // already shows them (the watcher's next poll may be up to one interval away).
    if let Some(src) = source {
        let gpus = src.sample().context("sampling device memory")?;
        *node.gpus.lock().unwrap_or_else(|p| p.into_inner()) = gpus.clone();
        metrics.set_gpus(&gpus);
    }
    Ok(Core {
        sched,
        tok,
        template,
        info,
        ladder,
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Serves until SIGTERM/SIGINT: binds first (so `/health` answers 503 while loading), loads the model in
/// the background, then on a signal stops accepting, lets in-flight requests finish for up to
/// `shutdown_grace`, and returns.
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());
    let node = Arc::new(NodeState::default());
    node.headroom.store(cfg.vram_headroom, Ordering::SeqCst);
    node.auto_downsize
        .store(cfg.auto_downsize, Ordering::SeqCst);
    let source = crate::gpu::vram::from_spec(
        &cfg.memory_source,
        &ProbeOptions {
            sysfs_root: cfg.sysfs_root.clone(),
            nvml: true,
        },
        node.resident.clone(),
    )?;
    match &source {
        Some(s) => {
            tracing::info!("watching device memory through {}", s.describe());
            *node.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.describe());
        }
        None => tracing::info!("no device memory to watch (no GPU found, or --memory-source none)"),
    }
    let state = Arc::new(AppState {
        core: OnceLock::new(),
        model_id: model_id(&cfg),
        api_key: cfg.api_key.clone().filter(|k| !k.is_empty()),
        reasoning: cfg.reasoning,
        timeout: cfg.timeout,
        metrics: metrics.clone(),
        shutting_down: AtomicBool::new(false),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        node: node.clone(),
    });
    tracing::info!(
        "listening on http://{addr} (model `{}` loading)",
        state.model_id
    );

    let st = state.clone();
    let load_cfg = cfg.clone();
    let watch_cfg = downsize::DownsizeConfig {
        headroom: cfg.vram_headroom,
        poll: cfg.memory_poll,
        grow_after: cfg.grow_after,
        drain: cfg.downsize_drain,
        auto: cfg.auto_downsize,
    };
    tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        let loaded = tokio::task::spawn_blocking(move || {
            let core = load(&load_cfg, metrics, &node, source.as_deref());
            (core, source)
        })
        .await;
        match loaded {
            Ok((Ok(core), source)) => {
                tracing::info!(
                    "model loaded in {:.1}s on {}: {} slot(s) x {} tokens of context",
                    t0.elapsed().as_secs_f64(),
                    st.node
                        .device
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_deref()
                        .unwrap_or("?"),
                    core.sched.parallel,
                    core.sched.n_ctx()
                );
                let ladder = core.ladder.clone();
                let _ = st.core.set(core);
                if let Some(src) = source {
                    tokio::spawn(downsize::watch(st.clone(), src, ladder, watch_cfg));
                }
            }
            Ok((Err(e), _)) => {
                tracing::error!("loading the model failed: {e:#}");
                eprintln!("kiln-agent: {e:#}");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("kiln-agent: the loader panicked: {e}");
                std::process::exit(1);
            }
        }
    });

    let app = routes::router(state.clone(), &cfg)?;
    let (sig_tx, sig_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = sig_tx.send(true);
    });
    let mut rx1 = sig_rx.clone();
    let st = state.clone();
    let graceful = async move {
        let _ = rx1.wait_for(|v| *v).await;
        st.shutting_down.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: no new requests, finishing those in flight");
    };
    let mut rx2 = sig_rx;
    let grace = cfg.shutdown_grace;
    let deadline = async move {
        let _ = rx2.wait_for(|v| *v).await;
        tokio::time::sleep(grace).await;
    };
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(graceful)
        .into_future();
    tokio::select! {
        r = server => r.context("serving")?,
        _ = deadline => tracing::warn!("shutdown deadline of {grace:?} passed with requests still in flight"),
    }
    if let Some(core) = state.core.get() {
        core.sched.stop(Duration::from_secs(10));
    }
    tracing::info!("stopped");
    Ok(())
}
