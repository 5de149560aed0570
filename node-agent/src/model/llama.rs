//! `llama` (Llama 2/3, SmolLM, Mistral-style dense models): RMSNorm, SwiGLU, RoPE on adjacent pairs
//! (the GGUF converter permutes q/k for it), optional linear RoPE scaling.

use super::transformer::TransformerSpec;
use super::Result;
use crate::gguf::GgufFile;
use kiln_kernels::backend::RopeStyle;

pub fn spec(file: &GgufFile) -> Result<TransformerSpec> {
    let mut s = TransformerSpec::read_common(file, "llama")?;
    s.rope_style = RopeStyle::Normal;
    Ok(s)
}
