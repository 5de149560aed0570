//! The operator's own Prometheus metrics (reconciles, errors, durations, agent polls, leadership) and the
//! small HTTP server that exposes `/metrics` and `/healthz`.

use axum::{http::header, routing::get, Router};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: Histogram,
    agent_polls: IntCounterVec,
    leader: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let reconciles = IntCounterVec::new(
        Opts::new(
            "kiln_operator_reconciles_total",
            "Reconciles of InferenceService objects, by result.",
        ),
        &["result"],
    )
    .expect("static metric definition");
    let errors = IntCounterVec::new(
        Opts::new(
            "kiln_operator_reconcile_errors_total",
            "Failed reconciles, by error kind.",
        ),
        &["kind"],
    )
    .expect("static metric definition");
    let duration = Histogram::with_opts(
        HistogramOpts::new(
            "kiln_operator_reconcile_duration_seconds",
            "Time one reconcile takes, API calls and agent polls included.",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
    )
    .expect("static metric definition");
    let agent_polls = IntCounterVec::new(
        Opts::new(
            "kiln_operator_agent_status_polls_total",
            "GET /status calls to agent pods, by result.",
        ),
        &["result"],
    )
    .expect("static metric definition");
    let leader = IntGauge::new(
        "kiln_operator_leader",
        "1 while this replica holds the leader Lease.",
    )
    .expect("static metric definition");
    for c in [
        Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(errors.clone()),
        Box::new(duration.clone()),
        Box::new(agent_polls.clone()),
        Box::new(leader.clone()),
    ] {
        registry.register(c).expect("metric names are unique");
    }
    Metrics {
        registry,
        reconciles,
        errors,
        duration,
        agent_polls,
        leader,
    }
});

pub fn reconcile_done(result: &str, seconds: f64) {
    METRICS.reconciles.with_label_values(&[result]).inc();
    METRICS.duration.observe(seconds);
}

pub fn reconcile_error(kind: &str) {
    METRICS.errors.with_label_values(&[kind]).inc();
}

pub fn agent_poll(result: &str) {
    METRICS.agent_polls.with_label_values(&[result]).inc();
}

pub fn set_leader(leader: bool) {
    METRICS.leader.set(i64::from(leader));
}

fn render() -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The router for `/metrics` and `/healthz`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves the router on `addr` until the process ends.
pub async fn serve(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics address {addr}: {e}"))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, router()).await?;
    Ok(())
}
