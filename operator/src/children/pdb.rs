//! The PodDisruptionBudget (only when replicas > 1): a node drain takes at most one agent at a time.
//! Built as a dynamic object because the API version depends on the server: `policy/v1` from 1.21 on,
//! `policy/v1beta1` before (the test server is 1.20); the fields used here mean the same in both.

use super::{labels, owner_reference};
use kiln_crds::InferenceService;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::ResourceExt;
use serde_json::json;

/// The PDB API resource for a `policy` version (`v1` or `v1beta1`).
pub fn api_resource(policy_version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", policy_version, "PodDisruptionBudget"),
        "poddisruptionbudgets",
    )
}

/// The budget, or None when the service has at most one replica.
pub fn build(svc: &InferenceService, resource: &ApiResource) -> Option<DynamicObject> {
    if svc.spec.replicas <= 1 {
        return None;
    }
    let name = svc.name_any();
    let mut obj = DynamicObject::new(&name, resource).data(json!({
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": labels::selector(&name)},
        }
    }));
    obj.metadata.namespace = svc.namespace();
    obj.metadata.labels = Some(labels::labels(&name));
    obj.metadata.owner_references = owner_reference(svc).map(|o| vec![o]);
    Some(obj)
}
