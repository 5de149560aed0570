//! `qwen2` (Qwen2, Qwen2.5): llama's block with biases on the q, k and v projections and NeoX RoPE.

use super::transformer::TransformerSpec;
use super::Result;
use crate::gguf::GgufFile;

pub fn spec(file: &GgufFile) -> Result<TransformerSpec> {
    let mut s = TransformerSpec::read_common(file, "qwen2")?;
    s.qkv_bias = true;
    Ok(s)
}
