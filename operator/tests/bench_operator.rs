//! Bench (ignored by default; run by bench/operator/run.sh): N InferenceServices created at once against the
//! real control plane; time until every one has its Deployment and Service, and the reconcile duration
//! quantiles from the operator's own histogram (kiln_operator_reconcile_duration_seconds).

mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kiln_crds::InferenceService;
use kube::api::{ListParams, PostParams};
use kube::Api;
use std::time::{Duration, Instant};

/// Quantile q from cumulative Prometheus buckets (upper bound, count), interpolating inside a bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let inside = (count - prev.1).max(1.0);
            return prev.0 + (le - prev.0) * (rank - prev.1) / inside;
        }
        prev = (le, count);
    }
    prev.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "bench: run with bench/operator/run.sh"]
async fn bench_many_inference_services() {
    let Some(admin) = kubeconfig_or_skip("bench_many_inference_services") else {
        return;
    };
    let n: usize = std::env::var("KILN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let client = client_for(&admin).await;
    install_crd(&client).await;
    let ns = namespace(&client, "bench").await;
    let op = Operator::start(
        &operator_kubeconfig(&admin),
        &ns,
        &["--status-interval-s", "10"],
    );
    wait_for("the operator to lead", Duration::from_secs(30), || async {
        (op.metric("kiln_operator_leader").await? == 1.0).then_some(())
    })
    .await;

    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    let creates = (0..n).map(|i| {
        let isvcs = isvcs.clone();
        async move {
            let obj = service(&format!(
                "apiVersion: kiln.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: b-{i}}}\nspec:\n  \
                 preset: smollm2-135m-cpu\n  model: {{uri: \"hf://o/r/m-{i}.gguf\"}}\n"
            ));
            isvcs.create(&PostParams::default(), &obj).await.unwrap();
        }
    });
    futures::stream::iter(creates)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let created = start.elapsed();
    wait_for("every child", Duration::from_secs(600), || async {
        let d = deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        let s = services
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        (d == n && s == n).then_some(())
    })
    .await;
    let all_children = start.elapsed();
    // Let the first status writes settle, then read the histogram.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = op.metrics().await.unwrap();
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("kiln_operator_reconcile_duration_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let reconciles = buckets.last().map(|b| b.1).unwrap_or(0.0);
    println!(
        "BENCH n={n} create_all={:.2}s all_children_present={:.2}s reconciles={reconciles} \
         reconcile_p50={:.0}ms reconcile_p99={:.0}ms",
        created.as_secs_f64(),
        all_children.as_secs_f64(),
        quantile(&buckets, 0.5) * 1000.0,
        quantile(&buckets, 0.99) * 1000.0
    );
    assert!(reconciles >= n as f64);
    delete_namespace(&client, &ns).await;
}

use futures::StreamExt;
