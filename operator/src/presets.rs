//! The golden recipes: validated settings for a model on a GPU, named so deployments can start from them and
//! so the operator can say loudly when a deployment departs from one (field lesson 1: configs drift).

use kiln_crds::{GpuVendor, KvCacheType, Preset, Quantization, Reasoning, SpeculativeType};

/// The values a preset fixes. Every field here is one a spec may override (and drift on).
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub context_size: u32,
    pub kv_cache_type: KvCacheType,
    pub speculative: SpeculativeType,
    pub draft_max: u32,
    pub reasoning: Reasoning,
    pub parallel: u32,
    pub vendor: GpuVendor,
    pub arch: Option<&'static str>,
    pub gpu_count: u32,
    pub quantization: Option<Quantization>,
}

/// The recipe behind a preset name.
pub fn recipe(preset: Preset) -> Recipe {
    match preset {
        // Qwen3.6-27B Q4_K_M (~16 GB) on one RX 7900 XTX: 128K context fits with q4_0 KV (~21 GB used at
        // start), MTP with draft max 3 is the measured optimum (47 tok/s vs 43 at n=2 and 41 at n=4), and
        // thinking off keeps one request from generating 8000 tokens of chain of thought.
        Preset::Qwen36_27bQ4kmRdna3_24gb => Recipe {
            context_size: 131_072,
            kv_cache_type: KvCacheType::Q4_0,
            speculative: SpeculativeType::Mtp,
            draft_max: 3,
            reasoning: Reasoning::Off,
            parallel: 1,
            vendor: GpuVendor::Amd,
            arch: Some("gfx1100"),
            gpu_count: 1,
            quantization: Some(Quantization::Q4KM),
        },
        // SmolLM2-135M on CPU: no MTP head, small context, f16 KV (it is tiny).
        Preset::Smollm2_135mCpu => Recipe {
            context_size: 2048,
            kv_cache_type: KvCacheType::F16,
            speculative: SpeculativeType::None,
            draft_max: 3,
            reasoning: Reasoning::Off,
            parallel: 1,
            vendor: GpuVendor::Cpu,
            arch: None,
            gpu_count: 0,
            quantization: Some(Quantization::Q4_1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_recipe_matches_the_field_report() {
        let r = recipe(Preset::Qwen36_27bQ4kmRdna3_24gb);
        assert_eq!(r.context_size, 131_072);
        assert_eq!(r.kv_cache_type, KvCacheType::Q4_0);
        assert_eq!(r.speculative, SpeculativeType::Mtp);
        assert_eq!(r.draft_max, 3);
        assert_eq!(r.reasoning, Reasoning::Off);
        assert_eq!(r.parallel, 1);
        assert_eq!(r.vendor, GpuVendor::Amd);
        assert_eq!(r.arch, Some("gfx1100"));
    }

    #[test]
    fn every_preset_has_a_recipe_inside_the_schema_ranges() {
        for p in Preset::ALL {
            let r = recipe(p);
            assert!(
                (kiln_crds::MIN_CONTEXT..=kiln_crds::MAX_CONTEXT).contains(&r.context_size),
                "{p}"
            );
            assert!((1..=8).contains(&r.draft_max), "{p}");
            assert_eq!(r.vendor == GpuVendor::Cpu, r.gpu_count == 0, "{p}");
        }
    }
}
