//! Disruption against a real control plane: two operator replicas with a leader Lease, the leader killed in
//! the middle of reconciling a batch (the standby takes over; no duplicate children, everything converges),
//! then kube-apiserver itself restarted (the operator's watches and lease recover and it reconciles again).
//! One test function: it restarts the API server, so nothing else may run beside it (its own test binary).

mod common;

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Service;
use kiln_crds::InferenceService;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATCH: usize = 30;

fn tiny(name: &str) -> InferenceService {
    service(&format!(
        r#"
apiVersion: kiln.dev/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  preset: smollm2-135m-cpu
  model: {{uri: "file:///models/SmolLM2-135M-Instruct.Q4_1.gguf"}}
"#
    ))
}

async fn leader_of(ops: &[&Operator]) -> Option<usize> {
    let mut leaders = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.metric("kiln_operator_leader").await? == 1.0 {
            leaders.push(i);
        }
    }
    assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
    leaders.first().copied()
}

/// Samples the leader metric of every replica (by metrics port) every 200 ms for the whole test and
/// records each moment two of them lead: the spot checks of `leader_of` alone would miss a short overlap.
struct LeaderWatch {
    ports: Arc<Mutex<Vec<u16>>>,
    overlaps: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderWatch {
    fn start() -> LeaderWatch {
        let ports = Arc::new(Mutex::new(Vec::<u16>::new()));
        let overlaps = Arc::new(Mutex::new(Vec::new()));
        let (p, o) = (ports.clone(), overlaps.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let started = Instant::now();
            loop {
                let watched = p.lock().unwrap().clone();
                let mut leaders = Vec::new();
                for port in watched {
                    let url = format!("http://127.0.0.1:{port}/metrics");
                    let Ok(r) = http.get(&url).timeout(Duration::from_secs(1)).send().await else {
                        continue; // killed, or not up yet
                    };
                    if r.text()
                        .await
                        .is_ok_and(|t| t.contains("\nkiln_operator_leader 1\n"))
                    {
                        leaders.push(port);
                    }
                }
                if leaders.len() > 1 {
                    o.lock().unwrap().push(format!(
                        "{:.1} s: replicas on metrics ports {leaders:?}",
                        started.elapsed().as_secs_f64()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        LeaderWatch {
            ports,
            overlaps,
            task,
        }
    }

    fn watch(&self, op: &Operator) {
        self.ports.lock().unwrap().push(op.metrics_port);
    }

    fn assert_never_two_leaders(&self) {
        let overlaps = self.overlaps.lock().unwrap();
        assert!(overlaps.is_empty(), "two leaders at once: {overlaps:?}");
    }
}

impl Drop for LeaderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_mid_reconcile_and_apiserver_restart_converge_without_duplicates() {
    let Some(admin) = kubeconfig_or_skip("failover_and_apiserver_restart") else {
        return;
    };
    let client = client_for(&admin).await;
    install_crd(&client).await;
    let ns = namespace(&client, "restart").await;
    let op_kc = operator_kubeconfig(&admin);
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);

    // The batch exists before any operator runs, so the first leader starts in the middle of work.
    for i in 0..BATCH {
        isvcs
            .create(&PostParams::default(), &tiny(&format!("svc-{i}")))
            .await
            .unwrap();
    }
    let test_started = Instant::now();
    let watch = LeaderWatch::start();
    let mut a = Operator::start(&op_kc, &ns, &[]);
    let b = Operator::start(&op_kc, &ns, &[]);
    watch.watch(&a);
    watch.watch(&b);
    let first = wait_for("a leader", Duration::from_secs(30), || async {
        leader_of(&[&a, &b]).await
    })
    .await;
    // Kill the leader as soon as it has applied something: mid-reconcile, no lease release.
    wait_for("the first Deployment", Duration::from_secs(30), || async {
        (!deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty())
        .then_some(())
    })
    .await;
    let (mut leader, standby) = if first == 0 { (a, b) } else { (b, a) };
    leader.kill();
    let done_before_kill = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    eprintln!("killed the leader after {done_before_kill}/{BATCH} Deployments");
    // The standby takes over once the dead leader's Lease expires (15 s).
    wait_for("the standby to lead", Duration::from_secs(40), || async {
        (standby.metric("kiln_operator_leader").await? == 1.0).then_some(())
    })
    .await;
    wait_for(
        "every child of the batch",
        Duration::from_secs(180),
        || async {
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
            (d == BATCH && s == BATCH).then_some(())
        },
    )
    .await;
    // The restarted replica comes back as a standby.
    a = Operator::start(&op_kc, &ns, &[]);
    watch.watch(&a);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        leader_of(&[&a, &standby]).await,
        Some(1),
        "the new replica must not lead"
    );
    drop(leader);

    // No duplicates: one Deployment, one Service, one ReplicaSet per service, each with a single owner.
    let ds = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(ds.len(), BATCH);
    for d in &ds {
        assert_eq!(d.metadata.owner_references.as_ref().map(Vec::len), Some(1));
    }
    wait_for(
        "one ReplicaSet per Deployment",
        Duration::from_secs(60),
        || async {
            (replicasets
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len()
                == BATCH)
                .then_some(())
        },
    )
    .await;
    wait_for("every status observed", Duration::from_secs(60), || async {
        let all = isvcs.list(&ListParams::default()).await.ok()?.items;
        all.iter()
            .all(|o| o.status.as_ref().and_then(|s| s.observed_generation) == o.metadata.generation)
            .then_some(())
    })
    .await;

    // Restart kube-apiserver (etcd keeps the state); the operator must recover and keep reconciling.
    let restarted = Instant::now();
    let out = std::process::Command::new(format!("{REPO}/scripts/k8s/control-plane.sh"))
        .arg("restart-apiserver")
        .output()
        .expect("running control-plane.sh restart-apiserver");
    assert!(
        out.status.success(),
        "restart-apiserver: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    isvcs
        .patch(
            "svc-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"context": {"size": 8192}}})),
        )
        .await
        .expect("the API server is back");
    wait_for(
        "the operator to reconcile after the restart",
        Duration::from_secs(180),
        || async {
            let d = deployments.get("svc-0").await.ok()?;
            let args = d.spec?.template.spec?.containers[0].args.clone()?.join(" ");
            args.contains("--ctx 8192").then_some(())
        },
    )
    .await;
    let leader_now = wait_for(
        "a leader after the restart",
        Duration::from_secs(40),
        || async { leader_of(&[&a, &standby]).await },
    )
    .await;
    eprintln!(
        "leader after the API server restart: replica {leader_now} ({:.1} s after the restart began; \
         whole test {:.1} s)",
        restarted.elapsed().as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );
    // A few more seconds of watching: a deposed leader that has not noticed yet would show here.
    tokio::time::sleep(Duration::from_secs(5)).await;
    watch.assert_never_two_leaders();
    delete_namespace(&client, &ns).await;
}
