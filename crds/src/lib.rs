//! Kiln's Kubernetes API types: the `InferenceService` custom resource (kiln.dev/v1alpha1, short name `kis`).
//!
//! The CRD YAML committed next to this crate (`crds/inferenceservice.yaml`) is generated from these types by
//! [`crd_yaml`]; a test fails when the committed file is stale. Validation uses OpenAPI schema features only
//! (enums, ranges, patterns, required fields) so the 1.20 test API server and later ones enforce the same rules.

mod preset;
mod spec;
mod status;
mod yaml;

pub use preset::Preset;
pub use spec::*;
pub use status::*;
pub use yaml::{crd, crd_yaml, CRD_FILE};

/// API group of every Kiln custom resource.
pub const GROUP: &str = "kiln.dev";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";
