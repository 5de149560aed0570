//! Downloading one file over HTTP(S), robustly: streamed to a partial file, resumed with a Range request
//! after a drop (guarded by `If-Range` so a changed file restarts instead of mixing versions), retried
//! with exponential backoff and full jitter, abandoned when no byte arrives for the stall timeout.
//! The proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) are honoured by the client.

use super::progress::Progress;
use super::FetchError;
use futures_util::StreamExt;
use rand::Rng;
use reqwest::header::{self, HeaderMap};
use reqwest::{Client, StatusCode};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Knobs of the HTTP client; the defaults suit a multi-gigabyte download over a flaky link, tests shrink
/// them.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Failed attempts in a row (without a byte of progress) before giving up.
    pub retries: u32,
    /// First backoff; doubled per failed attempt, capped at `backoff_max`, then jittered (×0.5–1).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A response that sends no byte for this long is abandoned (and resumed).
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            retries: 8,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

pub fn client(opts: &HttpOptions, follow_redirects: bool) -> Result<Client, FetchError> {
    // TLS through rustls with the ring provider; installing it again (a second client) is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let policy = if follow_redirects {
        reqwest::redirect::Policy::limited(10)
    } else {
        reqwest::redirect::Policy::none()
    };
    Client::builder()
        .user_agent(concat!("kiln-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(opts.connect_timeout)
        .redirect(policy)
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))
}

/// What a server says about a file before we download it.
#[derive(Clone, Debug, Default)]
pub struct RemoteMeta {
    pub size: Option<u64>,
    /// The hub's checksum of an LFS file (`x-linked-etag`).
    pub sha256: Option<String>,
    /// The commit a hub revision resolved to (`x-repo-commit`).
    pub commit: Option<String>,
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?
        .to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn status_error(url: &str, status: StatusCode) -> FetchError {
    let hint = match status.as_u16() {
        401 | 403 => "; a gated or private Hugging Face repository needs HF_TOKEN",
        404 => "; check the repository, revision and file name",
        _ => "",
    };
    FetchError::HttpStatus {
        url: url.to_string(),
        status: status.as_u16(),
        hint,
    }
}

fn retryable_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

/// Asks for the file's size (and, from the hub, its checksum and commit) without downloading it. The
/// hub answers a resolve HEAD with a redirect to its storage and puts the facts on the redirect, so the
/// client passed here must not follow redirects; any other server's 200 answer is read the same way.
pub async fn head(
    client: &Client,
    url: &str,
    token: Option<&str>,
    opts: &HttpOptions,
) -> Result<RemoteMeta, FetchError> {
    let mut attempt = 0;
    loop {
        let mut req = client.head(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let failure = match send(req, opts).await {
            Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => {
                let h = resp.headers();
                // A zero length is what some servers say when they do not know it.
                let size = header_str(h, "x-linked-size")
                    .and_then(|s| s.parse().ok())
                    .or_else(|| {
                        resp.status()
                            .is_success()
                            .then(|| header_str(h, header::CONTENT_LENGTH.as_str()))
                            .flatten()
                            .and_then(|s| s.parse().ok())
                    })
                    .filter(|&n: &u64| n > 0);
                let sha256 = header_str(h, "x-linked-etag")
                    .filter(|s| is_sha256(s))
                    .map(str::to_ascii_lowercase);
                let commit = header_str(h, "x-repo-commit")
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()))
                    .map(str::to_string);
                return Ok(RemoteMeta {
                    size,
                    sha256,
                    commit,
                });
            }
            Ok(resp) if retryable_status(resp.status()) => format!("HTTP {}", resp.status()),
            // Some servers refuse HEAD: the download itself will tell.
            Ok(resp) if resp.status() == StatusCode::METHOD_NOT_ALLOWED => {
                return Ok(RemoteMeta::default())
            }
            Ok(resp) => return Err(status_error(url, resp.status())),
            Err(why) => why,
        };
        attempt += 1;
        if attempt > opts.retries {
            return Err(FetchError::RetriesExhausted {
                url: url.into(),
                attempts: attempt,
                last: failure,
            });
        }
        backoff(opts, attempt, url, &failure).await;
    }
}

/// Sends a request; a server that accepts the connection but never answers counts as stalled.
async fn send(
    req: reqwest::RequestBuilder,
    opts: &HttpOptions,
) -> Result<reqwest::Response, String> {
    match tokio::time::timeout(opts.stall_timeout, req.send()).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!(
            "no response for {:.1}s (stalled)",
            opts.stall_timeout.as_secs_f64()
        )),
    }
}

/// A reqwest error as a person reads it (the chain of causes, not just "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

async fn backoff(opts: &HttpOptions, attempt: u32, url: &str, failure: &str) {
    let exp = opts
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(opts.backoff_max);
    // Jitter (half to all of the delay): many pods restarting together must not retry in lockstep.
    let wait = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
    tracing::warn!(
        "fetch: {url}: {failure}; retry {attempt}/{} in {:.1}s",
        opts.retries,
        wait.as_secs_f64()
    );
    tokio::time::sleep(wait).await;
}

fn io_err(path: &Path, e: std::io::Error) -> FetchError {
    FetchError::from_io(path, e)
}

/// Hashes the bytes already in a partial file (a resumed download is verified as one whole).
async fn hash_prefix(path: &Path, len: u64) -> Result<Sha256, FetchError> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = f.read(&mut buf).await.map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        let n = n.min(left as usize);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h)
}

/// How one attempt ended.
enum Attempt {
    Done,
    /// Try again (and say why); `progressed` resets the count of failures in a row.
    Retry {
        why: String,
        progressed: bool,
    },
}

/// A `Content-Range: bytes START-END/TOTAL` header's start and total.
fn content_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = header_str(h, header::CONTENT_RANGE.as_str())?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.parse().ok()?;
    Some((start, total.parse().ok()))
}

/// Downloads `url` into `partial`, resuming from whatever `partial` already holds, and returns the
/// SHA-256 (lower-case hex) of the complete file. `expected_size` (from a HEAD) catches a body that ends
/// early. Progress counts every byte that lands in the file.
pub async fn download(
    client: &Client,
    url: &str,
    token: Option<&str>,
    partial: &Path,
    expected_size: Option<u64>,
    opts: &HttpOptions,
    progress: &Progress,
) -> Result<String, FetchError> {
    let mut have = tokio::fs::metadata(partial).await.map_or(0, |m| m.len());
    if expected_size.is_some_and(|s| have > s) {
        // Longer than the file can be: not ours to resume.
        tokio::fs::remove_file(partial)
            .await
            .map_err(|e| io_err(partial, e))?;
        have = 0;
    }
    let mut hasher = if have > 0 {
        tracing::info!("fetch: resuming {url} at byte {have}");
        hash_prefix(partial, have).await?
    } else {
        Sha256::new()
    };
    progress.add(have);
    let mut etag: Option<String> = None;
    let mut failures = 0;
    loop {
        let attempt = download_once(
            client,
            url,
            token,
            partial,
            expected_size,
            opts,
            progress,
            &mut have,
            &mut hasher,
            &mut etag,
        )
        .await?;
        match attempt {
            Attempt::Done => return Ok(format!("{:x}", hasher.finalize())),
            Attempt::Retry { why, progressed } => {
                if progressed {
                    failures = 0;
                }
                failures += 1;
                if failures > opts.retries {
                    return Err(FetchError::RetriesExhausted {
                        url: url.into(),
                        attempts: failures,
                        last: why,
                    });
                }
                backoff(opts, failures, url, &why).await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn download_once(
    client: &Client,
    url: &str,
    token: Option<&str>,
    partial: &Path,
    expected_size: Option<u64>,
    opts: &HttpOptions,
    progress: &Progress,
    have: &mut u64,
    hasher: &mut Sha256,
    etag: &mut Option<String>,
) -> Result<Attempt, FetchError> {
    let retry = |why: String| {
        Ok(Attempt::Retry {
            why,
            progressed: false,
        })
    };
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if *have > 0 {
        req = req.header(header::RANGE, format!("bytes={have}-"));
        if let Some(tag) = etag.as_deref() {
            // Only a strong validator makes a resumed file one version of the file.
            if !tag.starts_with("W/") {
                req = req.header(header::IF_RANGE, tag);
            }
        }
    }
    let resp = match send(req, opts).await {
        Ok(r) => r,
        Err(why) => return retry(why),
    };
    let status = resp.status();
    let restart = |have: &mut u64, hasher: &mut Sha256| {
        progress.sub(*have);
        *have = 0;
        *hasher = Sha256::new();
    };
    let mut truncate = false;
    match status {
        StatusCode::PARTIAL_CONTENT if *have > 0 => match content_range(resp.headers()) {
            Some((start, _)) if start == *have => {}
            _ => {
                // A range we did not ask for: start over rather than guess.
                restart(have, hasher);
                let _ = tokio::fs::remove_file(partial).await;
                return retry("the server answered with an unexpected Content-Range".into());
            }
        },
        StatusCode::OK => {
            if *have > 0 {
                tracing::warn!(
                    "fetch: {url}: the server ignored the Range request (or the file changed); starting over"
                );
                restart(have, hasher);
                truncate = true;
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE if expected_size == Some(*have) => {
            return Ok(Attempt::Done);
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            restart(have, hasher);
            let _ = tokio::fs::remove_file(partial).await;
            return retry("the server refused to resume (416); starting over".into());
        }
        s if retryable_status(s) => return retry(format!("HTTP {s}")),
        s => return Err(status_error(url, s)),
    }
    if let Some(tag) = resp
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
    {
        *etag = Some(tag.to_string());
    }
    let total = match status {
        StatusCode::PARTIAL_CONTENT => content_range(resp.headers()).and_then(|(_, t)| t),
        _ => resp.content_length(),
    }
    .or(expected_size);
    if let (Some(t), Some(e)) = (total, expected_size) {
        if t != e {
            return Err(FetchError::SizeMismatch {
                url: url.into(),
                expected: e,
                got: t,
            });
        }
    }

    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!truncate)
        .truncate(truncate)
        .open(partial)
        .await
        .map_err(|e| io_err(partial, e))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut body = resp.bytes_stream();
    let start = *have;
    let ended = loop {
        let next = match tokio::time::timeout(opts.stall_timeout, body.next()).await {
            Err(_) => {
                break Some(format!(
                    "no data for {:.1}s (stalled)",
                    opts.stall_timeout.as_secs_f64()
                ))
            }
            Ok(n) => n,
        };
        match next {
            None => break None,
            Some(Err(e)) => break Some(describe(&e)),
            Some(Ok(chunk)) => {
                if total.is_some_and(|t| *have + chunk.len() as u64 > t) {
                    break Some("the server sent more bytes than the file has".into());
                }
                out.write_all(&chunk)
                    .await
                    .map_err(|e| io_err(partial, e))?;
                hasher.update(&chunk);
                *have += chunk.len() as u64;
                progress.add(chunk.len() as u64);
            }
        }
    };
    out.flush().await.map_err(|e| io_err(partial, e))?;
    let progressed = *have > start;
    if let Some(why) = ended {
        if why.contains("more bytes") {
            // Our byte count and the file disagree: nothing here can be trusted.
            restart(have, hasher);
            let _ = tokio::fs::remove_file(partial).await;
        }
        return Ok(Attempt::Retry { why, progressed });
    }
    match total {
        Some(t) if *have < t => Ok(Attempt::Retry {
            why: format!("the connection closed after {have} of {t} bytes"),
            progressed,
        }),
        _ => Ok(Attempt::Done),
    }
}
