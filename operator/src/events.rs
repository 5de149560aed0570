//! Kubernetes Events for what a user wants to know: phase changes, drift from the preset, context
//! downsizes, an unservable spec, and reconcile errors. Published only on transitions, never per poll.

use kiln_crds::{ConditionStatus, InferenceService, InferenceServiceStatus, Phase};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;

async fn publish(recorder: &Recorder, obj: &InferenceService, ev: Event) {
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(reason = %ev.reason, error = %e, "publishing an event");
    }
}

fn condition_true<'a>(s: Option<&'a InferenceServiceStatus>, type_: &str) -> Option<&'a str> {
    s?.conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == ConditionStatus::True)
        .map(|c| c.message.as_str())
}

/// Events for the differences between the old and new status.
pub async fn publish_transitions(
    recorder: &Recorder,
    obj: &InferenceService,
    old: Option<&InferenceServiceStatus>,
    new: &InferenceServiceStatus,
) {
    let old_phase = old.and_then(|s| s.phase);
    if new.phase != old_phase {
        if let Some(phase) = new.phase {
            let warning = matches!(phase, Phase::Failed | Phase::Degraded);
            let reason = match (
                phase,
                new.conditions.iter().find(|c| c.type_ == "SpecValid"),
            ) {
                (Phase::Failed, Some(c)) if c.status == ConditionStatus::False => "InvalidSpec",
                _ => phase.as_str(),
            };
            publish(
                recorder,
                obj,
                Event {
                    type_: if warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: reason.to_string(),
                    note: new.message.clone(),
                    action: "Reconcile".to_string(),
                    secondary: None,
                },
            )
            .await;
        }
    }
    for (type_, reason) in [
        ("DriftFromPreset", "DriftFromPreset"),
        ("ContextDownsized", "ContextDownsized"),
    ] {
        let now = condition_true(Some(new), type_);
        if now.is_some() && now != condition_true(old, type_) {
            publish(
                recorder,
                obj,
                Event {
                    type_: EventType::Warning,
                    reason: reason.to_string(),
                    note: now.map(str::to_string),
                    action: "Reconcile".to_string(),
                    secondary: None,
                },
            )
            .await;
        }
    }
}

/// A Warning event for a failed reconcile (the API refused a child, the server was unreachable, ...).
pub async fn publish_error(recorder: &Recorder, obj: &InferenceService, message: &str) {
    publish(
        recorder,
        obj,
        Event {
            type_: EventType::Warning,
            reason: "ReconcileError".to_string(),
            note: Some(message.chars().take(1000).collect()),
            action: "Reconcile".to_string(),
            secondary: None,
        },
    )
    .await;
}
