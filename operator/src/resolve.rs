//! Spec + preset → the settings the pods actually run with, the fields that drift from the preset, and the
//! checks the OpenAPI schema cannot express (cross-field rules), each with a message a user can act on.

use crate::presets::{recipe, Recipe};
use kiln_crds::{
    GpuVendor, InferenceServiceSpec, KvCacheType, Preset, Quantization, Reasoning, SpeculativeType,
};

/// Context when neither the spec nor a preset gives one.
const DEFAULT_CONTEXT: u32 = 4096;

/// The settings the pods run with.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub context_size: u32,
    pub context_min: Option<u32>,
    pub auto_downsize: bool,
    pub kv_cache_type: KvCacheType,
    pub speculative: SpeculativeType,
    pub draft_max: u32,
    pub reasoning: Reasoning,
    pub parallel: u32,
    pub vendor: GpuVendor,
    pub arch: Option<String>,
    /// GPUs per pod; 0 on CPU.
    pub gpu_count: u32,
    pub quantization: Option<Quantization>,
    /// Device memory the agent keeps free (`gpu.vramHeadroom`), in bytes; None: the agent's default.
    pub vram_headroom_bytes: Option<u64>,
    /// Fields the spec sets to something other than its preset's value.
    pub drift: Vec<Drift>,
}

/// One field where the spec departs from its preset.
#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    pub field: &'static str,
    pub preset_value: String,
    pub spec_value: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (preset {}, spec {})",
            self.field, self.preset_value, self.spec_value
        )
    }
}

/// Takes the spec's value when set, else the preset's, else `fallback`; records drift from the preset.
fn pick<T: PartialEq + Clone + std::fmt::Debug>(
    field: &'static str,
    spec: Option<T>,
    preset: Option<T>,
    fallback: T,
    show: impl Fn(&T) -> String,
    drift: &mut Vec<Drift>,
) -> T {
    match (spec, preset) {
        (Some(s), Some(p)) => {
            if s != p {
                drift.push(Drift {
                    field,
                    preset_value: show(&p),
                    spec_value: show(&s),
                });
            }
            s
        }
        (Some(s), None) => s,
        (None, Some(p)) => p,
        (None, None) => fallback,
    }
}

/// Like [`pick`] for settings that may stay unset.
fn pick_optional<T: PartialEq + Clone + std::fmt::Debug>(
    field: &'static str,
    spec: Option<T>,
    preset: Option<T>,
    show: impl Fn(&T) -> String,
    drift: &mut Vec<Drift>,
) -> Option<T> {
    if let (Some(s), Some(p)) = (&spec, &preset) {
        if s != p {
            drift.push(Drift {
                field,
                preset_value: show(p),
                spec_value: show(s),
            });
        }
    }
    spec.or(preset)
}

/// Resolves a spec against its preset. Errors are the spec's fault and say how to fix it.
pub fn resolve(spec: &InferenceServiceSpec) -> Result<Resolved, String> {
    let recipe: Option<Recipe> = spec.preset.map(recipe);
    let r = recipe.as_ref();
    let mut drift = Vec::new();
    let num = |v: &u32| v.to_string();

    let context_size = pick(
        "context.size",
        spec.context.size,
        r.map(|r| r.context_size),
        DEFAULT_CONTEXT,
        num,
        &mut drift,
    );
    let kv_cache_type = pick(
        "context.kvCacheType",
        spec.context.kv_cache_type,
        r.map(|r| r.kv_cache_type),
        KvCacheType::F16,
        |v| v.as_str().to_string(),
        &mut drift,
    );
    let speculative = pick(
        "speculative.type",
        spec.speculative.kind,
        r.map(|r| r.speculative),
        SpeculativeType::None,
        |v| v.as_str().to_string(),
        &mut drift,
    );
    // draftMax and reasoning always carry a value (schema defaults equal to the golden values), so a
    // difference from the preset is always a deliberate override.
    let draft_max = pick(
        "speculative.draftMax",
        Some(spec.speculative.draft_max),
        r.map(|r| r.draft_max),
        kiln_crds::DEFAULT_DRAFT_MAX,
        num,
        &mut drift,
    );
    let reasoning = pick(
        "reasoning",
        Some(spec.reasoning),
        r.map(|r| r.reasoning),
        Reasoning::Off,
        |v| v.as_str().to_string(),
        &mut drift,
    );
    let parallel = pick(
        "parallel",
        spec.parallel,
        r.map(|r| r.parallel),
        1,
        num,
        &mut drift,
    );
    let vendor = pick(
        "gpu.vendor",
        spec.gpu.vendor,
        r.map(|r| r.vendor),
        GpuVendor::Cpu,
        |v| v.as_str().to_string(),
        &mut drift,
    );
    let arch = pick_optional(
        "gpu.arch",
        spec.gpu.arch.clone(),
        r.and_then(|r| r.arch.map(str::to_string)),
        String::clone,
        &mut drift,
    );
    let default_count = if vendor == GpuVendor::Cpu { 0 } else { 1 };
    let gpu_count = pick(
        "gpu.count",
        spec.gpu.count,
        r.map(|r| r.gpu_count).filter(|_| vendor != GpuVendor::Cpu),
        default_count,
        num,
        &mut drift,
    );
    let quantization = pick_optional(
        "model.quantization",
        spec.model.quantization,
        r.and_then(|r| r.quantization),
        |v| format!("{v:?}"),
        &mut drift,
    );

    if let Some(min) = spec.context.min {
        if min > context_size {
            return Err(format!(
                "context.min ({min}) is larger than the context size ({context_size}): the floor for \
                 downsizing must not exceed the requested context"
            ));
        }
    }
    match (vendor, arch.as_deref()) {
        (GpuVendor::Cpu, Some(a)) => {
            return Err(format!(
                "gpu.arch is {a} but gpu.vendor is cpu: set gpu.vendor to amd or nvidia, or remove gpu.arch"
            ))
        }
        (GpuVendor::Amd, Some(a)) if !a.starts_with("gfx") => {
            return Err(format!(
                "gpu.arch {a} is not an AMD architecture (gfx...) but gpu.vendor is amd"
            ))
        }
        (GpuVendor::Nvidia, Some(a)) if !a.starts_with("sm_") => {
            return Err(format!(
                "gpu.arch {a} is not an NVIDIA architecture (sm_...) but gpu.vendor is nvidia"
            ))
        }
        _ => {}
    }
    let vram_headroom_bytes = spec
        .gpu
        .vram_headroom
        .as_ref()
        .map(|q| crate::quantity::to_bytes(&q.0).map_err(|e| format!("gpu.vramHeadroom: {e}")))
        .transpose()?;
    if vendor == GpuVendor::Cpu && spec.gpu.count.is_some() {
        return Err("gpu.count is set but gpu.vendor is cpu: CPU pods take no GPUs".to_string());
    }
    if let Some(a) = arch.as_deref() {
        if vendor == GpuVendor::Amd && crate::children::affinity::amd_device_ids(a).is_none() {
            return Err(format!(
                "gpu.arch {a}: the operator has no AMD device-id table for it (known: {}); remove gpu.arch \
                 and select nodes with spec.nodeSelector instead",
                crate::children::affinity::KNOWN_AMD_ARCHS.join(", ")
            ));
        }
    }

    Ok(Resolved {
        context_size,
        context_min: spec.context.min,
        auto_downsize: spec.context.auto_downsize,
        kv_cache_type,
        speculative,
        draft_max,
        reasoning,
        parallel,
        vendor,
        arch,
        gpu_count,
        quantization,
        vram_headroom_bytes,
        drift,
    })
}

/// The preset name, for messages.
pub fn preset_name(spec: &InferenceServiceSpec) -> Option<&'static str> {
    spec.preset.map(Preset::name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_crds::{ContextSpec, ModelSpec};

    fn spec(json: serde_json::Value) -> InferenceServiceSpec {
        serde_json::from_value(json).expect("test spec parses")
    }

    #[test]
    fn golden_preset_fills_everything_and_has_no_drift() {
        let s = spec(serde_json::json!({
            "preset": "qwen3.6-27b-q4km-24gb-rdna3",
            "model": {"uri": "hf://unsloth/Qwen3.6-27B-GGUF/Qwen3.6-27B-Q4_K_M.gguf"}
        }));
        let r = resolve(&s).unwrap();
        assert_eq!(r.context_size, 131_072);
        assert_eq!(r.kv_cache_type, KvCacheType::Q4_0);
        assert_eq!(r.speculative, SpeculativeType::Mtp);
        assert_eq!(r.draft_max, 3);
        assert_eq!(r.reasoning, Reasoning::Off);
        assert_eq!(r.parallel, 1);
        assert_eq!(r.vendor, GpuVendor::Amd);
        assert_eq!(r.gpu_count, 1);
        assert!(r.drift.is_empty(), "{:?}", r.drift);
    }

    #[test]
    fn overriding_a_preset_value_is_drift_naming_the_field() {
        let s = spec(serde_json::json!({
            "preset": "qwen3.6-27b-q4km-24gb-rdna3",
            "model": {"uri": "hf://unsloth/Qwen3.6-27B-GGUF/Qwen3.6-27B-Q4_K_M.gguf"},
            "context": {"size": 65536},
            "speculative": {"draftMax": 4}
        }));
        let r = resolve(&s).unwrap();
        assert_eq!(r.context_size, 65536);
        assert_eq!(r.draft_max, 4);
        let fields: Vec<_> = r.drift.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["context.size", "speculative.draftMax"]);
        assert_eq!(
            r.drift[0].to_string(),
            "context.size (preset 131072, spec 65536)"
        );
    }

    #[test]
    fn without_preset_defaults_are_cpu_f16_4096() {
        let s = InferenceServiceSpec {
            preset: None,
            model: ModelSpec {
                uri: "file:///models/x.gguf".into(),
                ..Default::default()
            },
            context: ContextSpec::default(),
            gpu: Default::default(),
            speculative: Default::default(),
            reasoning: Reasoning::Off,
            parallel: None,
            replicas: 1,
            resources: None,
            model_cache: Default::default(),
            image: None,
            image_pull_policy: None,
            node_selector: None,
            tolerations: None,
        };
        let r = resolve(&s).unwrap();
        assert_eq!(
            (r.context_size, r.kv_cache_type, r.vendor, r.gpu_count),
            (4096, KvCacheType::F16, GpuVendor::Cpu, 0)
        );
        assert!(r.drift.is_empty());
    }

    #[test]
    fn cross_field_errors_say_what_to_fix() {
        let bad_min = spec(serde_json::json!({
            "model": {"uri": "file:///m.gguf"}, "context": {"size": 1024, "min": 2048}
        }));
        assert!(resolve(&bad_min)
            .unwrap_err()
            .contains("context.min (2048)"));
        let bad_arch = spec(serde_json::json!({
            "model": {"uri": "file:///m.gguf"}, "gpu": {"vendor": "nvidia", "arch": "gfx1100"}
        }));
        assert!(resolve(&bad_arch)
            .unwrap_err()
            .contains("not an NVIDIA architecture"));
        let cpu_arch = spec(serde_json::json!({
            "model": {"uri": "file:///m.gguf"}, "gpu": {"arch": "sm_90"}
        }));
        assert!(resolve(&cpu_arch)
            .unwrap_err()
            .contains("gpu.vendor is cpu"));
        let unknown = spec(serde_json::json!({
            "model": {"uri": "file:///m.gguf"}, "gpu": {"vendor": "amd", "arch": "gfx9999"}
        }));
        assert!(resolve(&unknown)
            .unwrap_err()
            .contains("no AMD device-id table"));
        let headroom = spec(serde_json::json!({
            "model": {"uri": "file:///m.gguf"}, "gpu": {"vramHeadroom": "lots"}
        }));
        let e = resolve(&headroom).unwrap_err();
        assert!(
            e.starts_with("gpu.vramHeadroom: `lots` is not a byte quantity"),
            "{e}"
        );
    }

    #[test]
    fn vram_headroom_becomes_bytes_from_a_string_or_a_number() {
        for (headroom, bytes) in [
            (serde_json::json!("1.5Gi"), 1_610_612_736u64),
            (serde_json::json!("2G"), 2_000_000_000),
            (serde_json::json!(1048576), 1 << 20),
        ] {
            let s = spec(serde_json::json!({
                "model": {"uri": "file:///m.gguf"}, "gpu": {"vramHeadroom": headroom}
            }));
            assert_eq!(
                resolve(&s).unwrap().vram_headroom_bytes,
                Some(bytes),
                "{headroom}"
            );
        }
        let none = spec(serde_json::json!({"model": {"uri": "file:///m.gguf"}}));
        assert_eq!(resolve(&none).unwrap().vram_headroom_bytes, None);
    }
}
