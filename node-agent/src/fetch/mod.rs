//! Getting a model onto the node (`kiln-agent fetch`, the operator's init container): from the hub, a URL,
//! a node path or a PVC into the node's shared cache, verified and checked before anything loads it.
//!
//! - [`uri`]: what a model URI names.
//! - [`http`]: the download (resume, retries, stall timeout).
//! - [`cache`]: the shared cache (locks, atomic completion, eviction).
//! - [`check`]: the checks before load.
//! - [`progress`]: progress bar, log lines and the `/status` endpoint.

pub mod cache;
pub mod check;
pub mod http;
pub mod progress;
pub mod uri;

use cache::{Claim, Entry, EvictPolicy, LockGuard};
use check::{CheckError, ModelSummary};
use http::HttpOptions;
use progress::Progress;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;
use uri::ModelUri;

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("model URI `{uri}`: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("{url}: HTTP {status}{hint}")]
    HttpStatus {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("giving up on {url} after {attempts} failed attempts in a row; the last: {last}")]
    RetriesExhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{url}: the server announced {expected} bytes but sends {got}")]
    SizeMismatch {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("{what}: SHA-256 is {actual} but {source_of_expected} says {expected}; the download was discarded")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
        source_of_expected: &'static str,
    },
    #[error("not enough disk space for {path}: {need} more bytes are needed, {free} are free (after evicting unused cached files)")]
    DiskFull { path: PathBuf, need: u64, free: u64 },
    #[error("{path}: the disk filled up while writing; the partial download was removed")]
    NoSpace { path: PathBuf },
    #[error(
        "{path}: permission denied: the model cache must be writable by this process (uid {uid}); on a \
         node directory (modelCache hostPath) create it with `install -d -o {uid} -g {uid} DIR`"
    )]
    NotWritable { path: PathBuf, uid: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Check(#[from] CheckError),
}

impl FetchError {
    /// An I/O error on `path`; a full disk or exceeded quota is told apart, since it needs another fix.
    pub fn from_io(path: &Path, e: std::io::Error) -> Self {
        // ENOSPC (28) and EDQUOT (122) on Linux.
        if matches!(e.raw_os_error(), Some(28) | Some(122))
            || e.kind() == std::io::ErrorKind::StorageFull
        {
            return FetchError::NoSpace { path: path.into() };
        }
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return FetchError::NotWritable {
                path: path.into(),
                uid: process_uid(),
            };
        }
        FetchError::Io {
            path: path.into(),
            source: e,
        }
    }
}

/// This process's user id (the owner of /proc/self), for error messages; u32::MAX when unknown.
fn process_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Everything a fetch needs besides the URI.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The node's shared cache directory.
    pub cache_dir: PathBuf,
    /// Expected SHA-256 of the file (hex); the hub's is used when absent.
    pub sha256: Option<String>,
    /// Expected quantization (llama.cpp name, e.g. `Q4_K_M`).
    pub quantization: Option<String>,
    /// The hub (`HF_ENDPOINT`).
    pub hf_endpoint: String,
    /// Bearer token for the hub (`HF_TOKEN`); sent only to the hub.
    pub hf_token: Option<String>,
    /// Where `pvc://claim/…` claims are mounted (`<root>/<claim>`).
    pub pvc_root: PathBuf,
    pub http: HttpOptions,
    pub evict: EvictPolicy,
}

/// The result: where the model is and what the checks found.
#[derive(Debug)]
pub struct Fetched {
    /// The file to load (the first shard of a split GGUF: the rest sit beside it).
    pub path: PathBuf,
    pub shards: Vec<PathBuf>,
    pub summary: ModelSummary,
    /// Bytes downloaded by this call (0 when everything came from the cache or a local path).
    pub downloaded: u64,
}

/// One file to download.
struct Remote {
    url: String,
    /// Path under the cache root.
    rel: PathBuf,
    token: Option<String>,
    size: Option<u64>,
    sha256: Option<(String, &'static str)>,
}

/// Fetches (or finds) the model `uri` names, verifies and checks it.
pub async fn fetch(
    uri: &str,
    opts: &FetchOptions,
    progress: &Progress,
) -> Result<Fetched, FetchError> {
    let parsed = ModelUri::parse(uri)?;
    let user_sha = opts
        .sha256
        .as_deref()
        .map(|s| {
            let s = s.trim().to_ascii_lowercase();
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(s)
            } else {
                Err(FetchError::Invalid(format!(
                    "--sha256 `{s}` is not 64 hexadecimal digits"
                )))
            }
        })
        .transpose()?;
    let shards = uri::shard_paths(&parsed.file_name());
    if user_sha.is_some() && shards.len() > 1 {
        return Err(FetchError::Invalid(format!(
            "--sha256 names one file but `{uri}` is a split GGUF of {} files; the hub's checksums are used for each",
            shards.len()
        )));
    }
    if matches!(parsed, ModelUri::Hf { .. } | ModelUri::Url(_)) {
        // Before any request: a cache this process cannot write fails now, with its fix, not after the
        // hub has been asked for the file.
        std::fs::create_dir_all(&opts.cache_dir)
            .map_err(|e| FetchError::from_io(&opts.cache_dir, e))?;
    }
    match parsed {
        ModelUri::File(path) => {
            let paths = local_shards(&path);
            fetch_local(paths, user_sha, opts, progress).await
        }
        ModelUri::Pvc { claim, path } => {
            let mount = opts.pvc_root.join(&claim);
            let file = uri::pvc_path(&opts.pvc_root, &claim, &path);
            let paths = local_shards(&file);
            for p in &paths {
                inside_mount(p, &mount)?;
            }
            fetch_local(paths, user_sha, opts, progress).await
        }
        ModelUri::Hf {
            org,
            repo,
            path,
            revision,
        } => {
            let head_client = http::client(&opts.http, false)?;
            let token = opts.hf_token.clone().filter(|t| !t.trim().is_empty());
            let mut remotes = Vec::new();
            let mut commit: Option<String> = None;
            for shard in uri::shard_paths(&path) {
                // Every shard comes from the commit the first one resolved to.
                let rev = commit.as_deref().unwrap_or(&revision);
                let url = uri::hf_resolve_url(&opts.hf_endpoint, &org, &repo, rev, &shard);
                let meta = http::head(&head_client, &url, token.as_deref(), &opts.http).await?;
                if commit.is_none() {
                    commit = meta.commit.clone();
                }
                let rev = commit.clone().unwrap_or_else(|| revision.clone());
                let sha256 = match &user_sha {
                    Some(s) => Some((s.clone(), "--sha256")),
                    None => meta.sha256.map(|s| (s, "the hub (x-linked-etag)")),
                };
                remotes.push(Remote {
                    url: uri::hf_resolve_url(&opts.hf_endpoint, &org, &repo, &rev, &shard),
                    rel: Path::new("hf")
                        .join(&org)
                        .join(&repo)
                        .join(rev.replace('/', "--"))
                        .join(&shard),
                    token: token.clone(),
                    size: meta.size,
                    sha256,
                });
            }
            fetch_remote(remotes, opts, progress).await
        }
        ModelUri::Url(url) => {
            let head_client = http::client(&opts.http, true)?;
            let parsed_url = reqwest::Url::parse(&url).map_err(|e| FetchError::BadUri {
                uri: url.clone(),
                reason: e.to_string(),
            })?;
            let host = parsed_url.host_str().unwrap_or("host").to_string();
            let host = match parsed_url.port() {
                Some(p) => format!("{host}_{p}"),
                None => host,
            };
            let key = format!("{:x}", Sha256::digest(url.as_bytes()));
            let mut remotes = Vec::new();
            for shard in shards {
                let mut shard_url = parsed_url.clone();
                if let Ok(mut segments) = shard_url.path_segments_mut() {
                    segments.pop().push(&shard);
                }
                let shard_url = shard_url.to_string();
                let meta = http::head(&head_client, &shard_url, None, &opts.http).await?;
                remotes.push(Remote {
                    rel: Path::new("url")
                        .join(safe_name(&host))
                        .join(&key[..16])
                        .join(safe_name(&shard)),
                    url: shard_url,
                    token: None,
                    size: meta.size,
                    sha256: user_sha.clone().map(|s| (s, "--sha256")),
                });
            }
            fetch_remote(remotes, opts, progress).await
        }
    }
}

/// A name safe as one path component (URL segments may hold anything).
fn safe_name(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("model{s}")
    } else {
        s
    }
}

fn local_shards(path: &Path) -> Vec<PathBuf> {
    let s = path.to_string_lossy();
    uri::shard_paths(&s)
        .into_iter()
        .map(PathBuf::from)
        .collect()
}

/// A `pvc://` path must stay on its claim, even through symlinks.
fn inside_mount(path: &Path, mount: &Path) -> Result<(), FetchError> {
    let real = path
        .canonicalize()
        .map_err(|e| FetchError::from_io(path, e))?;
    let mount_real = mount
        .canonicalize()
        .map_err(|e| FetchError::from_io(mount, e))?;
    if !real.starts_with(&mount_real) {
        return Err(FetchError::Invalid(format!(
            "{} resolves to {}, outside the claim's mount {}",
            path.display(),
            real.display(),
            mount_real.display()
        )));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FetchError::Invalid(format!("a background task failed: {e}")))?
}

fn sha256_file(path: &Path, progress: &Progress) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(|e| FetchError::from_io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| FetchError::from_io(path, e))?;
        if n == 0 {
            return Ok(format!("{:x}", h.finalize()));
        }
        h.update(&buf[..n]);
        progress.add(n as u64);
    }
}

async fn check(shards: Vec<PathBuf>, quant: Option<String>) -> Result<ModelSummary, FetchError> {
    blocking(move || Ok(check::check_model(&shards, quant.as_deref())?)).await
}

/// A file already on the node: checked (and verified when a checksum is given) where it is.
async fn fetch_local(
    paths: Vec<PathBuf>,
    sha256: Option<String>,
    opts: &FetchOptions,
    progress: &Progress,
) -> Result<Fetched, FetchError> {
    let mut total = 0;
    for p in &paths {
        let md = std::fs::metadata(p).map_err(|e| FetchError::from_io(p, e))?;
        if !md.is_file() {
            return Err(FetchError::Invalid(format!(
                "{} is not a file",
                p.display()
            )));
        }
        total += md.len();
    }
    if let Some(want) = sha256 {
        progress.set_total(Some(total));
        progress.set_message(format!("verifying {}", paths[0].display()));
        let (p, pr) = (paths[0].clone(), progress.clone());
        let got = blocking(move || sha256_file(&p, &pr)).await?;
        if got != want {
            return Err(FetchError::Checksum {
                what: paths[0].display().to_string(),
                expected: want,
                actual: got,
                source_of_expected: "--sha256",
            });
        }
    }
    progress.set_message(format!("checking {}", paths[0].display()));
    let summary = check(paths.clone(), opts.quantization.clone()).await?;
    Ok(Fetched {
        path: paths[0].clone(),
        shards: paths,
        summary,
        downloaded: 0,
    })
}

async fn fetch_remote(
    remotes: Vec<Remote>,
    opts: &FetchOptions,
    progress: &Progress,
) -> Result<Fetched, FetchError> {
    std::fs::create_dir_all(&opts.cache_dir)
        .map_err(|e| FetchError::from_io(&opts.cache_dir, e))?;
    if remotes.iter().all(|r| r.size.is_some()) {
        progress.set_total(Some(remotes.iter().filter_map(|r| r.size).sum()));
    }
    let client = http::client(&opts.http, true)?;
    let n = remotes.len();
    // Held until every shard is in place and checked, so no shard is evicted under us.
    let mut guards: Vec<LockGuard> = Vec::new();
    let mut paths = Vec::new();
    let mut downloaded = 0;
    for (i, r) in remotes.iter().enumerate() {
        let entry = Entry::new(&opts.cache_dir, &r.rel);
        let name = r.rel.display().to_string();
        let of = if n > 1 {
            format!(" (file {} of {n})", i + 1)
        } else {
            String::new()
        };
        let mut announced = false;
        let claim = entry
            .claim(|partial| {
                if !announced {
                    tracing::info!(
                        "fetch: another process is downloading {name}; waiting to reuse it"
                    );
                    announced = true;
                }
                progress.set_message(format!(
                    "waiting for another download of {name}{of} ({partial} bytes so far)"
                ));
            })
            .await
            .map_err(|e| FetchError::from_io(&entry.path, e))?;
        match claim {
            Claim::Ready(guard) => {
                if let (Some((want, src)), Some(have)) = (&r.sha256, entry.recorded_sha256()) {
                    if *want != have {
                        return Err(FetchError::Invalid(format!(
                            "the cached {} has SHA-256 {have} but {src} says {want}: the source now serves another file under the same name and revision; remove the cached file (when no server uses it) to fetch again",
                            entry.path.display()
                        )));
                    }
                }
                let len = std::fs::metadata(&entry.path).map_or(0, |m| m.len());
                progress.add(len);
                tracing::info!("fetch: {} is in the cache", entry.path.display());
                guards.push(guard);
            }
            Claim::Download(guard) => {
                progress.set_message(format!("downloading {name}{of}"));
                downloaded += download_into(r, &entry, &guard, &client, opts, progress).await?;
                guards.push(guard);
            }
        }
        entry.touch();
        paths.push(entry.path.clone());
    }
    progress.set_message("checking the model");
    let summary = check(paths.clone(), opts.quantization.clone()).await?;
    drop(guards);
    Ok(Fetched {
        path: paths[0].clone(),
        shards: paths,
        summary,
        downloaded,
    })
}

/// Downloads one file into its cache entry (holding the exclusive claim): room first, then the bytes,
/// then the checksum and the file's own completeness, and only then the atomic rename.
async fn download_into(
    r: &Remote,
    entry: &Entry,
    guard: &LockGuard,
    client: &reqwest::Client,
    opts: &FetchOptions,
    progress: &Progress,
) -> Result<u64, FetchError> {
    let already = entry.partial_len();
    if let Some(size) = r.size {
        let need = size.saturating_sub(already);
        let removed = cache::make_room(&opts.cache_dir, need, entry, &opts.evict)
            .map_err(|e| FetchError::from_io(&opts.cache_dir, e))?;
        if !removed.is_empty() {
            tracing::info!("fetch: evicted {} file(s) to make room", removed.len());
        }
        let free = fs4::available_space(&opts.cache_dir)
            .map_err(|e| FetchError::from_io(&opts.cache_dir, e))?;
        if free < need {
            return Err(FetchError::DiskFull {
                path: entry.path.clone(),
                need,
                free,
            });
        }
        if let Some(max) = opts.evict.max_bytes {
            let used = cache::cache_bytes(&opts.cache_dir)
                .map_err(|e| FetchError::from_io(&opts.cache_dir, e))?;
            if used.saturating_add(need) > max {
                return Err(FetchError::Invalid(format!(
                    "the cache limit of {max} bytes cannot hold {} ({size} bytes): {used} bytes are in use or too recently used to evict",
                    entry.path.display()
                )));
            }
        }
    }
    let result = http::download(
        client,
        &r.url,
        r.token.as_deref(),
        &entry.partial,
        r.size,
        &opts.http,
        progress,
    )
    .await;
    let actual = match result {
        Ok(sha) => sha,
        Err(e @ FetchError::NoSpace { .. }) => {
            entry.discard_partial(guard);
            return Err(e);
        }
        Err(e) => return Err(e), // the partial file stays, to resume next time
    };
    if let Some((want, src)) = &r.sha256 {
        if *want != actual {
            entry.discard_partial(guard);
            return Err(FetchError::Checksum {
                what: r.url.clone(),
                expected: want.clone(),
                actual,
                source_of_expected: src,
            });
        }
    }
    // The file's own structure (header, every tensor inside the file) before it may look complete.
    let partial = entry.partial.clone();
    let parsed = blocking(move || {
        crate::gguf::GgufFile::open(&partial)
            .map(|_| ())
            .map_err(|source| {
                FetchError::Check(CheckError::Gguf {
                    path: partial.clone(),
                    source,
                })
            })
    })
    .await;
    if let Err(e) = parsed {
        entry.discard_partial(guard);
        return Err(e);
    }
    entry
        .commit(guard, &actual)
        .map_err(|e| FetchError::from_io(&entry.path, e))?;
    let len = std::fs::metadata(&entry.path).map_or(0, |m| m.len());
    tracing::info!(
        "fetch: {} complete ({len} bytes, sha256 {actual})",
        entry.path.display()
    );
    Ok(len)
}
