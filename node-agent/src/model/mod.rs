//! Model architectures, one file each (as llama.cpp lays them out). Dense transformers share the
//! building blocks in [`transformer`]; each architecture file says how its hyperparameters and tensors
//! are read and which features it uses.

mod gemma3;
mod llama;
mod qwen2;
mod qwen3;
pub mod qwen35;
pub mod transformer;

use crate::gguf::{GgufError, GgufFile};
use kiln_kernels::backend::{Backend, BackendError, KvType};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("architecture `{0}` is not supported (supported: {SUPPORTED_ARCHS})")]
    UnsupportedArch(String),
    #[error("tensor `{name}`: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub const SUPPORTED_ARCHS: &str = "llama, qwen2, qwen3, qwen35, gemma3";

/// What callers need to know about a loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub arch: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    /// Context length the model was trained for.
    pub n_ctx_train: usize,
}

/// Which rows of a forward pass need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token (prompt prefill, plain decoding).
    Last,
    /// Every token (speculative verification, perplexity).
    All,
}

/// Per-layer state of one sequence. Attention layers keep K/V; recurrent layers (Qwen3.5's Gated
/// DeltaNet) keep a fixed-size state that summarises every token seen so far.
pub enum LayerCache<B: Backend> {
    Attention(B::KvCache),
    Recurrent(RecurrentState<B>),
}

/// The state of one recurrent layer after the sequence's last token. Unlike a KV cache it cannot be
/// truncated: it is valid only at exactly the position it was advanced to.
pub struct RecurrentState<B: Backend> {
    /// The last `kernel − 1` conv inputs of every channel (channel-major).
    pub conv: B::Tensor,
    /// The delta-rule state of every V-head (`n_v_heads × head_v_dim × head_k_dim`, f32).
    pub ssm: B::Tensor,
}

/// Everything one sequence carries between forward passes.
pub struct Cache<B: Backend> {
    pub layers: Vec<LayerCache<B>>,
    pub n_ctx: usize,
    pub kv_type: KvType,
}

impl<B: Backend> Cache<B> {
    pub fn bytes(&self, backend: &B) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Attention(kv) => backend.kv_cache_bytes(kv),
                LayerCache::Recurrent(r) => {
                    4 * (backend.tensor_len(&r.conv) + backend.tensor_len(&r.ssm))
                }
            })
            .sum()
    }

    /// Whether any layer keeps recurrent state (which a shorter prefix cannot be cut back to).
    pub fn has_recurrent(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(l, LayerCache::Recurrent(_)))
    }

    /// Zeroes every recurrent state (the start of a new sequence). Attention caches need nothing: they
    /// are overwritten from position 0.
    pub fn reset(&mut self, backend: &B) -> Result<()> {
        for l in &mut self.layers {
            if let LayerCache::Recurrent(r) = l {
                r.conv = backend.tensor(backend.tensor_len(&r.conv))?;
                r.ssm = backend.tensor(backend.tensor_len(&r.ssm))?;
            }
        }
        Ok(())
    }
}

/// The checks every `Model::forward` makes before touching its buffers: a batch of 1..=`max_batch`
/// tokens, positions inside the cache's context, and a cache made for a model of `n_layers` layers.
pub(crate) fn check_forward<B: Backend>(
    cache: &Cache<B>,
    n_layers: usize,
    tokens: &[u32],
    start: usize,
    max_batch: usize,
) -> Result<()> {
    if tokens.is_empty() || tokens.len() > max_batch {
        return Err(ModelError::Invalid(format!(
            "a forward pass takes 1..={max_batch} tokens, got {}",
            tokens.len()
        )));
    }
    if start + tokens.len() > cache.n_ctx {
        return Err(ModelError::Invalid(format!(
            "positions up to {} exceed the context size {}",
            start + tokens.len(),
            cache.n_ctx
        )));
    }
    if cache.layers.len() != n_layers {
        return Err(ModelError::Invalid(
            "cache was made for another model".into(),
        ));
    }
    Ok(())
}

/// A model ready to run on backend `B`.
pub trait Model<B: Backend>: Send + Sync {
    fn info(&self) -> &ModelInfo;
    fn new_cache(&self, n_ctx: usize, kv_type: KvType) -> Result<Cache<B>>;
    /// Runs `tokens` at positions `start..start + tokens.len()`, extending `cache`, and returns the
    /// logits of the requested rows (row-major, `n_vocab` each).
    fn forward(
        &self,
        cache: &mut Cache<B>,
        tokens: &[u32],
        start: usize,
        logits: Logits,
    ) -> Result<Vec<f32>>;
    /// Largest number of tokens one `forward` call accepts (longer prompts are fed in chunks).
    fn max_batch(&self) -> usize;
}

/// Loads the model in `file` onto `backend`, choosing the architecture from `general.architecture`.
pub fn load<B: Backend + 'static>(file: &GgufFile, backend: Arc<B>) -> Result<Box<dyn Model<B>>> {
    let arch = file.architecture()?.to_string();
    let spec = match arch.as_str() {
        "llama" => llama::spec(file)?,
        "qwen2" => qwen2::spec(file)?,
        "qwen3" => qwen3::spec(file)?,
        "gemma3" => gemma3::spec(file)?,
        "qwen35" => return Ok(Box::new(qwen35::Qwen35::load(file, backend)?)),
        _ => return Err(ModelError::UnsupportedArch(arch)),
    };
    Ok(Box::new(transformer::Transformer::load(
        file, backend, spec,
    )?))
}
