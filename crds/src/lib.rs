//! Kiln's Kubernetes API types. The `InferenceService` types (kiln.dev/v1alpha1) and their generated CRD
//! YAML arrive with the operator issue; this crate exists now so the dependency direction
//! (operator → crds, node-agent → crds) is fixed from the start.

/// API group of every Kiln custom resource.
pub const GROUP: &str = "kiln.dev";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";
