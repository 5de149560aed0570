//! Prometheus metrics, prefix `kiln_`, base units, `_total` counters (names in ARCHITECTURE.md).

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub prompt_tokens: IntCounter,
    pub cached_tokens: IntCounter,
    pub generated_tokens: IntCounter,
    pub prefill_seconds: Counter,
    pub decode_seconds: Counter,
    pub prefill_tps: Gauge,
    pub decode_tps: Gauge,
    pub ttft: Histogram,
    pub request_duration: Histogram,
    pub queue_depth: IntGauge,
    pub slots_busy: IntGauge,
    pub slots_total: IntGauge,
    pub requests: IntCounterVec,
    pub context_size: IntGaugeVec,
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
            queue_depth: reg!(IntGauge::new(
                "kiln_queue_depth",
                "Requests waiting for a free slot"
            )),
            slots_busy: reg!(IntGauge::new("kiln_slots_busy", "Slots serving a request")),
            slots_total: reg!(IntGauge::new("kiln_slots_total", "Slots (--parallel)")),
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
            registry,
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
