//! Prometheus metrics, prefix `kiln_`, base units, `_total` counters (names in ARCHITECTURE.md).

use crate::gpu::GpuInfo;
use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Labels of the per-GPU series.
const GPU_LABELS: &[&str] = &["gpu", "uuid", "pci_bus", "arch", "vendor"];

pub struct Metrics {
    registry: Registry,
    pub prompt_tokens: IntCounter,
    pub cached_tokens: IntCounter,
    pub generated_tokens: IntCounter,
    pub spec_drafted: IntCounter,
    pub spec_accepted: IntCounter,
    pub prefill_seconds: Counter,
    pub decode_seconds: Counter,
    pub prefill_tps: Gauge,
    pub decode_tps: Gauge,
    pub ttft: Histogram,
    pub request_duration: Histogram,
    pub ready: IntGauge,
    pub decode_batch_rows: Histogram,
    pub queue_depth: IntGauge,
    pub slots_busy: IntGauge,
    pub slots_total: IntGauge,
    pub requests: IntCounterVec,
    pub context_size: IntGaugeVec,
    pub context_downsizes: IntCounter,
    pub gpu_vram_total: GaugeVec,
    pub gpu_vram_used: GaugeVec,
    pub gpu_busy: GaugeVec,
    pub gpu_temperature: GaugeVec,
    pub gpu_power: GaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric");
                m
            }};
        }
        let latency = vec![
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ];
        Metrics {
            prompt_tokens: reg!(IntCounter::new(
                "kiln_prompt_tokens_total",
                "Prompt tokens received (tokens in), cached ones included"
            )),
            cached_tokens: reg!(IntCounter::new(
                "kiln_prompt_cached_tokens_total",
                "Prompt tokens reused from a slot's cache instead of computed"
            )),
            generated_tokens: reg!(IntCounter::new(
                "kiln_generated_tokens_total",
                "Tokens generated (tokens out)"
            )),
            spec_drafted: reg!(IntCounter::new(
                "kiln_spec_drafted_tokens_total",
                "Tokens the MTP head drafted for speculative decoding"
            )),
            spec_accepted: reg!(IntCounter::new(
                "kiln_spec_accepted_tokens_total",
                "Drafted tokens the main model accepted"
            )),
            prefill_seconds: reg!(Counter::new(
                "kiln_prefill_seconds_total",
                "Time spent computing prompts"
            )),
            decode_seconds: reg!(Counter::new(
                "kiln_decode_seconds_total",
                "Time spent decoding tokens"
            )),
            prefill_tps: reg!(Gauge::new(
                "kiln_prefill_tokens_per_second",
                "Prefill speed of the last request (computed prompt tokens / prefill time)"
            )),
            decode_tps: reg!(Gauge::new(
                "kiln_decode_tokens_per_second",
                "Decode speed of the last finished request"
            )),
            ttft: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "kiln_time_to_first_token_seconds",
                    "From request received to first generated token"
                )
                .buckets(latency.clone())
            )),
            request_duration: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "kiln_request_duration_seconds",
                    "Whole request time, generation endpoints"
                )
                .buckets(latency)
            )),
            ready: reg!(IntGauge::new(
                "kiln_ready",
                "1 while the model is loaded and warmed up (what /readyz and the pod's readiness probe see), else 0"
            )),
            decode_batch_rows: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "kiln_decode_batch_rows",
                    "Sequences whose next token went through one batched decode pass"
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
            )),
            queue_depth: reg!(IntGauge::new(
                "kiln_queue_depth",
                "Requests waiting for a free slot"
            )),
            slots_busy: reg!(IntGauge::new("kiln_slots_busy", "Slots serving a request")),
            slots_total: reg!(IntGauge::new(
                "kiln_slots",
                "Slots (--parallel); a gauge, so no _total suffix"
            )),
            requests: reg!(IntCounterVec::new(
                Opts::new(
                    "kiln_requests_total",
                    "HTTP requests by endpoint and status"
                ),
                &["endpoint", "status"]
            )),
            context_size: reg!(IntGaugeVec::new(
                Opts::new(
                    "kiln_context_size",
                    "Context size in tokens per slot: requested (--ctx) and effective (allocated)"
                ),
                &["kind"]
            )),
            context_downsizes: reg!(IntCounter::new(
                "kiln_context_downsizes_total",
                "Times the effective context was reduced because device memory ran low"
            )),
            gpu_vram_total: reg!(GaugeVec::new(
                Opts::new("kiln_gpu_vram_total_bytes", "Device memory of the GPU"),
                GPU_LABELS
            )),
            gpu_vram_used: reg!(GaugeVec::new(
                Opts::new(
                    "kiln_gpu_vram_used_bytes",
                    "Device memory in use on the GPU, by every process"
                ),
                GPU_LABELS
            )),
            gpu_busy: reg!(GaugeVec::new(
                Opts::new(
                    "kiln_gpu_busy_ratio",
                    "Fraction of time the GPU was busy (0 to 1)"
                ),
                GPU_LABELS
            )),
            gpu_temperature: reg!(GaugeVec::new(
                Opts::new("kiln_gpu_temperature_celsius", "GPU temperature"),
                GPU_LABELS
            )),
            gpu_power: reg!(GaugeVec::new(
                Opts::new("kiln_gpu_power_watts", "GPU power draw"),
                GPU_LABELS
            )),
            registry,
        }
    }

    /// Sets the per-GPU series from a sample; a value the driver does not report is left out.
    pub fn set_gpus(&self, gpus: &[GpuInfo]) {
        for g in gpus {
            let index = g.index.to_string();
            let labels = [
                index.as_str(),
                g.uuid.as_deref().unwrap_or(""),
                g.pci_bus.as_deref().unwrap_or(""),
                g.arch.as_str(),
                g.vendor.as_str(),
            ];
            self.gpu_vram_total
                .with_label_values(&labels)
                .set(g.vram_total_bytes as f64);
            self.gpu_vram_used
                .with_label_values(&labels)
                .set(g.vram_used_bytes as f64);
            let optional = [
                (&self.gpu_busy, g.busy_ratio),
                (&self.gpu_temperature, g.temperature_celsius),
                (&self.gpu_power, g.power_watts),
            ];
            for (vec, value) in optional {
                if let Some(v) = value {
                    vec.with_label_values(&labels).set(v);
                }
            }
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
