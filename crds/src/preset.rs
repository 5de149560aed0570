//! Names of the golden recipes. The values of each recipe live in the operator (`operator/src/presets.rs`);
//! the names live here so the API server rejects an unknown preset before the operator ever sees it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A named, validated recipe (model family, GPU, context, KV type, speculation) that a spec can start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Preset {
    /// Qwen3.6-27B Q4_K_M on one 24 GB RDNA3 card (RX 7900 XTX, gfx1100): the field-tested recipe.
    #[serde(rename = "qwen3.6-27b-q4km-24gb-rdna3")]
    Qwen36_27bQ4kmRdna3_24gb,
    /// SmolLM2-135M on CPU: the smallest real deployment, for trying Kiln out and for tests.
    #[serde(rename = "smollm2-135m-cpu")]
    Smollm2_135mCpu,
}

impl Preset {
    pub const ALL: [Preset; 2] = [Preset::Qwen36_27bQ4kmRdna3_24gb, Preset::Smollm2_135mCpu];

    /// The name users write in `spec.preset`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Qwen36_27bQ4kmRdna3_24gb => "qwen3.6-27b-q4km-24gb-rdna3",
            Preset::Smollm2_135mCpu => "smollm2-135m-cpu",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
