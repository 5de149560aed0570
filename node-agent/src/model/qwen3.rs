//! `qwen3` (dense Qwen3): no biases, RMSNorm on each q and k head before NeoX RoPE, head size from
//! `attention.key_length` (128, independent of n_embd / n_head).

use super::transformer::TransformerSpec;
use super::Result;
use crate::gguf::GgufFile;

pub fn spec(file: &GgufFile) -> Result<TransformerSpec> {
    let mut s = TransformerSpec::read_common(file, "qwen3")?;
    s.qk_norm = true;
    Ok(s)
}
