//! The agents' `/status` contract (../shared status contract: phase, fetch progress, context, GPUs) and the
//! poller that reads it from each pod. Unknown fields are ignored so newer agents stay readable.

use k8s_openapi::api::core::v1::Pod;
use kiln_crds::AgentReport;
use kube::ResourceExt;
use serde::Deserialize;
use std::time::Duration;

/// What `GET /status` returns. Every field but `phase` is optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct AgentStatus {
    pub phase: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub fetch: Option<FetchProgress>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub context: Option<ContextReport>,
    #[serde(default)]
    pub gpus: Vec<GpuReport>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct FetchProgress {
    #[serde(default)]
    pub bytes_done: Option<u64>,
    #[serde(default)]
    pub bytes_total: Option<u64>,
    #[serde(default)]
    pub percent: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContextReport {
    #[serde(default)]
    pub requested: Option<u64>,
    #[serde(default)]
    pub effective: Option<u64>,
    #[serde(default)]
    pub downsizes_total: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct GpuReport {
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub vram_used_bytes: Option<u64>,
    #[serde(default)]
    pub vram_total_bytes: Option<u64>,
}

/// Phase recorded for a pod whose `/status` could not be read.
pub const UNREACHABLE: &str = "Unreachable";

impl AgentStatus {
    /// The CR's per-pod report. Numbers outside the CR's ranges are dropped, not wrapped.
    pub fn report(&self, pod: &str) -> AgentReport {
        let sum = |f: fn(&GpuReport) -> Option<u64>| -> Option<u64> {
            let values: Vec<u64> = self.gpus.iter().filter_map(f).collect();
            (!values.is_empty()).then(|| values.iter().fold(0u64, |a, b| a.saturating_add(*b)))
        };
        AgentReport {
            pod: pod.to_string(),
            phase: Some(self.phase.clone()),
            message: self.message.as_deref().map(|m| truncate(m, 256)),
            fetch_percent: self
                .fetch
                .as_ref()
                .and_then(|f| f.percent.or_else(|| percent(f.bytes_done?, f.bytes_total?)))
                .filter(|p| p.is_finite())
                .map(|p| (p.clamp(0.0, 100.0) * 10.0).round() / 10.0),
            effective_context_size: self
                .context
                .as_ref()
                .and_then(|c| c.effective)
                .and_then(|e| u32::try_from(e).ok()),
            vram_used_bytes: sum(|g| g.vram_used_bytes),
            vram_total_bytes: sum(|g| g.vram_total_bytes),
        }
    }
}

fn percent(done: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| done as f64 * 100.0 / total as f64)
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Reads `/status` from agent pods.
#[derive(Clone)]
pub struct Poller {
    http: reqwest::Client,
    /// URL with `{ip}` and `{port}` placeholders; tests point it at a local kiln-agent.
    url_template: String,
}

/// Largest `/status` body read: the contract is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

impl Poller {
    pub fn new(url_template: String, timeout: Duration) -> anyhow::Result<Poller> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Poller { http, url_template })
    }

    fn url(&self, ip: &str, port: i32) -> String {
        self.url_template
            .replace("{ip}", ip)
            .replace("{port}", &port.to_string())
    }

    /// The report of one pod, or None when the pod has no IP yet (not started).
    pub async fn poll(&self, pod: &Pod, port: i32) -> Option<AgentReport> {
        if pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
        let name = pod.name_any();
        let url = self.url(ip, port);
        match self.fetch(&url).await {
            Ok(status) => {
                crate::metrics::agent_poll("ok");
                Some(status.report(&name))
            }
            Err(e) => {
                crate::metrics::agent_poll("error");
                tracing::debug!(pod = %name, %url, error = %e, "agent status unavailable");
                Some(AgentReport {
                    pod: name,
                    phase: Some(UNREACHABLE.to_string()),
                    message: Some(truncate(&format!("GET {url}: {e}"), 256)),
                    ..Default::default()
                })
            }
        }
    }

    async fn fetch(&self, url: &str) -> anyhow::Result<AgentStatus> {
        let mut resp = self.http.get(url).send().await?.error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_BODY {
                anyhow::bail!("status body larger than {MAX_BODY} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_example_parses_and_unknown_fields_are_ignored() {
        let s: AgentStatus = serde_json::from_str(
            r#"{"phase":"Ready","message":"ok","fetch":{"bytes_done":123,"bytes_total":456,"percent":27.0},
                "model":"m.gguf","context":{"requested":131072,"effective":98304,"downsizes_total":1},
                "gpus":[{"index":0,"vendor":"amd","arch":"gfx1100","vram_used_bytes":1,"vram_total_bytes":2},
                        {"index":1,"vram_used_bytes":10,"vram_total_bytes":20}],
                "future_field":{"x":1}}"#,
        )
        .unwrap();
        let r = s.report("pod-a");
        assert_eq!(r.phase.as_deref(), Some("Ready"));
        assert_eq!(r.effective_context_size, Some(98304));
        assert_eq!(r.fetch_percent, Some(27.0));
        assert_eq!(
            (r.vram_used_bytes, r.vram_total_bytes),
            (Some(11), Some(22))
        );
    }

    #[test]
    fn only_phase_is_required_and_out_of_range_numbers_are_dropped() {
        let s: AgentStatus = serde_json::from_str(
            r#"{"phase":"Fetching","fetch":{"bytes_done":50,"bytes_total":200},"context":{"effective":99999999999}}"#,
        )
        .unwrap();
        let r = s.report("p");
        assert_eq!(r.fetch_percent, Some(25.0));
        assert_eq!(r.effective_context_size, None);
        assert_eq!(r.vram_used_bytes, None);
        assert!(serde_json::from_str::<AgentStatus>(r#"{"message":"no phase"}"#).is_err());
    }
}
