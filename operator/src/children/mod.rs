//! The objects one InferenceService owns, each built by its own module as a plain value (no API calls), so
//! they are easy to test and the reconciler only applies them.

pub mod affinity;
pub mod deployment;
pub mod labels;
pub mod pdb;
pub mod pvc;
pub mod service;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kiln_crds::InferenceService;
use kube::Resource;

/// The owner reference every child carries: garbage collection deletes children with their service.
pub fn owner_reference(svc: &InferenceService) -> Option<OwnerReference> {
    svc.controller_owner_ref(&())
}

/// Name of the model cache claim of a service.
pub fn model_cache_claim_name(service_name: &str) -> String {
    format!("{service_name}-models")
}
