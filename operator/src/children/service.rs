//! The ClusterIP Service in front of a service's agent pods (the OpenAI-compatible API on port 80).

use super::{deployment::AGENT_PORT, labels, owner_reference};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kiln_crds::InferenceService;
use kube::ResourceExt;

/// The port clients use.
pub const SERVICE_PORT: i32 = 80;

pub fn build(svc: &InferenceService) -> Service {
    let name = svc.name_any();
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: svc.namespace(),
            labels: Some(labels::labels(&name)),
            owner_references: owner_reference(svc).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(labels::selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::Int(AGENT_PORT)),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The in-cluster URL of the OpenAI-compatible API.
pub fn endpoint(svc: &InferenceService) -> String {
    format!(
        "http://{}.{}.svc/v1",
        svc.name_any(),
        svc.namespace().unwrap_or_else(|| "default".to_string())
    )
}
