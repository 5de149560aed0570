//! `kiln-agent fetch` against a real HTTP server on 127.0.0.1 (axum, in the test) that serves real GGUF
//! files — small ones written with Kiln's GGUF writer, and SmolLM2 from the model cache — with switches
//! for faults: a connection cut in the middle of the body, 5xx bursts, a server that ignores Range, a
//! stalled server, a wrong checksum, a truncated file, two fetchers of one file, a full disk (a 1 MiB
//! tmpfs mounted by the test; it runs as root), and the Hugging Face hub's resolve protocol. Every case
//! ends in a complete verified file or a clean, explained failure with nothing corrupt in the cache.

mod common;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kiln_agent::fetch::cache::{self, EvictPolicy};
use kiln_agent::fetch::check::CheckError;
use kiln_agent::fetch::http::HttpOptions;
use kiln_agent::fetch::progress::Progress;
use kiln_agent::fetch::{fetch, FetchError, FetchOptions};
use kiln_agent::gguf::writer::{GgufWriter, TensorPlan};
use kiln_agent::gguf::Value;
use kiln_kernels::quant::GgmlType;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHUNK: usize = 16 << 10;
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_token";

// ---------------------------------------------------------------------------------------------------
// Test files

/// A small GGUF of architecture `arch` whose weight matrices are `rows`×256 values of type `ty`.
fn gguf(
    arch: &str,
    ty: GgmlType,
    file_type: Option<u32>,
    rows: u64,
    extra: Vec<(&str, Value)>,
) -> Vec<u8> {
    let mut metadata = vec![(
        "general.architecture".to_string(),
        Value::String(arch.into()),
    )];
    if let Some(ft) = file_type {
        metadata.push(("general.file_type".into(), Value::U32(ft)));
    }
    metadata.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    let matrix = |name: &str| TensorPlan {
        name: name.into(),
        dims: vec![256, rows],
        ty,
    };
    let w = GgufWriter {
        metadata,
        tensors: vec![
            matrix("token_embd.weight"),
            matrix("blk.0.attn_q.weight"),
            matrix("blk.0.ffn_up.weight"),
            TensorPlan {
                name: "blk.0.attn_norm.weight".into(),
                dims: vec![256],
                ty: GgmlType::F32,
            },
        ],
    };
    let mut out = Vec::new();
    w.write(&mut out, |i, r, row| {
        for (c, v) in row.iter_mut().enumerate() {
            *v = ((i * 7 + r * 13 + c) % 17) as f32 / 17.0 - 0.5;
        }
    })
    .unwrap();
    out
}

/// A Q8_0 llama model of about 210 KiB (`general.file_type` 7 = Q8_0).
fn q8_model() -> Vec<u8> {
    gguf("llama", GgmlType::Q8_0, Some(7), 256, vec![])
}

/// Changes one tensor's type in the header (the writer cannot quantize to types Kiln does not compute
/// with). The type id follows the name, `n_dims` and the dims of the tensor's info.
fn retype(mut file: Vec<u8>, tensor: &str, ty: GgmlType) -> Vec<u8> {
    let name = [&(tensor.len() as u64).to_le_bytes()[..], tensor.as_bytes()].concat();
    let at = file.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * n_dims;
    file[ty_at..ty_at + 4].copy_from_slice(&(ty as u32).to_le_bytes());
    file
}

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

// ---------------------------------------------------------------------------------------------------
// The server

/// Fault switches; counts apply to the next N GET responses of file bytes.
#[derive(Default)]
struct Faults {
    /// Cut the connection once the body reaches byte `cut_at` of the file.
    cut: AtomicU32,
    cut_at: AtomicU64,
    /// Answer 503.
    fail_5xx: AtomicU32,
    /// Answer every Range request with the whole file (200).
    ignore_range: AtomicBool,
    /// Stop sending (without closing) once the body reaches byte `stall_at`.
    stall: AtomicU32,
    stall_at: AtomicU64,
    /// Pause this long between chunks (a slow link).
    chunk_delay_ms: AtomicU64,
    /// Send no Content-Length (chunked), and none in HEAD answers.
    no_length: AtomicBool,
}

#[derive(Default)]
struct Server {
    files: Mutex<HashMap<String, Vec<u8>>>,
    faults: Faults,
    /// GET requests for file bytes, those answered with the whole file, and bytes sent.
    gets: AtomicU32,
    full_gets: AtomicU32,
    range_gets: AtomicU32,
    bytes_sent: AtomicU64,
    /// The hub: the token it requires, and a wrong checksum to announce instead of the real one.
    require_token: AtomicBool,
    hub_sha_override: Mutex<Option<String>>,
    /// Request targets as received (a proxy receives absolute URLs).
    targets: Mutex<Vec<String>>,
}

struct Served {
    base: String,
    state: Arc<Server>,
}

impl Served {
    async fn start(files: &[(&str, Vec<u8>)]) -> Served {
        let state = Arc::new(Server::default());
        {
            let mut f = state.files.lock().unwrap();
            for (name, bytes) in files {
                f.insert(name.to_string(), bytes.clone());
            }
        }
        let app = Router::new()
            .route("/files/{*path}", get(serve_file))
            .route("/{org}/{repo}/resolve/{rev}/{*path}", get(hub_resolve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Served { base, state }
    }
    fn url(&self, name: &str) -> String {
        format!("{}/files/{name}", self.base)
    }
    fn faults(&self) -> &Faults {
        &self.state.faults
    }
}

/// Takes one from a fault counter; true when the fault applies to this response.
fn take(c: &AtomicU32) -> bool {
    c.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok()
}

fn parse_range(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

async fn serve_file(
    State(s): State<Arc<Server>>,
    UrlPath(path): UrlPath<String>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    s.targets.lock().unwrap().push(uri.to_string());
    let Some(data) = s.files.lock().unwrap().get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let f = &s.faults;
    let len = data.len() as u64;
    let etag = format!("\"{}\"", &sha(&data)[..16]);
    if method == Method::HEAD {
        let r = Response::builder().header(header::ETAG, &etag);
        if f.no_length.load(SeqCst) {
            // A body of unknown length: no Content-Length at all.
            let none = futures_util::stream::empty::<Result<Vec<u8>, std::io::Error>>();
            return r.body(Body::from_stream(none)).unwrap();
        }
        return r
            .header(header::CONTENT_LENGTH, len)
            .body(Body::empty())
            .unwrap();
    }
    s.gets.fetch_add(1, SeqCst);
    if take(&f.fail_5xx) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let start = match parse_range(&headers) {
        Some(st) if !f.ignore_range.load(SeqCst) => {
            // If-Range: resume only the same version of the file.
            let same = headers
                .get(header::IF_RANGE)
                .is_none_or(|v| v.to_str().ok() == Some(etag.as_str()));
            if st >= len {
                return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            }
            if same {
                st
            } else {
                0
            }
        }
        _ => 0,
    };
    if start == 0 {
        s.full_gets.fetch_add(1, SeqCst);
    } else {
        s.range_gets.fetch_add(1, SeqCst);
    }
    let cut_at = take(&f.cut)
        .then(|| f.cut_at.load(SeqCst))
        .filter(|&c| c > start);
    // Stalls also a response that starts at that byte (a resume never gets past it).
    let stall_at = take(&f.stall)
        .then(|| f.stall_at.load(SeqCst))
        .filter(|&c| c >= start);
    let delay = Duration::from_millis(f.chunk_delay_ms.load(SeqCst));
    let stream_state = (start, data, s.clone());
    let body = futures_util::stream::unfold(stream_state, move |(pos, data, s)| async move {
        let end = data.len() as u64;
        if pos >= end {
            return None;
        }
        if cut_at.is_some_and(|c| pos >= c) {
            // Let what was sent reach the client first (a real drop happens while data flows).
            tokio::time::sleep(Duration::from_millis(50)).await;
            let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault: cut");
            // An error ends the body: hyper drops the connection mid-response.
            return Some((Err(err), (end, data, s)));
        }
        if stall_at.is_some_and(|c| pos >= c) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut n = (end - pos).min(CHUNK as u64);
        for limit in [cut_at, stall_at].into_iter().flatten() {
            if limit > pos {
                n = n.min(limit - pos);
            }
        }
        let chunk = data[pos as usize..(pos + n) as usize].to_vec();
        s.bytes_sent.fetch_add(n, SeqCst);
        Some((Ok::<_, std::io::Error>(chunk), (pos + n, data, s)))
    });
    let mut r = Response::builder().header(header::ETAG, &etag);
    if !f.no_length.load(SeqCst) {
        r = r.header(header::CONTENT_LENGTH, len - start);
    }
    if start > 0 {
        r = r.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", len - 1),
        );
    }
    r.body(Body::from_stream(body)).unwrap()
}

/// The hub's `resolve` endpoint: checks the token, resolves `main` to a commit, and redirects to the
/// storage with the file's facts on the redirect (as huggingface.co does for LFS files).
async fn hub_resolve(
    State(s): State<Arc<Server>>,
    UrlPath((org, repo, rev, path)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if s.require_token.load(SeqCst) {
        let want = format!("Bearer {TOKEN}");
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&want)
        {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    if rev != "main" && rev != COMMIT {
        return StatusCode::NOT_FOUND.into_response();
    }
    let key = format!("{org}/{repo}/{path}");
    let Some(data) = s.files.lock().unwrap().get(&key).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let linked = s
        .hub_sha_override
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| sha(&data));
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, format!("/files/{key}"))
        .header("x-repo-commit", COMMIT)
        .header("x-linked-etag", format!("\"{linked}\""))
        .header("x-linked-size", data.len())
        .body(Body::empty())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------------
// Helpers

fn options(cache: &Path) -> FetchOptions {
    FetchOptions {
        cache_dir: cache.to_path_buf(),
        sha256: None,
        quantization: None,
        hf_endpoint: "http://127.0.0.1:9".into(),
        hf_token: None,
        pvc_root: "/nonexistent".into(),
        http: HttpOptions {
            retries: 4,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            stall_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        },
        evict: EvictPolicy {
            max_bytes: None,
            grace: Duration::ZERO,
        },
    }
}

/// Every file under `dir` (relative), sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// After a failure: no model file is visible (only locks, and a partial download when `partial_ok`).
fn assert_nothing_visible(cache: &Path, partial_ok: bool) {
    for f in files_under(cache) {
        let name = f.rsplit('/').next().unwrap();
        let allowed = name.ends_with(".lock") || (partial_ok && name.ends_with(".partial"));
        assert!(
            allowed,
            "left in the cache after a failure: {f} (all: {:?})",
            files_under(cache)
        );
    }
}

async fn fetch_ok(uri: &str, opts: &FetchOptions) -> kiln_agent::fetch::Fetched {
    match fetch(uri, opts, &Progress::new(uri)).await {
        Ok(f) => f,
        Err(e) => panic!("fetch {uri}: {e}"),
    }
}

async fn fetch_err(uri: &str, opts: &FetchOptions) -> FetchError {
    match fetch(uri, opts, &Progress::new(uri)).await {
        Ok(f) => panic!("fetch {uri} should fail, got {}", f.path.display()),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_model_downloads_verified_and_is_reused_from_the_cache() {
    let Some(src) = common::cached_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let bytes = std::fs::read(&src).unwrap();
    let srv = Served::start(&[("SmolLM2-135M-Instruct.Q4_1.gguf", bytes.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.sha256 = Some(sha(&bytes));
    opts.quantization = Some("Q4_1".into());
    let url = srv.url("SmolLM2-135M-Instruct.Q4_1.gguf");
    let progress = Progress::new(&url);
    let got = fetch(&url, &opts, &progress).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), bytes);
    assert_eq!(got.downloaded, bytes.len() as u64);
    assert_eq!(got.summary.arch, "llama");
    assert_eq!(got.summary.file_type.as_deref(), Some("Q4_1"));
    assert_eq!(got.summary.majority_type, Some(GgmlType::Q4_1));
    let st = progress.fetch_status();
    assert_eq!(
        (st.bytes_done, st.bytes_total, st.percent),
        (bytes.len() as u64, Some(bytes.len() as u64), Some(100.0))
    );

    let again = fetch_ok(&url, &opts).await;
    assert_eq!(
        (again.path.clone(), again.downloaded),
        (got.path.clone(), 0)
    );
    assert_eq!(
        srv.state.gets.load(SeqCst),
        1,
        "the second fetch must come from the cache"
    );

    // The same file, declared as another quantization: refused before any load.
    let file_uri = format!("file://{}", src.display());
    opts.quantization = Some("Q4_K_M".into());
    let err = fetch_err(&file_uri, &opts).await;
    assert!(
        matches!(
            err,
            FetchError::Check(CheckError::QuantizationMismatch { .. })
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("Q4_K_M") && msg.contains("Q4_1"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_k_quant_model_matches_its_declared_quantization() {
    // Gemma 3 270M Q4_K_M: rows of 640 are not whole K-quant blocks, so most matrices fall back to Q5_0.
    let Some(src) = common::cached_model("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.quantization = Some("q4_k_m".into());
    let got = fetch_ok(&format!("file://{}", src.display()), &opts).await;
    assert_eq!(
        got.path, src,
        "a local file is checked in place, not copied"
    );
    assert_eq!(got.summary.arch, "gemma3");
    assert_eq!(got.summary.file_type.as_deref(), Some("Q4_K_M"));
    assert!(files_under(dir.path()).is_empty());
    opts.quantization = Some("Q8_0".into());
    let err = fetch_err(&format!("file://{}", src.display()), &opts).await;
    assert!(err.to_string().contains("general.file_type 15"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_with_a_range_request() {
    let model = q8_model();
    let srv = Served::start(&[("m.gguf", model.clone())]).await;
    srv.faults().cut.store(1, SeqCst);
    srv.faults().cut_at.store(100_000, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.sha256 = Some(sha(&model));
    let got = fetch_ok(&srv.url("m.gguf"), &opts).await;
    assert_eq!(std::fs::read(&got.path).unwrap(), model);
    // One whole request cut at byte 100 000, then one Range request from where the file ended: the first
    // bytes are not sent again.
    assert_eq!(srv.state.full_gets.load(SeqCst), 1);
    assert_eq!(srv.state.range_gets.load(SeqCst), 1);
    let sent = srv.state.bytes_sent.load(SeqCst);
    assert!(
        sent < model.len() as u64 + 100_000,
        "resumed, not restarted: {sent} bytes sent"
    );
    let files = files_under(dir.path());
    assert!(!files.iter().any(|f| f.ends_with(".partial")), "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_burst_is_retried_and_a_dead_server_fails_cleanly() {
    let model = q8_model();
    let srv = Served::start(&[("m.gguf", model.clone())]).await;
    srv.faults().fail_5xx.store(3, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let got = fetch_ok(&srv.url("m.gguf"), &opts).await;
    assert_eq!(std::fs::read(&got.path).unwrap(), model);
    assert_eq!(srv.state.gets.load(SeqCst), 4);

    let dir = tempfile::tempdir().unwrap();
    srv.faults().fail_5xx.store(1000, SeqCst);
    let t = Instant::now();
    let err = fetch_err(&srv.url("m.gguf"), &options(dir.path())).await;
    assert!(
        matches!(err, FetchError::RetriesExhausted { attempts: 5, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("503"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_nothing_visible(dir.path(), false);

    // Client errors are not retried, and say what to check.
    let err = fetch_err(&srv.url("missing.gguf"), &options(dir.path())).await;
    assert!(
        matches!(err, FetchError::HttpStatus { status: 404, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_range_is_downloaded_again_from_the_start() {
    let model = q8_model();
    let srv = Served::start(&[("m.gguf", model.clone())]).await;
    srv.faults().ignore_range.store(true, SeqCst);
    srv.faults().cut.store(1, SeqCst);
    srv.faults().cut_at.store(120_000, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.sha256 = Some(sha(&model));
    let progress = Progress::new("m");
    let got = fetch(&srv.url("m.gguf"), &opts, &progress).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), model);
    assert_eq!(srv.state.full_gets.load(SeqCst), 2);
    assert_eq!(srv.state.range_gets.load(SeqCst), 0);
    // The first 120 000 bytes were thrown away, not counted twice.
    assert_eq!(progress.fetch_status().bytes_done, model.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_is_abandoned_and_resumed_and_a_dead_one_fails() {
    let model = q8_model();
    let srv = Served::start(&[("m.gguf", model.clone())]).await;
    srv.faults().stall.store(1, SeqCst);
    srv.faults().stall_at.store(64 << 10, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.http.stall_timeout = Duration::from_millis(300);
    let t = Instant::now();
    let got = fetch_ok(&srv.url("m.gguf"), &opts).await;
    assert_eq!(std::fs::read(&got.path).unwrap(), model);
    assert_eq!(srv.state.range_gets.load(SeqCst), 1);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Stalls every time at the same byte: gives up after the retries, keeps the partial to resume later.
    let dir = tempfile::tempdir().unwrap();
    srv.faults().stall.store(1000, SeqCst);
    srv.faults().stall_at.store(64 << 10, SeqCst);
    let mut opts = options(dir.path());
    opts.http.stall_timeout = Duration::from_millis(200);
    opts.http.retries = 2;
    let err = fetch_err(&srv.url("m.gguf"), &opts).await;
    assert!(err.to_string().contains("stalled"), "{err}");
    assert_nothing_visible(dir.path(), true);
    let partial = files_under(dir.path())
        .into_iter()
        .find(|f| f.ends_with(".partial"))
        .unwrap();
    assert_eq!(
        std::fs::metadata(dir.path().join(&partial)).unwrap().len(),
        64 << 10
    );

    // The next fetch (the pod restarted) resumes from the partial file and completes.
    srv.faults().stall.store(0, SeqCst);
    let sent = srv.state.bytes_sent.load(SeqCst);
    let got = fetch_ok(&srv.url("m.gguf"), &opts).await;
    assert_eq!(std::fs::read(&got.path).unwrap(), model);
    assert_eq!(
        srv.state.bytes_sent.load(SeqCst) - sent,
        model.len() as u64 - (64 << 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_checksum_or_a_truncated_file_leaves_nothing_in_the_cache() {
    let model = q8_model();
    let truncated = model[..model.len() - 5000].to_vec();
    let srv = Served::start(&[("m.gguf", model.clone()), ("t.gguf", truncated)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.sha256 = Some("ab".repeat(32));
    let err = fetch_err(&srv.url("m.gguf"), &opts).await;
    assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains(&sha(&model)), "{err}");
    assert_nothing_visible(dir.path(), false);

    opts.sha256 = Some("not hex".into());
    assert!(matches!(
        fetch_err(&srv.url("m.gguf"), &opts).await,
        FetchError::Invalid(_)
    ));

    opts.sha256 = None;
    let err = fetch_err(&srv.url("t.gguf"), &opts).await;
    assert!(
        matches!(err, FetchError::Check(CheckError::Gguf { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_nothing_visible(dir.path(), false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fetchers_of_one_file_download_it_once() {
    let model = q8_model();
    let srv = Served::start(&[("m.gguf", model.clone())]).await;
    // ~14 chunks at 40 ms: the second fetcher arrives while the first downloads.
    srv.faults().chunk_delay_ms.store(40, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let url = srv.url("m.gguf");
    let (a, b) = tokio::join!(
        tokio::spawn({
            let (url, opts) = (url.clone(), opts.clone());
            async move { fetch_ok(&url, &opts).await }
        }),
        tokio::spawn({
            let (url, opts) = (url.clone(), opts.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                fetch_ok(&url, &opts).await
            }
        })
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.path, b.path);
    assert_eq!(std::fs::read(&a.path).unwrap(), model);
    assert_eq!(srv.state.gets.load(SeqCst), 1, "one download for both");
    assert_eq!(a.downloaded + b.downloaded, model.len() as u64);
}

/// A tmpfs of `size` mounted for the test and unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "the full-disk test mounts a tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_before_downloading_or_cleans_up_when_it_fills() {
    // ~1.6 MiB of Q8_0 on a 1 MiB disk.
    let big = gguf("llama", GgmlType::Q8_0, Some(7), 2048, vec![]);
    let srv = Served::start(&[("big.gguf", big.clone())]).await;
    let disk = Tmpfs::mount("1m");
    let opts = options(disk.0.path());
    let err = fetch_err(&srv.url("big.gguf"), &opts).await;
    assert!(matches!(err, FetchError::DiskFull { .. }), "{err}");
    assert_eq!(srv.state.gets.load(SeqCst), 0, "refused before downloading");
    assert_nothing_visible(disk.0.path(), false);

    // A server that does not say the size: the disk fills during the download.
    srv.faults().no_length.store(true, SeqCst);
    let err = fetch_err(&srv.url("big.gguf"), &opts).await;
    assert!(matches!(err, FetchError::NoSpace { .. }), "{err}");
    assert_nothing_visible(disk.0.path(), false);
    assert!(
        fs4::available_space(disk.0.path()).unwrap() > 900 << 10,
        "the partial file was removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hf_uris_map_to_the_hub_with_token_commit_checksum_and_split_files() {
    let model = q8_model();
    let shard = |no: u16| {
        let extra = vec![("split.count", Value::U16(2)), ("split.no", Value::U16(no))];
        // Only the first shard carries the model's metadata (as gguf-split writes them).
        let arch = if no == 0 { "qwen3" } else { "" };
        gguf(arch, GgmlType::Q4_0, (no == 0).then_some(2), 128, extra)
    };
    let srv = Served::start(&[
        ("org/repo/dir/model-Q8_0.gguf", model.clone()),
        ("org/repo/m-00001-of-00002.gguf", shard(0)),
        ("org/repo/m-00002-of-00002.gguf", shard(1)),
    ])
    .await;
    srv.state.require_token.store(true, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.hf_endpoint = srv.base.clone();

    let err = fetch_err("hf://org/repo/dir/model-Q8_0.gguf", &opts).await;
    assert!(
        matches!(err, FetchError::HttpStatus { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");

    opts.hf_token = Some(TOKEN.into());
    opts.quantization = Some("Q8_0".into());
    let got = fetch_ok("hf://org/repo/dir/model-Q8_0.gguf", &opts).await;
    assert_eq!(
        got.path,
        dir.path()
            .join(format!("hf/org/repo/{COMMIT}/dir/model-Q8_0.gguf"))
    );
    assert_eq!(std::fs::read(&got.path).unwrap(), model);
    // The bytes came through the hub's redirect to its storage, for the resolved commit.
    let targets = srv.state.targets.lock().unwrap().clone();
    assert!(
        targets.contains(&"/files/org/repo/dir/model-Q8_0.gguf".to_string()),
        "{targets:?}"
    );

    // A revision that does not exist.
    let err = fetch_err("hf://org/repo/dir/model-Q8_0.gguf@v9", &opts).await;
    assert!(
        matches!(err, FetchError::HttpStatus { status: 404, .. }),
        "{err}"
    );

    // The hub's checksum is checked when the spec gives none.
    let dir2 = tempfile::tempdir().unwrap();
    let mut opts2 = opts.clone();
    opts2.cache_dir = dir2.path().into();
    *srv.state.hub_sha_override.lock().unwrap() = Some("cd".repeat(32));
    let err = fetch_err("hf://org/repo/dir/model-Q8_0.gguf", &opts2).await;
    assert!(err.to_string().contains("the hub (x-linked-etag)"), "{err}");
    assert_nothing_visible(dir2.path(), false);
    *srv.state.hub_sha_override.lock().unwrap() = None;

    // A split GGUF: naming any shard fetches them all; the path to load is the first.
    opts.quantization = Some("Q4_0".into());
    let got = fetch_ok("hf://org/repo/m-00002-of-00002.gguf@main", &opts).await;
    assert_eq!(got.shards.len(), 2);
    assert!(
        got.path
            .ends_with(format!("{COMMIT}/m-00001-of-00002.gguf")),
        "{}",
        got.path.display()
    );
    assert!(got.shards[1].exists());
    assert_eq!(got.summary.arch, "qwen3");
    assert_eq!(got.summary.n_tensors, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files_are_checked_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let opts_for = |root: &Path| FetchOptions {
        pvc_root: root.to_path_buf(),
        ..options(&dir.path().join("cache"))
    };
    let claims = dir.path().join("pvc");
    std::fs::create_dir_all(claims.join("models/q8")).unwrap();
    std::fs::write(claims.join("models/q8/m.gguf"), q8_model()).unwrap();
    std::fs::write(
        claims.join("models/mamba.gguf"),
        gguf("mamba", GgmlType::Q8_0, None, 32, vec![]),
    )
    .unwrap();
    let q2k = retype(
        gguf("llama", GgmlType::Q4_0, Some(10), 32, vec![]),
        "blk.0.attn_q.weight",
        GgmlType::Q2_K,
    );
    std::fs::write(claims.join("models/q2k.gguf"), q2k).unwrap();
    std::fs::write(claims.join("models/text.gguf"), b"<html>not found</html>").unwrap();
    std::fs::write(dir.path().join("outside.gguf"), q8_model()).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("outside.gguf"),
        claims.join("models/escape.gguf"),
    )
    .unwrap();
    let opts = opts_for(&claims);

    let got = fetch_ok("pvc://models/q8/m.gguf", &opts).await;
    assert_eq!(got.path, claims.join("models/q8/m.gguf"));
    assert!(!dir.path().join("cache").exists(), "nothing copied");

    for (uri, want) in [
        (
            "pvc://models/mamba.gguf",
            "architecture `mamba` is not supported",
        ),
        (
            "pvc://models/q2k.gguf",
            "has type Q2_K, which Kiln cannot compute with",
        ),
        ("pvc://models/text.gguf", "not a GGUF file"),
        ("pvc://models/escape.gguf", "outside the claim's mount"),
        ("pvc://models/none.gguf", "No such file"),
        (
            "pvc://models/../pvc/models/q8/m.gguf",
            "without `.` or `..`",
        ),
    ] {
        let err = fetch_err(uri, &opts).await.to_string();
        assert!(err.contains(want), "{uri}: {err}");
    }
    let mut opts = opts;
    opts.quantization = Some("Q4_K_M".into());
    let err = fetch_err("pvc://models/q8/m.gguf", &opts).await.to_string();
    assert!(err.contains("declares Q8_0 (general.file_type 7)"), "{err}");
    opts.quantization = Some("Q9_X".into());
    let err = fetch_err("pvc://models/q8/m.gguf", &opts).await.to_string();
    assert!(err.contains("unknown quantization `Q9_X`"), "{err}");
    // Without general.file_type the tensors decide.
    std::fs::write(
        claims.join("models/nofiletype.gguf"),
        gguf("llama", GgmlType::Q8_0, None, 32, vec![]),
    )
    .unwrap();
    opts.quantization = Some("Q4_0".into());
    let err = fetch_err("pvc://models/nofiletype.gguf", &opts)
        .await
        .to_string();
    assert!(err.contains("stores most weight matrices as Q8_0"), "{err}");
    opts.quantization = Some("Q8_0".into());
    fetch_ok("pvc://models/nofiletype.gguf", &opts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_size_limit_but_never_removes_a_file_in_use() {
    let a = q8_model();
    let b = gguf("llama", GgmlType::Q8_0, Some(7), 224, vec![]);
    let srv = Served::start(&[("a.gguf", a.clone()), ("b.gguf", b.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    let got_a = fetch_ok(&srv.url("a.gguf"), &opts).await;

    // A server holds a.gguf: a limit too small for both cannot evict it.
    opts.evict.max_bytes = Some((a.len() + b.len()) as u64 - 1);
    let in_use = cache::hold_in_use(&got_a.path).unwrap();
    assert!(in_use.is_some(), "a cached file has a lock beside it");
    // Through a link into the cache (`fetch --link`, what serve is given) it is the same lock.
    let link = dir.path().join("a-link.gguf");
    std::os::unix::fs::symlink(&got_a.path, &link).unwrap();
    assert!(cache::hold_in_use(&link).unwrap().is_some());
    let err = fetch_err(&srv.url("b.gguf"), &opts).await.to_string();
    assert!(err.contains("cache limit"), "{err}");
    assert!(got_a.path.exists());

    // Released: the least recently used file goes, the new one fits.
    drop(in_use);
    let got_b = fetch_ok(&srv.url("b.gguf"), &opts).await;
    assert!(!got_a.path.exists(), "a.gguf evicted");
    assert_eq!(std::fs::read(&got_b.path).unwrap(), b);
    assert!(cache::cache_bytes(dir.path()).unwrap() <= opts.evict.max_bytes.unwrap());

    // Within the grace period a file is kept even when not locked.
    opts.evict.grace = Duration::from_secs(600);
    let err = fetch_err(&srv.url("a.gguf"), &opts).await.to_string();
    assert!(err.contains("cache limit"), "{err}");
    assert!(got_b.path.exists());
    // A file outside any cache needs no lock.
    assert!(cache::hold_in_use(Path::new("/etc/hostname"))
        .unwrap()
        .is_none());
}

// ---------------------------------------------------------------------------------------------------
// The binary, driven as the operator's init container drives it.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-agent"));
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HF_TOKEN",
        "HF_ENDPOINT",
    ] {
        c.env_remove(v);
    }
    c.env("KILN_LOG", "info");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_status_while_fetching_and_prints_the_path() {
    let model = q8_model();
    let srv = Served::start(&[("m.gguf", model.clone())]).await;
    srv.faults().chunk_delay_ms.store(60, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = agent()
        .args(["fetch", &srv.url("m.gguf"), "--to"])
        .arg(dir.path())
        .args([
            "--quantization",
            "Q8_0",
            "--sha256",
            &sha(&model),
            "--status-addr",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--log-interval-s", "0.2", "--link"])
        .arg(dir.path().join("m.gguf"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status_url = format!("http://127.0.0.1:{port}/status");
    while Instant::now() < deadline {
        if let Ok(r) = client.get(&status_url).send().await {
            if let Ok(v) =
                serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap_or_default())
            {
                seen.push(v);
            }
        }
        if srv.state.bytes_sent.load(SeqCst) == model.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let path = String::from_utf8(out.stdout).unwrap();
    assert_eq!(std::fs::read(path.trim()).unwrap(), model);
    // --link: the name serve is given points at the cached file, relative to the cache's root.
    let link = dir.path().join("m.gguf");
    let pointee = std::fs::read_link(&link).unwrap();
    assert!(pointee.is_relative(), "{pointee:?}");
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        Path::new(path.trim()).canonicalize().unwrap()
    );
    // Progress as the operator sees it: phase Fetching, a percentage that grows below 100.
    let partial: Vec<f64> = seen
        .iter()
        .filter(|v| v["phase"] == "Fetching")
        .filter_map(|v| v["fetch"]["percent"].as_f64())
        .filter(|p| *p > 0.0 && *p < 100.0)
        .collect();
    assert!(partial.len() >= 2, "status while downloading: {seen:?}");
    assert!(partial.windows(2).all(|w| w[0] <= w[1]), "{partial:?}");
    assert!(
        seen.iter()
            .filter(|v| v["fetch"]["percent"].is_number())
            .all(|v| v["fetch"]["bytes_total"] == model.len()),
        "{seen:?}"
    );
    // Logs without a terminal: periodic one-line progress.
    assert!(
        stderr.contains("fetch: ") && stderr.contains("% ("),
        "{stderr}"
    );
    // Done: the status endpoint is gone with the process.
    assert!(client.get(&status_url).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_fails_with_a_clear_message_and_honours_proxy_variables() {
    let model = q8_model();
    let srv = Served::start(&[("m.gguf", model.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let mut c = agent();
        c.args(&args).envs(env);
        c.output().unwrap()
    };
    let to = dir.path().display().to_string();
    let out = run(
        vec![
            "fetch".into(),
            srv.url("m.gguf"),
            "--to".into(),
            to.clone(),
            "--quantization".into(),
            "Q4_K_M".into(),
        ],
        vec![],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("kiln-agent: fetching")
            && stderr.contains("the spec says quantization Q4_K_M"),
        "{stderr}"
    );

    // Through a proxy: the agent asks the proxy (our server) for an absolute URL of a host that does not
    // resolve; only a client that honours HTTP_PROXY can succeed.
    let out = run(
        vec![
            "fetch".into(),
            "http://models.invalid/files/m.gguf".into(),
            "--to".into(),
            to,
        ],
        vec![("HTTP_PROXY", srv.base.clone())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let targets = srv.state.targets.lock().unwrap().clone();
    assert!(
        targets
            .iter()
            .any(|t| t == "http://models.invalid/files/m.gguf"),
        "{targets:?}"
    );
}
