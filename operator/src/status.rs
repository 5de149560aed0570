//! The InferenceService status from what the operator observed: the Deployment, the pods and the agents'
//! own reports. Pure functions: no API calls, so every phase rule is unit-tested.

use crate::agent_status::UNREACHABLE;
use crate::resolve::Resolved;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kiln_crds::{AgentReport, Condition, ConditionStatus, InferenceServiceStatus, Phase};

/// Container waiting reasons that mean the pod will not start without a change.
const STUCK_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Everything a status is computed from.
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub endpoint: String,
    pub preset: Option<&'static str>,
    /// The resolved spec, or the reason it cannot be served.
    pub resolved: Result<&'a Resolved, &'a str>,
    pub desired_replicas: i32,
    pub deployment: Option<&'a Deployment>,
    pub pods: &'a [Pod],
    pub reports: &'a [AgentReport],
}

/// A condition. The message is never empty: the 1.20 API server turns "" into null and then rejects it.
fn condition(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    let message = if message.is_empty() {
        reason.to_string()
    } else {
        message
    };
    Condition {
        type_: type_.to_string(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: reason.to_string(),
        message,
        last_transition_time: None,
        observed_generation: None,
    }
}

/// The last line of a container's previous exit message, cut to a length a status message can carry.
fn last_exit_message(c: &k8s_openapi::api::core::v1::ContainerStatus) -> Option<String> {
    let text = c
        .last_state
        .as_ref()?
        .terminated
        .as_ref()?
        .message
        .as_deref()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    const MAX: usize = 300;
    Some(if line.len() > MAX {
        let mut end = MAX;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line.to_string()
    })
}

/// Why a pod cannot make progress, if it cannot.
fn stuck_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            if let Some(reason) = w.reason.as_deref() {
                if STUCK_REASONS.contains(&reason) {
                    // A crash loop's own message is only "back-off …"; why the container exited is in
                    // its last termination message (the log tail, see the Deployment's containers).
                    let why = (reason == "CrashLoopBackOff")
                        .then(|| last_exit_message(c))
                        .flatten()
                        .or_else(|| w.message.clone());
                    return Some(format!(
                        "pod {}: container {} {}{}",
                        pod.metadata.name.as_deref().unwrap_or("?"),
                        c.name,
                        reason,
                        why.map(|m| format!(": {m}")).unwrap_or_default()
                    ));
                }
            }
        }
    }
    None
}

/// The scheduler's complaint about a pod that is not placed yet.
fn unschedulable_reason(pod: &Pod) -> Option<String> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    Some(format!(
        "pod {} not scheduled: {}",
        pod.metadata.name.as_deref().unwrap_or("?"),
        cond.message.as_deref().unwrap_or("waiting for a node")
    ))
}

fn started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.pod_ip.is_some() || s.phase.as_deref() == Some("Running"))
}

fn agent_phase(r: &AgentReport) -> &str {
    r.phase.as_deref().unwrap_or("")
}

/// Computes the new status. Transition times are filled in by [`carry_transition_times`].
pub fn compute(o: &Observed) -> InferenceServiceStatus {
    let mut status = InferenceServiceStatus {
        observed_generation: o.generation,
        endpoint: Some(o.endpoint.clone()),
        replicas: Some(o.desired_replicas),
        ..Default::default()
    };
    let resolved = match o.resolved {
        Ok(r) => r,
        Err(why) => {
            status.phase = Some(Phase::Failed);
            status.message = Some(why.to_string());
            status.ready_replicas = Some(0);
            status.conditions = vec![
                condition("SpecValid", false, "InvalidSpec", why.to_string()),
                condition("Ready", false, "InvalidSpec", why.to_string()),
            ];
            return status;
        }
    };
    status.requested_context_size = Some(resolved.context_size);

    let ready = o
        .deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    status.ready_replicas = Some(ready);
    let live_pods: Vec<&Pod> = o
        .pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();

    let failed_agents: Vec<&AgentReport> = o
        .reports
        .iter()
        .filter(|r| agent_phase(r) == "Failed")
        .collect();
    let stuck: Vec<String> = live_pods.iter().filter_map(|p| stuck_reason(p)).collect();
    let fetching = o
        .reports
        .iter()
        .filter(|r| agent_phase(r) == "Fetching")
        .filter_map(|r| r.fetch_percent)
        .fold(None, |min: Option<f64>, p| {
            Some(min.map_or(p, |m| m.min(p)))
        });
    status.effective_context_size = o
        .reports
        .iter()
        .filter(|r| matches!(agent_phase(r), "Ready" | "Downsizing"))
        .filter_map(|r| r.effective_context_size)
        .min();

    let (phase, message) = if o.desired_replicas == 0 {
        (Phase::Pending, "scaled to zero replicas".to_string())
    } else if ready >= o.desired_replicas {
        if let Some(f) = failed_agents.first() {
            (
                Phase::Degraded,
                format!(
                    "{} of {} agents report Failed: {}",
                    failed_agents.len(),
                    o.reports.len(),
                    f.message.as_deref().unwrap_or("no message")
                ),
            )
        } else {
            (
                Phase::Ready,
                format!("{ready}/{} replicas ready", o.desired_replicas),
            )
        }
    } else if ready > 0 {
        (
            Phase::Degraded,
            format!("{ready}/{} replicas ready", o.desired_replicas),
        )
    } else if !live_pods.is_empty() && (failed_agents.len() + stuck.len()) >= live_pods.len() {
        let why = stuck
            .first()
            .cloned()
            .or_else(|| failed_agents.first().and_then(|r| r.message.clone()))
            .unwrap_or_else(|| "every agent failed".to_string());
        (Phase::Failed, why)
    } else if let Some(p) = fetching {
        (
            Phase::Loading,
            format!("Loading {p:.0}% (fetching the model)"),
        )
    } else if o
        .reports
        .iter()
        .any(|r| matches!(agent_phase(r), "Loading" | "Downsizing" | "Ready"))
        || live_pods.iter().any(|p| started(p))
    {
        (Phase::Loading, "loading the model".to_string())
    } else if let Some(why) = live_pods.iter().find_map(|p| unschedulable_reason(p)) {
        (Phase::Pending, why)
    } else {
        (Phase::Pending, "waiting for pods to start".to_string())
    };
    status.phase = Some(phase);
    status.message = Some(message.clone());

    let mut conditions = vec![
        condition(
            "SpecValid",
            true,
            "Valid",
            "the spec can be served".to_string(),
        ),
        condition(
            "Ready",
            phase == Phase::Ready,
            match phase {
                Phase::Ready => "AllReplicasReady",
                Phase::Degraded => "Degraded",
                Phase::Failed => "AgentsFailed",
                Phase::Loading => "Loading",
                Phase::Pending => "Pending",
            },
            message,
        ),
        condition(
            "ModelLoaded",
            ready > 0
                || o.reports
                    .iter()
                    .any(|r| matches!(agent_phase(r), "Ready" | "Downsizing")),
            if ready > 0 { "AgentReady" } else { "NotLoaded" },
            if ready > 0 {
                format!("{ready} replica(s) serving the model")
            } else {
                "no agent has loaded the model yet".to_string()
            },
        ),
    ];
    if let Some(effective) = status.effective_context_size {
        let downsized = effective < resolved.context_size;
        conditions.push(condition(
            "ContextDownsized",
            downsized,
            if downsized {
                "Downsized"
            } else {
                "FullContext"
            },
            format!(
                "serving {effective} of {} requested tokens",
                resolved.context_size
            ),
        ));
    }
    if let Some(preset) = o.preset {
        let drifted = !resolved.drift.is_empty();
        conditions.push(condition(
            "DriftFromPreset",
            drifted,
            if drifted {
                "SpecOverridesPreset"
            } else {
                "MatchesPreset"
            },
            if drifted {
                format!(
                    "spec departs from preset {preset}: {}",
                    resolved
                        .drift
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("spec matches preset {preset}")
            },
        ));
    }
    let unreachable = o
        .reports
        .iter()
        .filter(|r| agent_phase(r) == UNREACHABLE)
        .count();
    if !o.reports.is_empty() {
        conditions.push(condition(
            "AgentStatus",
            unreachable == 0,
            if unreachable == 0 {
                "Reporting"
            } else {
                "Unreachable"
            },
            if unreachable == 0 {
                format!("{} agents report /status", o.reports.len())
            } else {
                format!(
                    "{unreachable} of {} agents do not answer /status",
                    o.reports.len()
                )
            },
        ));
    }
    status.conditions = conditions;
    status.agents = o.reports.to_vec();
    status
}

/// Keeps each condition's transition time while its status is unchanged; stamps `now` when it changes.
pub fn carry_transition_times(
    new: &mut InferenceServiceStatus,
    old: Option<&InferenceServiceStatus>,
    now: &str,
) {
    for c in &mut new.conditions {
        c.observed_generation = new.observed_generation;
        let previous = old.and_then(|o| o.conditions.iter().find(|p| p.type_ == c.type_));
        c.last_transition_time = match previous {
            Some(p) if p.status == c.status => p
                .last_transition_time
                .clone()
                .or_else(|| Some(now.to_string())),
            _ => Some(now.to_string()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use kiln_crds::{GpuVendor, KvCacheType, Reasoning, SpeculativeType};

    fn resolved() -> Resolved {
        Resolved {
            context_size: 8192,
            context_min: None,
            auto_downsize: true,
            kv_cache_type: KvCacheType::F16,
            speculative: SpeculativeType::None,
            draft_max: 3,
            reasoning: Reasoning::Off,
            parallel: 1,
            vendor: GpuVendor::Cpu,
            arch: None,
            gpu_count: 0,
            quantization: None,
            vram_headroom_bytes: None,
            drift: vec![],
        }
    }

    fn deployment(ready: i32) -> Deployment {
        Deployment {
            status: Some(DeploymentStatus {
                ready_replicas: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn report(phase: &str, ctx: Option<u32>, pct: Option<f64>) -> AgentReport {
        AgentReport {
            pod: "p".into(),
            phase: Some(phase.into()),
            effective_context_size: ctx,
            fetch_percent: pct,
            ..Default::default()
        }
    }

    fn pod(ip: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "status": {"podIP": ip}
        }))
        .unwrap()
    }

    fn run(
        desired: i32,
        dep: Option<&Deployment>,
        pods: &[Pod],
        reports: &[AgentReport],
    ) -> InferenceServiceStatus {
        let r = resolved();
        compute(&Observed {
            generation: Some(3),
            endpoint: "http://x.ns.svc/v1".into(),
            preset: None,
            resolved: Ok(&r),
            desired_replicas: desired,
            deployment: dep,
            pods,
            reports,
        })
    }

    fn cond<'a>(s: &'a InferenceServiceStatus, t: &str) -> Option<&'a Condition> {
        s.conditions.iter().find(|c| c.type_ == t)
    }

    #[test]
    fn phases_follow_readiness_and_agent_reports() {
        let d0 = deployment(0);
        let d1 = deployment(1);
        let d2 = deployment(2);
        assert_eq!(run(2, Some(&d0), &[], &[]).phase, Some(Phase::Pending));
        let fetching = run(
            1,
            Some(&d0),
            &[pod(Some("10.0.0.1"))],
            &[report("Fetching", None, Some(43.4))],
        );
        assert_eq!(fetching.phase, Some(Phase::Loading));
        assert_eq!(
            fetching.message.as_deref(),
            Some("Loading 43% (fetching the model)")
        );
        assert_eq!(run(2, Some(&d1), &[], &[]).phase, Some(Phase::Degraded));
        let ready = run(2, Some(&d2), &[], &[report("Ready", Some(8192), None)]);
        assert_eq!(ready.phase, Some(Phase::Ready));
        assert_eq!(ready.effective_context_size, Some(8192));
        assert_eq!(cond(&ready, "Ready").unwrap().status, ConditionStatus::True);
        assert_eq!(
            cond(&ready, "ContextDownsized").unwrap().status,
            ConditionStatus::False
        );
        let failed = run(
            1,
            Some(&d0),
            &[pod(Some("10.0.0.1"))],
            &[report("Failed", None, None)],
        );
        assert_eq!(failed.phase, Some(Phase::Failed));
        assert_eq!(run(0, Some(&d0), &[], &[]).phase, Some(Phase::Pending));
    }

    #[test]
    fn a_crash_looping_fetch_says_why_it_exited() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "qwen-0"},
            "status": {"podIP": "10.0.0.1", "initContainerStatuses": [{
                "name": "fetch", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": "back-off 40s restarting failed container=fetch"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "fetch: 12% of 16.5 GB\nkiln-agent: sha256 mismatch: expected ab…, got 3f…\n"}}
            }]}
        }))
        .unwrap();
        let d0 = deployment(0);
        let s = run(1, Some(&d0), &[p], &[]);
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(
            s.message.as_deref(),
            Some("pod qwen-0: container fetch CrashLoopBackOff: kiln-agent: sha256 mismatch: expected ab…, got 3f…")
        );
    }

    #[test]
    fn a_downsize_shows_as_effective_context_and_condition() {
        let d1 = deployment(1);
        let s = run(1, Some(&d1), &[], &[report("Ready", Some(6144), None)]);
        assert_eq!(s.effective_context_size, Some(6144));
        assert_eq!(s.requested_context_size, Some(8192));
        let c = cond(&s, "ContextDownsized").unwrap();
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::True, "Downsized")
        );
    }

    #[test]
    fn invalid_spec_is_failed_with_the_reason() {
        let s = compute(&Observed {
            generation: Some(1),
            endpoint: String::new(),
            preset: None,
            resolved: Err("context.min (2048) is larger"),
            desired_replicas: 1,
            deployment: None,
            pods: &[],
            reports: &[],
        });
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(cond(&s, "SpecValid").unwrap().reason, "InvalidSpec");
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let d1 = deployment(1);
        let mut old = run(1, Some(&d1), &[], &[]);
        carry_transition_times(&mut old, None, "t0");
        let mut new = run(1, Some(&d1), &[], &[]);
        carry_transition_times(&mut new, Some(&old), "t1");
        assert_eq!(
            cond(&new, "Ready").unwrap().last_transition_time.as_deref(),
            Some("t0")
        );
        let d0 = deployment(0);
        let mut worse = run(1, Some(&d0), &[], &[]);
        carry_transition_times(&mut worse, Some(&new), "t2");
        assert_eq!(
            cond(&worse, "Ready")
                .unwrap()
                .last_transition_time
                .as_deref(),
            Some("t2")
        );
    }
}
