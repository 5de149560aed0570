//! Download progress, shown three ways from one set of counters: a progress bar with rate and ETA on a
//! terminal, a periodic one-line log in pods (no terminal), and the agent status endpoint (`GET /status`,
//! phase `Fetching`) that the operator polls to show `Loading 43%`.

use axum::{routing::get, Json, Router};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `bytes_total` when the size is not known (a server that sends no length).
const UNKNOWN: u64 = u64::MAX;

/// Shared counters of one fetch. Cheap to clone.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    model: String,
    done: AtomicU64,
    total: AtomicU64,
    message: Mutex<String>,
}

/// The `fetch` object of the status contract.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FetchStatus {
    pub bytes_done: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// The agent status document while fetching (see the status contract; readers ignore unknown fields).
#[derive(Clone, Debug, Serialize)]
pub struct StatusDoc {
    pub phase: &'static str,
    pub message: String,
    pub model: String,
    pub fetch: FetchStatus,
}

impl Progress {
    pub fn new(model: impl Into<String>) -> Self {
        Progress {
            inner: Arc::new(Inner {
                model: model.into(),
                done: AtomicU64::new(0),
                total: AtomicU64::new(UNKNOWN),
                message: Mutex::new("starting".into()),
            }),
        }
    }

    pub fn set_total(&self, total: Option<u64>) {
        self.inner
            .total
            .store(total.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.inner.done.fetch_add(n, Ordering::Relaxed);
    }
    /// Takes back bytes that will be downloaded again (a server that ignored a Range request).
    pub fn sub(&self, n: u64) {
        let _ = self
            .inner
            .done
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(n))
            });
    }
    pub fn set_message(&self, m: impl Into<String>) {
        *self.inner.message.lock().unwrap_or_else(|p| p.into_inner()) = m.into();
    }
    pub fn message(&self) -> String {
        self.inner
            .message
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn fetch_status(&self) -> FetchStatus {
        let done = self.inner.done.load(Ordering::Relaxed);
        let total = self.inner.total.load(Ordering::Relaxed);
        let total = (total != UNKNOWN).then_some(total);
        FetchStatus {
            bytes_done: done,
            bytes_total: total,
            percent: total.map(|t| {
                if t == 0 {
                    100.0
                } else {
                    // One decimal is what a person reads; done can pass total only transiently.
                    ((done.min(t) as f64 / t as f64) * 1000.0).floor() / 10.0
                }
            }),
        }
    }

    pub fn status(&self) -> StatusDoc {
        StatusDoc {
            phase: "Fetching",
            message: self.message(),
            model: self.inner.model.clone(),
            fetch: self.fetch_status(),
        }
    }

    /// One line for logs: `43.1% (41.0 MiB of 95.1 MiB) 12.3 MiB/s, about 4s left: downloading …`.
    pub fn log_line(&self, rate_bytes_per_s: f64) -> String {
        let s = self.fetch_status();
        let rate = format!("{}/s", HumanBytes(rate_bytes_per_s.max(0.0) as u64));
        let amount = match (s.bytes_total, s.percent) {
            (Some(t), Some(p)) => {
                let eta = if rate_bytes_per_s > 0.0 {
                    let secs = t.saturating_sub(s.bytes_done) as f64 / rate_bytes_per_s;
                    format!(", about {}s left", secs.ceil() as u64)
                } else {
                    String::new()
                };
                format!(
                    "{p:.1}% ({} of {}) {rate}{eta}",
                    HumanBytes(s.bytes_done),
                    HumanBytes(t)
                )
            }
            _ => format!("{} {rate}", HumanBytes(s.bytes_done)),
        };
        format!("{amount}: {}", self.message())
    }
}

/// Shows progress until dropped: a bar when `tty`, else a log line every `interval` (to stderr, through
/// `tracing`).
pub struct Reporter {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Reporter {
    pub fn start(progress: Progress, tty: bool, interval: Duration) -> Self {
        if tty {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let b = bar.clone();
            let task = tokio::spawn(async move {
                loop {
                    let s = progress.fetch_status();
                    if let Some(t) = s.bytes_total {
                        b.set_length(t);
                    }
                    b.set_position(s.bytes_done);
                    b.set_message(progress.message());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            return Reporter {
                task,
                bar: Some(bar),
            };
        }
        let task = tokio::spawn(async move {
            let mut last = (Instant::now(), progress.fetch_status().bytes_done);
            loop {
                tokio::time::sleep(interval).await;
                let now = (Instant::now(), progress.fetch_status().bytes_done);
                let secs = now.0.duration_since(last.0).as_secs_f64();
                let rate = now.1.saturating_sub(last.1) as f64 / secs.max(1e-3);
                tracing::info!("fetch: {}", progress.log_line(rate));
                last = now;
            }
        });
        Reporter { task, bar: None }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Serves `GET /status` on `addr` until dropped. Returns the bound address (for port 0).
pub struct StatusServer {
    task: tokio::task::JoinHandle<()>,
    pub addr: SocketAddr,
}

impl StatusServer {
    pub async fn start(addr: SocketAddr, progress: Progress) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route(
            "/status",
            get(move || {
                let p = progress.clone();
                async move { Json(p.status()) }
            }),
        );
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("status endpoint stopped: {e}");
            }
        });
        Ok(StatusServer { task, addr })
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_contract() {
        let p = Progress::new("hf://o/r/m.gguf");
        let v = serde_json::to_value(p.status()).unwrap();
        assert_eq!(v["phase"], "Fetching");
        assert_eq!(v["fetch"]["bytes_done"], 0);
        assert!(v["fetch"].get("percent").is_none(), "unknown total: {v}");
        p.set_total(Some(1000));
        p.add(431);
        let v = serde_json::to_value(p.status()).unwrap();
        assert_eq!(v["fetch"]["bytes_total"], 1000);
        assert_eq!(v["fetch"]["percent"], 43.1);
        assert_eq!(v["model"], "hf://o/r/m.gguf");
        p.sub(1000);
        assert_eq!(p.fetch_status().bytes_done, 0);
        assert!(p.log_line(0.0).starts_with("0.0% (0 B of 1000 B)"));
    }
}
