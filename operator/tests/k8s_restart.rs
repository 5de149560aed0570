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
use std::time::Duration;

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
    let mut a = Operator::start(&op_kc, &ns, &[]);
    let b = Operator::start(&op_kc, &ns, &[]);
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
    eprintln!("leader after the API server restart: replica {leader_now}");
    delete_namespace(&client, &ns).await;
}
