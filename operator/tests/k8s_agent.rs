//! The status path end to end with a real kiln-agent: the operator's Deployment args are run by the real
//! `kiln-agent serve` (on the SmolLM2 model), the test plays the kubelet (it probes /readyz like the
//! readiness probe and writes the pod's status), and the operator must report the agent's truth in the CR:
//! Ready, ready replicas, and what `/status` says (effective context) — or, with an agent that does not
//! serve `/status` yet, that it cannot read it.

mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kiln_crds::{ConditionStatus, InferenceService, Phase};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The agent binary and the model, or None (with the reason printed) when they are absent and not required.
fn agent_and_model() -> Option<(PathBuf, PathBuf)> {
    let bin = std::env::var_os("KILN_AGENT_BIN").map(PathBuf::from);
    let cache = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/kiln")
        });
    let model = cache.join("models").join(MODEL_FILE);
    let missing = match &bin {
        None => Some("KILN_AGENT_BIN is not set (cargo build --release -p kiln-agent)".to_string()),
        Some(b) if !b.is_file() => Some(format!("{} does not exist", b.display())),
        _ if !model.is_file() => Some(format!(
            "{} is missing (scripts/fetch-models.sh smollm2)",
            model.display()
        )),
        _ => None,
    };
    match missing {
        None => Some((bin?, model)),
        Some(why) => {
            assert!(
                std::env::var("KILN_REQUIRE_MODELS").as_deref() != Ok("1"),
                "{why}"
            );
            eprintln!("SKIPPED the real-agent status test: {why}");
            None
        }
    }
}

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes `--flag value` (or a bare `--flag`) from args.
fn without_flag(args: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == flag {
            i += if args.get(i + 1).is_some_and(|v| !v.starts_with("--")) {
                2
            } else {
                1
            };
            continue;
        }
        out.push(args[i].clone());
        i += 1;
    }
    out
}

/// Starts `kiln-agent` with the pod's args (model path and port mapped to this machine). A flag this agent
/// build does not know yet is dropped and reported, so the gap is visible instead of silently hidden.
fn start_agent(bin: &Path, pod_args: &[String], model: &Path, port: u16) -> (Agent, Vec<String>) {
    let mut args: Vec<String> = pod_args.to_vec();
    for (flag, value) in [
        ("--model", model.display().to_string()),
        ("--port", port.to_string()),
        ("--host", "127.0.0.1".to_string()),
    ] {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("pod args lack {flag}"));
        args[i + 1] = value;
    }
    let mut dropped = Vec::new();
    loop {
        let log = std::env::temp_dir().join(format!("kiln-agent-{port}.log"));
        let mut child = Command::new(bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting kiln-agent");
        std::thread::sleep(Duration::from_millis(700));
        match child.try_wait().unwrap() {
            None => return (Agent(child), dropped),
            Some(status) => {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                let unknown = err
                    .split("unexpected argument '")
                    .nth(1)
                    .and_then(|r| r.split('\'').next())
                    .map(str::to_string);
                match unknown {
                    Some(flag) if flag.starts_with("--") && !dropped.contains(&flag) => {
                        eprintln!("NOTE: this kiln-agent build does not accept {flag} yet; running without it");
                        args = without_flag(&args, &flag);
                        dropped.push(flag);
                    }
                    _ => panic!("kiln-agent {args:?} exited with {status}:\n{err}"),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_comes_from_a_real_kiln_agent() {
    let Some(admin) = kubeconfig_or_skip("status_comes_from_a_real_kiln_agent") else {
        return;
    };
    let Some((agent_bin, model)) = agent_and_model() else {
        return;
    };
    let client = client_for(&admin).await;
    install_crd(&client).await;
    let ns = namespace(&client, "agent").await;
    let agent_port = free_port();
    let op = Operator::start(
        &operator_kubeconfig(&admin),
        &ns,
        &[
            "--agent-status-url",
            &format!("http://{{ip}}:{agent_port}/status"),
        ],
    );
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
    let obj = service(&format!(
        r#"
apiVersion: kiln.dev/v1alpha1
kind: InferenceService
metadata: {{name: smol}}
spec:
  preset: smollm2-135m-cpu
  model: {{uri: "file:///models/{MODEL_FILE}"}}
  context: {{size: 1024}}
  gpu: {{vramHeadroom: 512Mi}}
"#
    ));
    isvcs.create(&PostParams::default(), &obj).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = wait_for("the agent pod", Duration::from_secs(60), || async {
        pods.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let pod_args = pod.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let joined = pod_args.join(" ");
    assert!(
        joined.contains(" --vram-headroom 536870912 ") && joined.ends_with(" --device cpu"),
        "{joined}"
    );
    let (_agent, dropped) = start_agent(&agent_bin, &pod_args, &model, agent_port);

    // The kubelet's part: the readiness probe, then the pod status it would write.
    let http = reqwest::Client::new();
    let started = Instant::now();
    wait_for("kiln-agent /readyz", Duration::from_secs(120), || async {
        let r = http
            .get(format!("http://127.0.0.1:{agent_port}/readyz"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    eprintln!(
        "kiln-agent ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ready = json!({"type": "Ready", "status": "True", "lastTransitionTime": now});
    let containers_ready =
        json!({"type": "ContainersReady", "status": "True", "lastTransitionTime": now});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "startTime": now,
            "conditions": [ready, containers_ready],
        }})),
    )
    .await
    .unwrap();
    let marked = Instant::now();

    let o = wait_for("the CR to turn Ready", Duration::from_secs(60), || async {
        let o = isvcs.get("smol").await.ok()?;
        (o.status.as_ref()?.phase == Some(Phase::Ready)).then_some(o)
    })
    .await;
    let st = o.status.as_ref().unwrap();
    eprintln!(
        "CR Ready {:.1}s after the pod turned ready",
        marked.elapsed().as_secs_f64()
    );
    assert!(
        marked.elapsed() < Duration::from_secs(30),
        "status must reach the CR within ~30 s"
    );
    assert_eq!(st.ready_replicas, Some(1));
    assert_eq!(st.requested_context_size, Some(1024));

    let agent_status = http
        .get(format!("http://127.0.0.1:{agent_port}/status"))
        .send()
        .await
        .unwrap();
    if agent_status.status().is_success() {
        let body: serde_json::Value = agent_status.json().await.unwrap();
        let effective = body["context"]["effective"].as_u64();
        eprintln!("kiln-agent /status: {body}");
        let o = wait_for(
            "the agent's report in the CR",
            Duration::from_secs(30),
            || async {
                let o = isvcs.get("smol").await.ok()?;
                let report = o.status.as_ref()?.agents.first()?.clone();
                (report.phase.as_deref() == body["phase"].as_str()).then_some(o)
            },
        )
        .await;
        let st = o.status.as_ref().unwrap();
        if let Some(e) = effective {
            assert_eq!(st.effective_context_size.map(u64::from), Some(e));
        }
        let c = o
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "AgentStatus")
            .unwrap();
        assert_eq!(c.status, ConditionStatus::True, "{c:?}");
    } else {
        // This agent build has no /status yet: the CR must say so rather than invent numbers.
        eprintln!(
            "NOTE: kiln-agent answers /status with {}; checking the operator reports it unreachable",
            agent_status.status()
        );
        let o = wait_for("AgentStatus=False", Duration::from_secs(30), || async {
            let o = isvcs.get("smol").await.ok()?;
            let c = o
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "AgentStatus")?
                .clone();
            (c.status == ConditionStatus::False).then_some(o)
        })
        .await;
        let st = o.status.as_ref().unwrap();
        assert_eq!(
            st.effective_context_size, None,
            "no number without a report"
        );
        let report = &st.agents[0];
        assert_eq!(report.phase.as_deref(), Some("Unreachable"));
        assert!(
            report.message.as_deref().unwrap_or("").contains("404"),
            "{report:?}"
        );
    }
    // Every flag of the pod must be one the agent of this tree accepts: a dropped one is a broken pod.
    assert!(
        dropped.is_empty(),
        "the operator passes flags this kiln-agent rejects: {dropped:?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.get_opt("smol").await.unwrap().is_some());
    drop(op);
    delete_namespace(&client, &ns).await;
}
