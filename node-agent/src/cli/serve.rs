//! `kiln-agent serve`: the OpenAI-compatible HTTP server (see `kiln_agent::server`).

use super::generate::Reasoning;
use super::ModelArgs;
use anyhow::Result;
use clap::Args;
use kiln_agent::plan;
use kiln_agent::server::{self, ServeConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub speculative: super::SpecArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "KILN_HOST")]
    pub host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080, env = "KILN_PORT")]
    pub port: u16,
    /// Slots: requests generated at the same time, each with its own KV cache of --ctx tokens.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Requests that may wait for a slot; more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on the API (health and metrics stay open).
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Default for thinking in the chat template; requests override it with
    /// `chat_template_kwargs.enable_thinking` or `reasoning_effort`.
    #[arg(long, value_enum, default_value = "off")]
    pub reasoning: Reasoning,
    /// Most seconds one request may take, queueing included.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Allow browsers from this origin (`*` for any). No CORS headers without it.
    #[arg(long)]
    pub cors_origin: Option<String>,
    /// Model id reported by /v1/models (default: the file name without .gguf).
    #[arg(long)]
    pub alias: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds in-flight requests may run after SIGTERM/SIGINT before the server exits.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_s: u64,
    /// Device memory to keep free (bytes, or 512MiB, 1GiB): the context shrinks before free memory
    /// would fall below it.
    #[arg(long, default_value_t = plan::DEFAULT_HEADROOM, value_parser = plan::parse_bytes)]
    pub vram_headroom: u64,
    /// The smallest context downsizing may reach (and the floor of the start-up plan).
    #[arg(long, default_value_t = plan::DEFAULT_CTX_MIN)]
    pub ctx_min: usize,
    /// Shrink the context when device memory runs low, grow it back when memory is free again.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_downsize: bool,
    /// Where device memory is read: auto, sysfs, nvml, fake:FILE (tests: `USED TOTAL` bytes per line),
    /// none.
    #[arg(long, default_value = "auto")]
    pub memory_source: String,
    /// The directory holding `sys/` and `dev/` (GPU probe and sysfs memory source).
    #[arg(long, default_value = "/", env = "KILN_SYSFS_ROOT")]
    pub sysfs_root: PathBuf,
    /// Milliseconds between memory samples.
    #[arg(long, default_value_t = 2000)]
    pub memory_poll_ms: u64,
    /// Seconds memory must stay free before the context grows back.
    #[arg(long, default_value_t = 60)]
    pub grow_after_s: u64,
    /// Seconds in-flight requests may run once a downsize starts; the rest are ended with a
    /// retryable 503.
    #[arg(long, default_value_t = 30)]
    pub downsize_drain_s: u64,
}

pub fn run(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.parallel == 0 || args.parallel > 256 {
        anyhow::bail!("--parallel must be between 1 and 256");
    }
    // The ROCm environment must be in place before any thread starts and before any HIP call.
    let probe = kiln_agent::gpu::ProbeOptions {
        sysfs_root: args.sysfs_root.clone(),
        nvml: false,
    };
    let (gpus, env) = super::gpus::env_plan(&probe, true);
    if !gpus.is_empty() {
        kiln_agent::gpu::hsa::apply(&env);
    }
    let cfg = ServeConfig {
        model: args.model.model.clone(),
        device: args.model.device,
        draft_max: args.speculative.draft_max(),
        alias: args.alias,
        threads: args.model.threads.unwrap_or_else(super::default_threads),
        ctx: args.model.ctx,
        kv_type: args.model.kv_type,
        host: args.host,
        port: args.port,
        parallel: args.parallel,
        queue: args.queue.max(1),
        api_key: args.api_key,
        reasoning: args.reasoning == Reasoning::On,
        timeout: Duration::from_secs(args.timeout_s.max(1)),
        cors_origin: args.cors_origin,
        body_limit: args.max_body_bytes.max(1024),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_s),
        vram_headroom: args.vram_headroom,
        ctx_min: args.ctx_min.max(16),
        auto_downsize: args.auto_downsize,
        memory_source: args.memory_source,
        sysfs_root: args.sysfs_root,
        memory_poll: Duration::from_millis(args.memory_poll_ms.clamp(50, 600_000)),
        grow_after: Duration::from_secs(args.grow_after_s),
        downsize_drain: Duration::from_secs(args.downsize_drain_s),
    };
    // A model from the node cache stays marked in use while it is served, so eviction never removes it.
    let _in_use = kiln_agent::fetch::cache::hold_in_use(&args.model.model)?;
    // The engine has its own thread; the runtime only does I/O.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(server::run(cfg))
}
