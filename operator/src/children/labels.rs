//! Labels on every child and on the pods: the recommended `app.kubernetes.io/*` set plus the owning service.

use std::collections::BTreeMap;

/// Label naming the InferenceService a pod or child belongs to.
pub const SERVICE_LABEL: &str = "kiln.dev/inference-service";
/// Value of `app.kubernetes.io/managed-by` on everything the operator creates.
pub const MANAGED_BY: &str = "kiln-operator";

/// The pod selector (never changes for a service: a Deployment's selector is immutable).
pub fn selector(service_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "kiln-agent".to_string(),
        ),
        (SERVICE_LABEL.to_string(), service_name.to_string()),
    ])
}

/// Labels on every child object and pod.
pub fn labels(service_name: &str) -> BTreeMap<String, String> {
    let mut l = selector(service_name);
    l.insert(
        "app.kubernetes.io/instance".to_string(),
        service_name.to_string(),
    );
    l.insert(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGED_BY.to_string(),
    );
    l.insert(
        "app.kubernetes.io/component".to_string(),
        "inference".to_string(),
    );
    l
}

/// The label selector string for listing one service's pods.
pub fn selector_string(service_name: &str) -> String {
    selector(service_name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
