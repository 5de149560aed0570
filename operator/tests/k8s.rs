//! The operator against a real kube-apiserver + controller-manager + scheduler (scripts/k8s/control-plane.sh):
//! children and their fields, spec edits rolling the Deployment, drift from a preset, schema rejections
//! (API and kubectl), garbage collection, the scheduler placing a GPU pod by affinity, the examples.
//! Each test has its own namespace and its own operator (under the RBAC of operator/rbac.yaml).

mod common;

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use kiln_crds::{ConditionStatus, InferenceService, Phase};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn golden(name: &str) -> InferenceService {
    service(&format!(
        r#"
apiVersion: kiln.dev/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  preset: qwen3.6-27b-q4km-24gb-rdna3
  model:
    uri: hf://unsloth/Qwen3.6-27B-GGUF/Qwen3.6-27B-Q4_K_M.gguf
    sha256: "{SHA}"
"#
    ))
}

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

async fn get_status<F>(
    api: &Api<InferenceService>,
    name: &str,
    what: &str,
    ok: F,
) -> InferenceService
where
    F: Fn(&InferenceService) -> bool,
{
    wait_for(what, MINUTE, || async {
        let o = api.get(name).await.ok()?;
        ok(&o).then_some(o)
    })
    .await
}

fn condition<'a>(o: &'a InferenceService, t: &str) -> Option<&'a kiln_crds::Condition> {
    o.status.as_ref()?.conditions.iter().find(|c| c.type_ == t)
}

struct Setup {
    admin: std::path::PathBuf,
    client: Client,
    ns: String,
    op: Operator,
}

async fn setup(test: &str, prefix: &str) -> Option<Setup> {
    let admin = kubeconfig_or_skip(test)?;
    let client = client_for(&admin).await;
    install_crd(&client).await;
    let ns = namespace(&client, prefix).await;
    let op = Operator::start(&operator_kubeconfig(&admin), &ns, &[]);
    Some(Setup {
        admin,
        client,
        ns,
        op,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_preset_makes_children_with_the_expected_fields() {
    let Some(s) = setup("golden_preset_makes_children", "children").await else {
        return;
    };
    let isvcs: Api<InferenceService> = Api::namespaced(s.client.clone(), &s.ns);
    let created = isvcs
        .create(&PostParams::default(), &golden("qwen"))
        .await
        .unwrap();

    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let d = wait_for("the Deployment", MINUTE, || async {
        deployments.get_opt("qwen").await.ok().flatten()
    })
    .await;
    let owner = &d.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller, &owner.uid),
        (
            "InferenceService",
            Some(true),
            created.metadata.uid.as_ref().unwrap()
        )
    );
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    let strategy = spec.strategy.unwrap().rolling_update.unwrap();
    assert_eq!(
        serde_json::to_value(&strategy.max_surge).unwrap(),
        json!(0),
        "a GPU pod is replaced in place, not surged"
    );
    let pod = spec.template.spec.unwrap();
    let agent = &pod.containers[0];
    assert_eq!(
        agent.args.as_ref().unwrap().join(" "),
        "serve --model /tmp/Qwen3.6-27B-Q4_K_M.gguf --ctx 131072 --kv-type q4_0 --spec mtp \
         --spec-draft-n-max 3 --reasoning off --parallel 1 --host 0.0.0.0 --port 8080 --device rocm"
    );
    let fetch = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        fetch.args.as_ref().unwrap().join(" "),
        format!(
            "fetch hf://unsloth/Qwen3.6-27B-GGUF/Qwen3.6-27B-Q4_K_M.gguf --to /models \
             --link /tmp/Qwen3.6-27B-Q4_K_M.gguf --sha256 {SHA} --status-addr 0.0.0.0:8080"
        )
    );
    let limits = agent.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["amd.com/gpu"].0, "1");
    let term = &pod
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms[0];
    let expr = &term.match_expressions.as_ref().unwrap()[0];
    assert_eq!(expr.key, "amd.com/gpu.device-id");
    assert!(expr.values.as_ref().unwrap().contains(&"744c".to_string()));
    assert!(pod
        .tolerations
        .as_ref()
        .unwrap()
        .iter()
        .any(|t| t.key.as_deref() == Some("amd.com/gpu")));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &vec!["ALL".to_string()]
        );
    }
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(probe_path(&agent.readiness_probe), "/readyz");
    assert_eq!(probe_path(&agent.liveness_probe), "/healthz");
    assert_eq!(probe_path(&agent.startup_probe), "/healthz");
    let startup = agent.startup_probe.as_ref().unwrap();
    assert!(
        startup.period_seconds.unwrap() * startup.failure_threshold.unwrap() >= 1800,
        "a 16 GB model gets at least 30 minutes to load"
    );

    let services: Api<Service> = Api::namespaced(s.client.clone(), &s.ns);
    let svc = wait_for("the Service", MINUTE, || async {
        services.get_opt("qwen").await.ok().flatten()
    })
    .await;
    let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 80);
    assert_eq!(
        svc.spec.as_ref().unwrap().selector,
        d.metadata.labels.as_ref().map(|l| {
            l.iter()
                .filter(|(k, _)| {
                    *k == "app.kubernetes.io/name" || *k == "kiln.dev/inference-service"
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    );

    // Status: the requested context, no drift from the preset, the endpoint, and the generation observed.
    let o = get_status(&isvcs, "qwen", "the status", |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == o.metadata.generation)
    })
    .await;
    let st = o.status.as_ref().unwrap();
    assert_eq!(st.requested_context_size, Some(131_072));
    assert_eq!(st.phase, Some(Phase::Pending), "no GPU node: {st:?}");
    assert_eq!(
        st.endpoint.as_deref(),
        Some(&*format!("http://qwen.{}.svc/v1", s.ns))
    );
    let drift = condition(&o, "DriftFromPreset").unwrap();
    assert_eq!(
        (drift.status, drift.reason.as_str()),
        (ConditionStatus::False, "MatchesPreset")
    );

    // Printer columns, as a user sees them.
    let (ok, out, err) = kubectl(&s.admin, &["get", "kis", "-n", &s.ns], None);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    for col in ["PHASE", "REQUESTED-CTX", "EFFECTIVE-CTX", "READY", "AGE"] {
        assert!(header.contains(col), "{col} missing in: {out}");
    }
    assert!(out.contains("Pending") && out.contains("131072"), "{out}");

    // Two replicas get a PodDisruptionBudget; back to one removes it.
    let pdb_version = if kube::discovery::group(&s.client, "policy")
        .await
        .unwrap()
        .versions()
        .any(|v| v == "v1")
    {
        "v1"
    } else {
        "v1beta1"
    };
    let pdb_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", pdb_version, "PodDisruptionBudget"),
        "poddisruptionbudgets",
    );
    let pdbs: Api<DynamicObject> = Api::namespaced_with(s.client.clone(), &s.ns, &pdb_ar);
    isvcs
        .patch(
            "qwen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let pdb = wait_for("the PodDisruptionBudget", MINUTE, || async {
        pdbs.get_opt("qwen").await.ok().flatten()
    })
    .await;
    assert_eq!(pdb.data["spec"]["maxUnavailable"], json!(1));
    isvcs
        .patch(
            "qwen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    wait_for("the PodDisruptionBudget to go", MINUTE, || async {
        pdbs.get_opt("qwen")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;

    let healthz = reqwest::get(format!("http://127.0.0.1:{}/healthz", s.op.metrics_port))
        .await
        .unwrap();
    assert!(healthz.status().is_success());
    let reconciles =
        s.op.metrics()
            .await
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("kiln_operator_reconciles_total{result=\"ok\"} ")
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
    assert!(reconciles >= 3.0, "reconciles counted: {reconciles}");
    assert!(s
        .op
        .metrics()
        .await
        .unwrap()
        .contains("kiln_operator_reconcile_duration_seconds_bucket"));
    delete_namespace(&s.client, &s.ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_spec_rolls_the_deployment_and_reports_drift() {
    let Some(s) = setup("editing_the_spec_rolls_the_deployment", "edit").await else {
        return;
    };
    let isvcs: Api<InferenceService> = Api::namespaced(s.client.clone(), &s.ns);
    isvcs
        .create(&PostParams::default(), &tiny("tiny"))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let replicasets: Api<ReplicaSet> = Api::namespaced(s.client.clone(), &s.ns);
    let args = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ")
    };
    let d = wait_for("the Deployment", MINUTE, || async {
        deployments.get_opt("tiny").await.ok().flatten()
    })
    .await;
    assert!(
        args(&d).contains("--ctx 2048 --kv-type f16 --reasoning off --parallel 1"),
        "{}",
        args(&d)
    );
    assert!(
        args(&d).ends_with(" --device cpu") && !args(&d).contains("--vram-headroom"),
        "a CPU pod names its device; no headroom unless the spec sets one: {}",
        args(&d)
    );
    assert!(
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .is_none(),
        "file:// needs no fetch"
    );
    wait_for("the first ReplicaSet", MINUTE, || async {
        (replicasets
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len()
            == 1)
            .then_some(())
    })
    .await;

    isvcs
        .patch(
            "tiny",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "context": {"size": 4096}, "parallel": 2, "gpu": {"vramHeadroom": "1536Mi"}
            }})),
        )
        .await
        .unwrap();
    let rolled = wait_for("the Deployment to change", MINUTE, || async {
        let d = deployments.get("tiny").await.ok()?;
        args(&d).contains("--ctx 4096").then_some(d)
    })
    .await;
    assert!(args(&rolled).contains("--parallel 2"));
    assert!(
        args(&rolled).contains(" --vram-headroom 1610612736 "),
        "1536Mi in bytes: {}",
        args(&rolled)
    );
    // A new pod template is a rollout: the Deployment controller makes a second ReplicaSet.
    wait_for("a new ReplicaSet (the rollout)", MINUTE, || async {
        (replicasets
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len()
            == 2)
            .then_some(())
    })
    .await;

    let o = get_status(&isvcs, "tiny", "DriftFromPreset", |o| {
        condition(o, "DriftFromPreset").is_some_and(|c| c.status == ConditionStatus::True)
    })
    .await;
    let c = condition(&o, "DriftFromPreset").unwrap();
    assert_eq!(c.reason, "SpecOverridesPreset");
    assert!(
        c.message.contains("context.size (preset 2048, spec 4096)")
            && c.message.contains("parallel (preset 1, spec 2)"),
        "{}",
        c.message
    );
    assert_eq!(
        o.status.as_ref().unwrap().requested_context_size,
        Some(4096)
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("a DriftFromPreset event", MINUTE, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("DriftFromPreset"))
            .then_some(())
    })
    .await;

    // The schema takes any string for a quantity: a bad one is the operator's to refuse, in the status,
    // and the running Deployment is left as it was.
    isvcs
        .patch(
            "tiny",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gpu": {"vramHeadroom": "1.5 gigs"}}})),
        )
        .await
        .expect("the API server accepts any string as a quantity");
    let o = get_status(&isvcs, "tiny", "InvalidSpec for the headroom", |o| {
        condition(o, "SpecValid").is_some_and(|c| c.status == ConditionStatus::False)
    })
    .await;
    let c = condition(&o, "SpecValid").unwrap();
    assert_eq!(c.reason, "InvalidSpec");
    assert!(
        c.message
            .starts_with("gpu.vramHeadroom: `1.5 gigs` is not a byte quantity"),
        "{}",
        c.message
    );
    assert_eq!(o.status.as_ref().unwrap().phase, Some(Phase::Failed));
    let kept = deployments.get("tiny").await.unwrap();
    assert!(
        args(&kept).contains(" --vram-headroom 1610612736 "),
        "{}",
        args(&kept)
    );
    delete_namespace(&s.client, &s.ns).await;
}

/// A valid minimal object with one field replaced.
fn with(path: &[&str], value: serde_json::Value) -> serde_json::Value {
    let mut obj = json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "bad"},
        "spec": {"model": {"uri": "hf://org/repo/m.gguf"}}
    });
    let mut at = &mut obj;
    for (i, key) in path.iter().enumerate() {
        if i + 1 == path.len() {
            if value.is_null() {
                at.as_object_mut().unwrap().remove(*key);
            } else {
                at[*key] = value.clone();
            }
        } else {
            if at.get(*key).is_none() {
                at[*key] = json!({});
            }
            at = at.get_mut(*key).unwrap();
        }
    }
    obj
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_rejected_with_messages_and_defaults_are_filled() {
    let Some(s) = setup("invalid_objects_are_rejected", "invalid").await else {
        return;
    };
    let cases: Vec<(serde_json::Value, &[&str])> = vec![
        (
            with(&["spec", "context", "size"], json!(100)),
            &["spec.context.size", "greater than or equal to 512"],
        ),
        (
            with(&["spec", "context", "kvCacheType"], json!("q5_0")),
            &[
                "spec.context.kvCacheType",
                "Unsupported value: \"q5_0\"",
                "\"q4_0\"",
            ],
        ),
        (
            with(&["spec", "model", "uri"], json!("ftp://host/m.gguf")),
            &["spec.model.uri", "should match"],
        ),
        (
            with(&["spec", "model", "uri"], json!("hf://only-org.gguf")),
            &["spec.model.uri", "should match"],
        ),
        (
            with(&["spec", "model", "sha256"], json!("abc")),
            &["spec.model.sha256", "should match"],
        ),
        (
            with(&["spec", "speculative", "draftMax"], json!(9)),
            &["spec.speculative.draftMax", "less than or equal to 8"],
        ),
        (
            with(&["spec", "speculative", "type"], json!("ngram")),
            &["spec.speculative.type", "Unsupported value"],
        ),
        (
            with(&["spec", "replicas"], json!(-1)),
            &["spec.replicas", "greater than or equal to 0"],
        ),
        (
            with(&["spec", "gpu", "vendor"], json!("intel")),
            &["spec.gpu.vendor", "Unsupported value: \"intel\""],
        ),
        (
            with(&["spec", "gpu", "arch"], json!("rdna3")),
            &["spec.gpu.arch", "should match"],
        ),
        (
            with(&["spec", "reasoning"], json!("maybe")),
            &["spec.reasoning", "Unsupported value"],
        ),
        (
            with(&["spec", "preset"], json!("qwen-fast")),
            &["spec.preset", "Unsupported value"],
        ),
        (
            with(&["spec", "parallel"], json!(0)),
            &["spec.parallel", "greater than or equal to 1"],
        ),
        (
            with(&["spec", "model"], serde_json::Value::Null),
            &["spec.model", "Required value"],
        ),
    ];
    for (obj, expected) in &cases {
        // Through kubectl, as a user would apply a bad YAML file...
        let yaml = serde_yaml_ng::to_string(obj).unwrap();
        let (ok, _, err) = kubectl(&s.admin, &["apply", "-n", &s.ns, "-f", "-"], Some(&yaml));
        assert!(!ok, "accepted: {yaml}");
        // kubectl validates required fields itself ("missing required field \"model\""); the rest comes
        // from the API server. Either way the message names the field.
        let leaf = expected[0].rsplit('.').next().unwrap();
        assert!(
            err.contains(leaf),
            "kubectl's message lacks `{leaf}`:\n{err}\nfor:\n{yaml}"
        );
        if !err.contains("missing required field") {
            for e in *expected {
                assert!(
                    err.contains(e),
                    "kubectl's message lacks `{e}`:\n{err}\nfor:\n{yaml}"
                );
            }
        }
        // ...and through the API.
        let api: Api<InferenceService> = Api::namespaced(s.client.clone(), &s.ns);
        let typed: Result<InferenceService, _> = serde_json::from_value(obj.clone());
        if let Ok(typed) = typed {
            let e = api
                .create(&PostParams::default(), &typed)
                .await
                .unwrap_err();
            for x in *expected {
                assert!(
                    e.to_string().contains(x),
                    "the API's message lacks `{x}`: {e}"
                );
            }
        }
    }

    // The API server fills the defaults in.
    let minimal = with(&[], json!(null));
    let (ok, _, err) = kubectl(
        &s.admin,
        &["apply", "-n", &s.ns, "-f", "-"],
        Some(
            &serde_yaml_ng::to_string(&minimal)
                .unwrap()
                .replace("name: bad", "name: minimal"),
        ),
    );
    assert!(ok, "{err}");
    let isvcs: Api<InferenceService> = Api::namespaced(s.client.clone(), &s.ns);
    let m = isvcs.get("minimal").await.unwrap();
    assert_eq!(m.spec.speculative.draft_max, 3);
    assert_eq!(m.spec.reasoning, kiln_crds::Reasoning::Off);
    assert_eq!(m.spec.replicas, 1);
    assert!(m.spec.context.auto_downsize);
    let raw = kubectl(
        &s.admin,
        &["get", "kis", "minimal", "-n", &s.ns, "-o", "json"],
        None,
    )
    .1;
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["spec"]["speculative"]["draftMax"], json!(3), "{raw}");
    assert_eq!(raw["spec"]["reasoning"], json!("off"), "{raw}");

    // A rule the schema cannot express (context.min > size) is accepted by the server, refused by the
    // operator: Failed, SpecValid=False with the reason, an event, and no children.
    let cross = service(
        r#"
apiVersion: kiln.dev/v1alpha1
kind: InferenceService
metadata: {name: cross}
spec:
  model: {uri: "hf://org/repo/m.gguf"}
  context: {size: 1024, min: 4096}
"#,
    );
    isvcs.create(&PostParams::default(), &cross).await.unwrap();
    let o = get_status(&isvcs, "cross", "the InvalidSpec status", |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Failed))
    })
    .await;
    let c = condition(&o, "SpecValid").unwrap();
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::False, "InvalidSpec")
    );
    assert!(
        c.message
            .contains("context.min (4096) is larger than the context size (1024)"),
        "{}",
        c.message
    );
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    assert!(deployments.get_opt("cross").await.unwrap().is_none());
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("an InvalidSpec event", MINUTE, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidSpec"))
            .then_some(())
    })
    .await;
    delete_namespace(&s.client, &s.ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_service_garbage_collects_every_child() {
    let Some(s) = setup("deleting_the_service_garbage_collects", "gc").await else {
        return;
    };
    let isvcs: Api<InferenceService> = Api::namespaced(s.client.clone(), &s.ns);
    let mut obj = tiny("gc");
    obj.spec.replicas = 2;
    obj.spec.model.uri = "https://models.example/SmolLM2-135M-Instruct.Q4_1.gguf".to_string();
    obj.spec.model_cache.kind = kiln_crds::ModelCacheType::PersistentVolumeClaim;
    isvcs.create(&PostParams::default(), &obj).await.unwrap();

    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let services: Api<Service> = Api::namespaced(s.client.clone(), &s.ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(s.client.clone(), &s.ns);
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("all children", MINUTE, || async {
        let d = deployments.get_opt("gc").await.ok()??;
        services.get_opt("gc").await.ok()??;
        claims.get_opt("gc-models").await.ok()??;
        (pods.list(&ListParams::default()).await.ok()?.items.len() == 2).then_some(d)
    })
    .await;
    isvcs.delete("gc", &Default::default()).await.unwrap();
    wait_for("garbage collection of every child", MINUTE, || async {
        let gone = deployments.get_opt("gc").await.ok()?.is_none()
            && services.get_opt("gc").await.ok()?.is_none()
            && claims
                .get_opt("gc-models")
                .await
                .ok()?
                .is_none_or(|c| c.metadata.deletion_timestamp.is_some())
            && pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty();
        gone.then_some(())
    })
    .await;
    delete_namespace(&s.client, &s.ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_binds_a_gpu_pod_where_the_affinity_says() {
    let Some(s) = setup("the_scheduler_binds_a_gpu_pod", "sched").await else {
        return;
    };
    let nodes: Api<Node> = Api::all(s.client.clone());
    let node = |name: &str, device_id: &str, gpus: u32| -> (Node, serde_json::Value) {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "amd.com/gpu.device-id": device_id, "kiln.dev/test": "true"}}
        }))
        .unwrap();
        let resources =
            json!({"cpu": "16", "memory": "64Gi", "pods": "110", "amd.com/gpu": gpus.to_string()});
        let status = json!({"status": {"capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "fake node for tests"}]}});
        (n, status)
    };
    // The target (an RX 7800 XT, gfx1101) and a decoy with more free GPUs of another arch (gfx1100).
    let target = format!("{}-gfx1101", s.ns);
    let decoy = format!("{}-gfx1100", s.ns);
    for (name, id, gpus) in [(&target, "747e", 1), (&decoy, "744c", 4)] {
        let (n, status) = node(name, id, gpus);
        nodes.create(&PostParams::default(), &n).await.unwrap();
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
        // The API server taints new Nodes not-ready; the node lifecycle controller lifts it once the kubelet
        // reports Ready. There is no kubelet here, so the test does what that controller would do.
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": null}})),
            )
            .await
            .unwrap();
    }

    let isvcs: Api<InferenceService> = Api::namespaced(s.client.clone(), &s.ns);
    let obj = service(
        r#"
apiVersion: kiln.dev/v1alpha1
kind: InferenceService
metadata: {name: rx7800}
spec:
  model: {uri: "hf://org/repo/model-Q4_K_M.gguf"}
  gpu: {vendor: amd, arch: gfx1101}
"#,
    );
    isvcs.create(&PostParams::default(), &obj).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let bound = wait_for("the pod to be bound", MINUTE, || async {
        pods.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find_map(|p| p.spec?.node_name)
    })
    .await;
    assert_eq!(bound, target, "the pod went to the wrong node");
    for n in [&target, &decoy] {
        let _ = nodes.delete(n, &Default::default()).await;
    }
    delete_namespace(&s.client, &s.ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_yaml_and_the_examples_apply_with_kubectl() {
    let Some(admin) = kubeconfig_or_skip("the_crd_yaml_and_the_examples_apply_with_kubectl") else {
        return;
    };
    let client = client_for(&admin).await;
    install_crd(&client).await;
    let (ok, _, err) = kubectl(
        &admin,
        &[
            "apply",
            "--dry-run=server",
            "-f",
            &format!("{REPO}/crds/inferenceservice.yaml"),
        ],
        None,
    );
    assert!(ok, "the committed CRD YAML: {err}");
    let ns = namespace(&client, "examples").await;
    let (ok, out, err) = kubectl(
        &admin,
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &ns,
            "-f",
            &format!("{REPO}/manifests/examples/"),
        ],
        None,
    );
    assert!(ok, "manifests/examples: {err}");
    assert!(out.contains("created (server dry run)"), "{out}");
    delete_namespace(&client, &ns).await;
}
