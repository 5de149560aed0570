//! `InferenceService.spec`: what the user asks for. Field names follow ARCHITECTURE.md.

use crate::{InferenceServiceStatus, Preset};
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Smallest context a spec may ask for (tokens).
pub const MIN_CONTEXT: u32 = 512;
/// Largest context a spec may ask for (tokens): bounds every allocation the operator or agent derives from it.
pub const MAX_CONTEXT: u32 = 1_048_576;

/// One model served by kiln-agent pods: where the GGUF comes from, how much context, which GPUs.
// Each `printcolumn(...)` repeats the same keys by design; clippy reads them as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    namespaced,
    shortname = "kis",
    category = "kiln",
    status = "InferenceServiceStatus",
    derive = "PartialEq",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Requested-Ctx",
        type_ = "integer",
        json_path = ".status.requestedContextSize",
        description = "context size the spec (or its preset) asks for"
    ),
    printcolumn(
        name = "Effective-Ctx",
        type_ = "integer",
        json_path = ".status.effectiveContextSize",
        description = "smallest context the running agents actually serve"
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.message",
        description = "what the service is doing, e.g. `Loading 43% (fetching the model)`"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// A named golden recipe; fields set in this spec override it (and raise the DriftFromPreset condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// The GGUF model to serve.
    pub model: ModelSpec,
    /// Context window and KV cache.
    #[serde(default)]
    pub context: ContextSpec,
    /// Which accelerator the pods run on.
    #[serde(default)]
    pub gpu: GpuSpec,
    /// Speculative decoding.
    #[serde(default)]
    pub speculative: SpeculativeSpec,
    /// Default for thinking in the chat template. `off` really disables it (enable_thinking=false).
    /// Quote it in YAML (`reasoning: "off"`): unquoted, YAML 1.1 readers such as kubectl read a boolean.
    #[serde(default)]
    pub reasoning: Reasoning,
    /// Requests generated at the same time per replica (slots, each with its own KV cache). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub parallel: Option<u32>,
    /// Number of kiln-agent pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// CPU and memory for the agent container; GPU limits are added from `gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where downloaded model files are kept.
    #[serde(default)]
    pub model_cache: ModelCacheSpec,
    /// The kiln-agent container image (default: the operator's `--agent-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Image pull policy for the agent image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Extra node labels the pods must match (on top of the affinity derived from `gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Extra tolerations (GPU taints `amd.com/gpu` / `nvidia.com/gpu` are tolerated already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
}

fn default_replicas() -> i32 {
    1
}

/// The model file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Where the GGUF file comes from: `hf://org/repo/file.gguf`, `https://host/path/file.gguf`,
    /// `file:///absolute/path/file.gguf` (inside the pod) or `pvc://claim-name/path/file.gguf`.
    #[schemars(
        length(max = 2048),
        pattern(r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*/[^?#]+\.gguf|https://[A-Za-z0-9.-]+(:[0-9]+)?/[^\s]+|file:///[^\s]+\.gguf|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s]+\.gguf)$")
    )]
    pub uri: String,
    /// Expected SHA-256 of the file (64 lowercase hex digits); the download is refused if it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// Expected quantization of the weights, checked against the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// GGUF weight quantizations Kiln's engine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Quantization {
    F32,
    F16,
    BF16,
    #[serde(rename = "Q8_0")]
    Q8_0,
    #[serde(rename = "Q6_K")]
    Q6K,
    #[serde(rename = "Q5_K_M")]
    Q5KM,
    #[serde(rename = "Q5_K_S")]
    Q5KS,
    #[serde(rename = "Q5_0")]
    Q5_0,
    #[serde(rename = "Q4_K_M")]
    Q4KM,
    #[serde(rename = "Q4_K_S")]
    Q4KS,
    #[serde(rename = "Q4_1")]
    Q4_1,
    #[serde(rename = "Q4_0")]
    Q4_0,
}

/// Context window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContextSpec {
    /// Requested context in tokens (default: the preset's, else 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 512, max = 1_048_576))]
    pub size: Option<u32>,
    /// Floor for automatic downsizing in tokens; must not exceed `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 512, max = 1_048_576))]
    pub min: Option<u32>,
    /// KV cache element type (default: the preset's, else f16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_type: Option<KvCacheType>,
    /// Shrink the context instead of running out of VRAM.
    #[serde(default = "default_true")]
    pub auto_downsize: bool,
}

impl Default for ContextSpec {
    fn default() -> Self {
        ContextSpec {
            size: None,
            min: None,
            kv_cache_type: None,
            auto_downsize: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// KV cache element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheType {
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl KvCacheType {
    /// The name kiln-agent's `--kv-type` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            KvCacheType::F16 => "f16",
            KvCacheType::Q8_0 => "q8_0",
            KvCacheType::Q4_0 => "q4_0",
        }
    }
}

/// The accelerator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// `amd`, `nvidia` or `cpu` (default: the preset's, else cpu).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<GpuVendor>,
    /// GPU architecture (`gfx1100`, `sm_90`, ...): drives node affinity and the HSA override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(gfx[0-9]{3,4}[a-z]?|sm_[0-9]{2,3}[a-z]?)$"))]
    pub arch: Option<String>,
    /// GPUs per replica (default 1 on a GPU vendor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub count: Option<u32>,
    /// VRAM the agent leaves free per GPU, as a quantity (e.g. `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_headroom: Option<Quantity>,
}

/// Accelerator vendor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    Amd,
    Nvidia,
    Cpu,
}

impl GpuVendor {
    /// The extended resource the vendor's device plugin advertises; None for CPU.
    pub fn resource_name(self) -> Option<&'static str> {
        match self {
            GpuVendor::Amd => Some("amd.com/gpu"),
            GpuVendor::Nvidia => Some("nvidia.com/gpu"),
            GpuVendor::Cpu => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GpuVendor::Amd => "amd",
            GpuVendor::Nvidia => "nvidia",
            GpuVendor::Cpu => "cpu",
        }
    }
}

/// Speculative decoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpeculativeSpec {
    /// `mtp` (the model's multi-token-prediction head) or `none` (default: the preset's, else none).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<SpeculativeType>,
    /// Most tokens drafted per step; 3 is the measured sweet spot on RDNA3.
    #[serde(default = "default_draft_max")]
    #[schemars(range(min = 1, max = 8))]
    pub draft_max: u32,
}

impl Default for SpeculativeSpec {
    fn default() -> Self {
        SpeculativeSpec {
            kind: None,
            draft_max: default_draft_max(),
        }
    }
}

/// The golden draft length (field lesson 1: n=3 beats n=2 and n=4 on RDNA3).
pub const DEFAULT_DRAFT_MAX: u32 = 3;

fn default_draft_max() -> u32 {
    DEFAULT_DRAFT_MAX
}

/// Speculative decoding method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpeculativeType {
    None,
    Mtp,
}

impl SpeculativeType {
    pub fn as_str(self) -> &'static str {
        match self {
            SpeculativeType::None => "none",
            SpeculativeType::Mtp => "mtp",
        }
    }
}

/// Thinking in the chat template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reasoning {
    #[default]
    Off,
    On,
}

impl Reasoning {
    pub fn as_str(self) -> &'static str {
        match self {
            Reasoning::Off => "off",
            Reasoning::On => "on",
        }
    }
}

/// Where the model files live between pod restarts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCacheSpec {
    /// `emptyDir` (per pod, default), `persistentVolumeClaim` (one claim owned by this service) or
    /// `hostPath` (the node's model cache, shared by every Kiln pod on the node: a model is downloaded once
    /// per node and a restarted or rolled pod finds it there). The node directory is the cluster admin's
    /// choice (the operator's `--node-cache-dir`, chart value `operator.nodeModelCache.path`), not the
    /// spec's, so creating an InferenceService never mounts an arbitrary host directory.
    #[serde(default, rename = "type")]
    pub kind: ModelCacheType,
    /// Claim request or emptyDir size limit (default 50Gi for a claim, no limit for emptyDir); for every
    /// type also the cache's size limit, kept by evicting the least recently used files no pod has open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,

    /// Storage class of the claim (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Access mode of the claim; ReadWriteMany lets replicas on several nodes share it.
    #[serde(default)]
    pub access_mode: CacheAccessMode,
}

/// Model cache volume type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ModelCacheType {
    #[default]
    EmptyDir,
    PersistentVolumeClaim,
    HostPath,
}

/// Access mode of the model cache claim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CacheAccessMode {
    #[default]
    ReadWriteOnce,
    ReadWriteMany,
}

impl CacheAccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheAccessMode::ReadWriteOnce => "ReadWriteOnce",
            CacheAccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// Image pull policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}
