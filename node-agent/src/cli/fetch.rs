//! `kiln-agent fetch URI --to DIR`: puts a model into the node cache (or finds it on the node), verifies
//! and checks it, and prints the path to load on stdout. The operator runs it as the init container, with
//! `--status-addr 0.0.0.0:8080` so the pod's `/status` shows the download's progress.

use anyhow::{Context, Result};
use clap::Args;
use kiln_agent::fetch::cache::EvictPolicy;
use kiln_agent::fetch::http::HttpOptions;
use kiln_agent::fetch::progress::{Progress, Reporter, StatusServer};
use kiln_agent::fetch::{self, FetchOptions};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The model: hf://org/repo/file.gguf[@revision], https://…, file:///path, pvc://claim/path.
    pub uri: String,
    /// The node's model cache (shared by every pod on the node).
    #[arg(long, env = "KILN_CACHE_DIR")]
    pub to: PathBuf,
    /// Expected SHA-256 of the file (hex). Without it the hub's checksum is used when it has one.
    #[arg(long)]
    pub sha256: Option<String>,
    /// Expected quantization (llama.cpp's name, e.g. Q4_K_M, Q8_0); the file must match.
    #[arg(long)]
    pub quantization: Option<String>,
    /// Serve GET /status (phase "Fetching" with progress) on this address while fetching.
    #[arg(long)]
    pub status_addr: Option<SocketAddr>,
    /// Largest size of the cache; least recently used files not in use are evicted to stay under it.
    #[arg(long)]
    pub cache_max_bytes: Option<u64>,
    /// Files used within this many seconds are never evicted (a server may be about to open them).
    #[arg(long, default_value_t = 600)]
    pub evict_grace_s: u64,
    /// The Hugging Face hub (as huggingface_hub's HF_ENDPOINT).
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    pub hf_endpoint: String,
    /// Token for gated or private hub repositories.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
    /// Where pvc://claim/… claims are mounted (each at <root>/<claim>).
    #[arg(long, env = "KILN_PVC_ROOT", default_value = "/mnt/kiln/pvc")]
    pub pvc_root: PathBuf,
    /// Failed attempts in a row before giving up.
    #[arg(long, default_value_t = 8)]
    pub retries: u32,
    /// First retry delay in milliseconds (doubled per failure, jittered).
    #[arg(long, default_value_t = 1000)]
    pub backoff_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub backoff_max_ms: u64,
    /// Abandon (and resume) a response that sends nothing for this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub stall_timeout_s: f64,
    /// Seconds between progress lines in logs (when stderr is not a terminal).
    #[arg(long, default_value_t = 10.0)]
    pub log_interval_s: f64,
    /// Also point this path (a symbolic link, replaced atomically) at the fetched file: a name known before
    /// the fetch, for `kiln-agent serve --model` in the next container (the cache path holds the hub's
    /// commit or a hash of the URL).
    #[arg(long)]
    pub link: Option<PathBuf>,
}

fn seconds(name: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{name} must be a positive number of seconds"))
}

pub fn run(args: FetchArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Pod logs are read as plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let opts = FetchOptions {
        cache_dir: args.to,
        sha256: args.sha256,
        quantization: args.quantization,
        hf_endpoint: args.hf_endpoint,
        hf_token: args.hf_token,
        pvc_root: args.pvc_root,
        http: HttpOptions {
            retries: args.retries,
            backoff_base: Duration::from_millis(args.backoff_ms),
            backoff_max: Duration::from_millis(args.backoff_max_ms.max(args.backoff_ms)),
            stall_timeout: seconds("stall-timeout-s", args.stall_timeout_s)?,
            ..HttpOptions::default()
        },
        evict: EvictPolicy {
            max_bytes: args.cache_max_bytes,
            grace: Duration::from_secs(args.evict_grace_s),
        },
    };
    let log_interval = seconds("log-interval-s", args.log_interval_s)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let uri = args.uri;
    let fetched = rt.block_on(async {
        let progress = Progress::new(uri.clone());
        let _status = match args.status_addr {
            Some(addr) => {
                let s = StatusServer::start(addr, progress.clone())
                    .await
                    .with_context(|| format!("cannot serve /status on {addr}"))?;
                tracing::info!("fetch: serving /status on {}", s.addr);
                Some(s)
            }
            None => None,
        };
        let _reporter = Reporter::start(
            progress.clone(),
            std::io::stderr().is_terminal(),
            log_interval,
        );
        fetch::fetch(&uri, &opts, &progress)
            .await
            .with_context(|| format!("fetching {uri}"))
    })?;
    if let Some(link) = &args.link {
        replace_link(&fetched.path, link)?;
        tracing::info!("fetch: {} -> {}", link.display(), fetched.path.display());
    }
    let s = &fetched.summary;
    tracing::info!(
        "fetch: {} ready: {} ({}), {} tensors, {} bytes of weights{}",
        fetched.path.display(),
        s.arch,
        s.file_type
            .clone()
            .or(s.majority_type.map(|t| t.to_string()))
            .unwrap_or_else(|| "no weight matrices".into()),
        s.n_tensors,
        s.tensor_bytes,
        if fetched.shards.len() > 1 {
            format!(", {} shards", fetched.shards.len())
        } else {
            String::new()
        }
    );
    println!("{}", fetched.path.display());
    Ok(())
}

/// Makes `link` a symbolic link to `target`, relative when both are under the link's directory (so it holds
/// wherever the volume is mounted), through a temporary name and a rename: never missing, never half made.
fn replace_link(target: &Path, link: &Path) -> Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let name = link
        .file_name()
        .with_context(|| format!("--link {}: not a file path", link.display()))?;
    let tmp = dir.join(format!(".{}.link-tmp", name.to_string_lossy()));
    let pointee = target.strip_prefix(dir).unwrap_or(target);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(pointee, &tmp)
        .with_context(|| format!("cannot create the link {}", tmp.display()))?;
    std::fs::rename(&tmp, link)
        .with_context(|| format!("cannot put the link at {}", link.display()))
}
