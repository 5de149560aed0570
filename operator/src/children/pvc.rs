//! The model cache claim (only when `modelCache.type: persistentVolumeClaim`): downloads survive pod restarts.

use super::{labels, model_cache_claim_name, owner_reference};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kiln_crds::{InferenceService, ModelCacheType};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Claim size when the spec gives none: a 27B Q4_K_M model is ~16 GB; leave room for a second file.
const DEFAULT_SIZE: &str = "50Gi";

/// The claim, or None when the cache is an emptyDir.
pub fn build(svc: &InferenceService) -> Option<PersistentVolumeClaim> {
    let cache = &svc.spec.model_cache;
    if cache.kind != ModelCacheType::PersistentVolumeClaim {
        return None;
    }
    let name = svc.name_any();
    let size = cache
        .size
        .clone()
        .unwrap_or_else(|| Quantity(DEFAULT_SIZE.to_string()));
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(model_cache_claim_name(&name)),
            namespace: svc.namespace(),
            labels: Some(labels::labels(&name)),
            owner_references: owner_reference(svc).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![cache.access_mode.as_str().to_string()]),
            storage_class_name: cache.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}
