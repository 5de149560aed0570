//! `gemma3`: embeddings scaled by √n_embd, GeGLU (tanh GELU), q/k RMSNorm, extra RMSNorms after
//! attention and after the FFN, and sliding-window attention on five of every six layers (those use RoPE
//! base 10 000; the global ones the file's base). The GGUF converter stores Gemma's norm weights as
//! (1 + w), so every norm here is a plain x·w.

use super::transformer::{SlidingWindow, TransformerSpec, MAX_DIM};
use super::Result;
use crate::gguf::GgufFile;
use kiln_kernels::backend::Activation;

/// Gemma 3's local:global layer pattern when the file does not say otherwise.
const SWA_PATTERN: usize = 6;
/// RoPE base of Gemma 3's sliding-window layers.
const SWA_ROPE_BASE: f32 = 10_000.0;

pub fn spec(file: &GgufFile) -> Result<TransformerSpec> {
    let m = &file.metadata;
    let mut s = TransformerSpec::read_common(file, "gemma3")?;
    s.activation = Activation::GeGlu;
    s.qk_norm = true;
    s.post_norms = true;
    s.embed_scale = Some((s.n_embd as f32).sqrt());
    // Gemma 3 27B scales queries by 1/√(n_embd / n_head); every other size by 1/√head_dim.
    s.attn_scale = if s.n_layer == 62 {
        1.0 / ((s.n_embd / s.n_head) as f32).sqrt()
    } else {
        1.0 / (s.head_dim as f32).sqrt()
    };
    if let Some(window) = m.opt_dim("gemma3.attention.sliding_window", MAX_DIM)? {
        s.sliding_window = Some(SlidingWindow {
            window,
            pattern: SWA_PATTERN,
            rope_base: m
                .opt_f32("gemma3.rope.freq_base_swa")?
                .unwrap_or(SWA_ROPE_BASE),
        });
    }
    s.final_logit_softcap = m
        .opt_f32("gemma3.final_logit_softcapping")?
        .filter(|&c| c > 0.0);
    Ok(s)
}
