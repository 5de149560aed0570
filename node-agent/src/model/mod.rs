//! Model architectures, one file each (as llama.cpp lays them out). Dense transformers share the
//! building blocks in [`transformer`]; each architecture file says how its hyperparameters and tensors
//! are read and which features it uses.

pub mod batch;
mod gate_up;
mod gemma3;
mod llama;
mod qwen2;
mod qwen3;
pub mod qwen35;
pub mod transformer;

pub use batch::BatchRow;

use crate::gguf::{GgufError, GgufFile};
use kiln_kernels::backend::{Backend, BackendError, KvType, TensorCopy};
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

/// What a pass hands back of each row it computed logits for. The sampler usually needs only a
/// sliver of a row (Qwen3.6's is 248,320 values, 1 MB): the backend picks it where the logits are and
/// reads back just that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Readout {
    /// Every logit.
    #[default]
    Logits,
    /// The index of the largest logit (greedy decoding; [`kiln_kernels::backend::argmax`]'s order).
    Argmax,
    /// The `k` largest logits with their indices, largest first ([`kiln_kernels::backend::top_k`]).
    TopK(usize),
}

/// A pass's result, shaped by its [`Readout`].
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Rows × n_vocab logits, row-major.
    Logits(Vec<f32>),
    /// One token id a row.
    Argmax(Vec<u32>),
    /// Each row's candidates.
    TopK(Vec<Vec<(u32, f32)>>),
}

/// One row of an [`Output`].
#[derive(Debug)]
pub enum OutputRow<'a> {
    Logits(&'a mut [f32]),
    Argmax(u32),
    TopK(&'a [(u32, f32)]),
}

impl Output {
    /// The backend's logits tensor (`rows` rows of `n_vocab`) read back as `readout` asks.
    pub fn read<B: Backend + ?Sized>(
        be: &B,
        logits: &B::Tensor,
        rows: usize,
        n_vocab: usize,
        readout: Readout,
    ) -> Result<Output> {
        Ok(match readout {
            Readout::Logits => {
                let mut out = vec![0f32; rows * n_vocab];
                be.read(logits, 0, &mut out)?;
                Output::Logits(out)
            }
            Readout::Argmax => Output::Argmax(be.argmax_rows(logits, rows, n_vocab)?),
            Readout::TopK(k) => Output::TopK(be.top_k_rows(logits, rows, n_vocab, k)?),
        })
    }

    /// What [`Output::read`] gives, from logits already on the host (rows × n_vocab).
    pub fn from_logits(logits: Vec<f32>, n_vocab: usize, readout: Readout) -> Output {
        let rows = || logits.chunks_exact(n_vocab.max(1));
        match readout {
            Readout::Logits => Output::Logits(logits),
            Readout::Argmax => Output::Argmax(rows().map(kiln_kernels::backend::argmax).collect()),
            Readout::TopK(k) => {
                Output::TopK(rows().map(|r| kiln_kernels::backend::top_k(r, k)).collect())
            }
        }
    }

    /// The rows, `n_vocab` logits each for [`Output::Logits`].
    pub fn rows(&mut self, n_vocab: usize) -> Vec<OutputRow<'_>> {
        match self {
            Output::Logits(l) => l
                .chunks_exact_mut(n_vocab.max(1))
                .map(OutputRow::Logits)
                .collect(),
            Output::Argmax(ids) => ids.iter().map(|&t| OutputRow::Argmax(t)).collect(),
            Output::TopK(c) => c.iter().map(|r| OutputRow::TopK(r)).collect(),
        }
    }

    /// The last row (what a prefill or decode step samples from).
    pub fn last_row(&mut self, n_vocab: usize) -> Result<OutputRow<'_>> {
        let row = match self {
            Output::Logits(l) => l
                .chunks_exact_mut(n_vocab.max(1))
                .last()
                .map(OutputRow::Logits),
            Output::Argmax(ids) => ids.last().map(|&t| OutputRow::Argmax(t)),
            Output::TopK(c) => c.last().map(|r| OutputRow::TopK(r)),
        };
        row.ok_or_else(|| ModelError::Invalid("a pass returned no row to sample from".into()))
    }

    /// The logits, for a pass run with [`Readout::Logits`].
    pub fn into_logits(self) -> Result<Vec<f32>> {
        match self {
            Output::Logits(l) => Ok(l),
            _ => Err(ModelError::Invalid(
                "the pass read back a sample, not logits".into(),
            )),
        }
    }
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
    /// Per-token copies of `conv` and `ssm` from the last pass run with snapshots on (speculative
    /// verification), so the state can be moved back to any token of that pass.
    pub snapshots: Option<StateSnapshots<B>>,
}

impl<B: Backend> RecurrentState<B> {
    pub fn new(backend: &B, conv_len: usize, ssm_len: usize) -> Result<Self> {
        Ok(RecurrentState {
            conv: backend.tensor(conv_len)?,
            ssm: backend.tensor(ssm_len)?,
            snapshots: None,
        })
    }

    /// Values in one copy of the state (conv + ssm).
    pub fn len(&self, backend: &B) -> usize {
        backend.tensor_len(&self.conv) + backend.tensor_len(&self.ssm)
    }
}

/// `slots` copies of a recurrent state: slot r is the state after token r of the last snapshot pass,
/// for every token but the pass's last, whose state is the live one (its slot is left unwritten).
pub struct StateSnapshots<B: Backend> {
    pub conv: B::Tensor,
    pub ssm: B::Tensor,
    pub slots: usize,
    /// Tokens the last snapshot pass ran.
    pub filled: usize,
}

/// A copy of every recurrent state of a cache at one position (prefix reuse: see the engine).
pub struct StateCopy<B: Backend> {
    /// Per recurrent layer, in layer order: (conv, ssm).
    states: Vec<(B::Tensor, B::Tensor)>,
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
                    let snap = r.snapshots.as_ref().map_or(0, |s| {
                        backend.tensor_len(&s.conv) + backend.tensor_len(&s.ssm)
                    });
                    4 * (r.len(backend) + snap)
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
                if let Some(s) = &mut r.snapshots {
                    s.filled = 0;
                }
            }
        }
        Ok(())
    }

    /// Gives every recurrent layer room for `slots` per-token state snapshots (a verify pass of up to
    /// `slots` tokens). Idempotent for the same or a smaller count.
    pub fn enable_snapshots(&mut self, backend: &B, slots: usize) -> Result<()> {
        for l in &mut self.layers {
            if let LayerCache::Recurrent(r) = l {
                if r.snapshots.as_ref().is_some_and(|s| s.slots >= slots) {
                    continue;
                }
                r.snapshots = Some(StateSnapshots {
                    conv: backend.tensor(slots * backend.tensor_len(&r.conv))?,
                    ssm: backend.tensor(slots * backend.tensor_len(&r.ssm))?,
                    slots,
                    filled: 0,
                });
            }
        }
        Ok(())
    }

    /// Moves every recurrent state back to just after token `keep − 1` of the last snapshot pass (its
    /// first `keep` tokens stay, the rest are forgotten): one [`Backend::copy_many`] for all layers.
    /// Keeping every token leaves the states as they are. Attention layers need nothing: the rejected
    /// positions are overwritten by the next pass.
    pub fn rollback(&mut self, backend: &B, keep: usize) -> Result<()> {
        let mut copies = Vec::new();
        for l in &mut self.layers {
            if let LayerCache::Recurrent(r) = l {
                let s = r.snapshots.as_mut().ok_or_else(|| {
                    ModelError::Invalid("rollback without state snapshots".into())
                })?;
                if keep == 0 || keep > s.filled {
                    return Err(ModelError::Invalid(format!(
                        "rollback to token {keep} of a {}-token snapshot pass",
                        s.filled
                    )));
                }
                let whole_pass = keep == s.filled;
                s.filled = 0;
                if whole_pass {
                    continue;
                }
                copies.push(state_copy(backend, &s.conv, keep - 1, &mut r.conv));
                copies.push(state_copy(backend, &s.ssm, keep - 1, &mut r.ssm));
            }
        }
        Ok(backend.copy_many(&mut copies)?)
    }

    /// A copy of every recurrent state (nothing for attention layers, whose entries stay in place).
    pub fn save_states(&self, backend: &B) -> Result<StateCopy<B>> {
        let mut states = Vec::new();
        for l in &self.layers {
            if let LayerCache::Recurrent(r) = l {
                let (c, m) = (backend.tensor_len(&r.conv), backend.tensor_len(&r.ssm));
                states.push((backend.tensor(c)?, backend.tensor(m)?));
            }
        }
        let mut copies = Vec::with_capacity(2 * states.len());
        let recurrent = self.layers.iter().filter_map(|l| match l {
            LayerCache::Recurrent(r) => Some(r),
            LayerCache::Attention(_) => None,
        });
        for (r, (conv, ssm)) in recurrent.zip(&mut states) {
            copies.push(state_copy(backend, &r.conv, 0, conv));
            copies.push(state_copy(backend, &r.ssm, 0, ssm));
        }
        backend.copy_many(&mut copies)?;
        Ok(StateCopy { states })
    }

    /// Puts the recurrent states of `copy` (made by [`Cache::save_states`] of this cache) back.
    pub fn restore_states(&mut self, backend: &B, copy: &StateCopy<B>) -> Result<()> {
        let mut it = copy.states.iter();
        let mut copies = Vec::with_capacity(2 * copy.states.len());
        for l in &mut self.layers {
            if let LayerCache::Recurrent(r) = l {
                let (conv, ssm) = it
                    .next()
                    .ok_or_else(|| ModelError::Invalid("state copy of another model".into()))?;
                copies.push(state_copy(backend, conv, 0, &mut r.conv));
                copies.push(state_copy(backend, ssm, 0, &mut r.ssm));
            }
        }
        Ok(backend.copy_many(&mut copies)?)
    }

    /// Bytes of one [`StateCopy`] of this cache.
    pub fn state_bytes(&self, backend: &B) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Recurrent(r) => 4 * r.len(backend),
                LayerCache::Attention(_) => 0,
            })
            .sum()
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
        return Err(wrong_cache());
    }
    Ok(())
}

/// A cache (or one of its layers) that does not have the shape of the model running on it.
/// Runs `f` on a model's reusable scratch buffers, first made anew when they hold fewer than `rows`
/// rows: sized to the next power of two (at most `max_rows`), so a prompt's chunks and the decode steps
/// after it reuse one set. `rows_of` reads a scratch's row count, `make` builds one of a given size.
pub(crate) fn with_scratch<S, T>(
    slot: &std::sync::Mutex<Option<S>>,
    rows: usize,
    max_rows: usize,
    rows_of: impl Fn(&S) -> usize,
    make: impl FnOnce(usize) -> Result<S>,
    f: impl FnOnce(&mut S) -> Result<T>,
) -> Result<T> {
    let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().is_none_or(|sc| rows_of(sc) < rows) {
        *guard = Some(make(rows.next_power_of_two().min(max_rows))?);
    }
    f(guard.as_mut().expect("scratch was just made"))
}

pub(crate) fn wrong_cache() -> ModelError {
    ModelError::Invalid("cache was made for another model".into())
}

/// What one forward pass should produce besides logits (speculative decoding needs these).
pub struct PassOptions<'a, B: Backend> {
    pub logits: Logits,
    pub readout: Readout,
    /// Receives the final-normed hidden state of every row (rows × n_embd): the MTP head's input.
    pub hidden: Option<&'a mut B::Tensor>,
    /// Keep the recurrent state after every token (see [`Cache::rollback`]); the cache must have room
    /// ([`Cache::enable_snapshots`]).
    pub snapshots: bool,
}

impl<B: Backend> PassOptions<'_, B> {
    /// A plain pass: the requested rows' logits read back whole, no hidden states, no snapshots.
    pub fn plain(logits: Logits) -> Self {
        PassOptions {
            logits,
            readout: Readout::Logits,
            hidden: None,
            snapshots: false,
        }
    }

    /// Refuses the extras (hidden states, snapshots) of an architecture without speculative decoding.
    pub(crate) fn check_plain(&self, arch: &str) -> Result<()> {
        if self.hidden.is_some() || self.snapshots {
            return Err(ModelError::Invalid(format!(
                "{arch} does not support speculative decoding"
            )));
        }
        Ok(())
    }
}

/// A multi-token-prediction head (Qwen3.5's MTP block) that drafts tokens from the main model's hidden
/// states. Its cache has one attention layer; entry p holds the pair (h_p, x_{p+1}).
pub trait DraftHead<B: Backend>: Send + Sync {
    fn new_draft_cache(&self, n_ctx: usize, kv_type: KvType) -> Result<Cache<B>>;
    /// Runs the head over `tokens.len()` rows: row r pairs hidden row r of `hidden` (the main model's
    /// final-normed hidden, or the head's own output when chaining) with `tokens[r]`, at cache entries
    /// `start..`. Returns the last row's draft token (drafting is greedy: its largest logit, picked
    /// where the logits are) and writes that row's final-normed output (the hidden for a chained next
    /// step) to `h_out`.
    fn draft_forward(
        &self,
        cache: &mut Cache<B>,
        hidden: &B::Tensor,
        tokens: &[u32],
        start: usize,
        h_out: &mut B::Tensor,
    ) -> Result<u32>;
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
    /// Largest number of tokens one `forward` call accepts (longer prompts are fed in chunks), and of
    /// rows one `forward_batch` call accepts.
    fn max_batch(&self) -> usize;
    /// One decode step of several sequences: row r feeds `rows[r].token` at position `rows[r].pos` of
    /// `rows[r].cache` and gets the logits of the next position (`n_vocab` values each). Architectures
    /// with a batched path run all rows through one pass, reading the weights once; this default runs
    /// them one by one. Either way the result equals each row run alone with [`Model::forward`].
    fn forward_batch(&self, rows: &mut [BatchRow<'_, B>]) -> Result<Vec<Vec<f32>>> {
        rows.iter_mut()
            .map(|r| self.forward(r.cache, &[r.token], r.pos, Logits::Last))
            .collect()
    }
    /// [`Model::forward`] with the extras of [`PassOptions`], read back as `opts.readout` asks;
    /// architectures without the extras accept only plain passes. This default reads whole rows back
    /// and picks on the host.
    fn forward_with(
        &self,
        cache: &mut Cache<B>,
        tokens: &[u32],
        start: usize,
        opts: PassOptions<'_, B>,
    ) -> Result<Output> {
        opts.check_plain(&self.info().arch)?;
        let logits = self.forward(cache, tokens, start, opts.logits)?;
        Ok(Output::from_logits(
            logits,
            self.info().n_vocab,
            opts.readout,
        ))
    }
    /// The model's MTP head, when the file has one.
    fn draft_head(&self) -> Option<&dyn DraftHead<B>> {
        None
    }
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

/// Slot `slot` of `src` (slots of `dst`'s length; a plain state is slot 0) into `dst`. The ranges are
/// checked by the backend.
fn state_copy<'a, B: Backend>(
    backend: &B,
    src: &'a B::Tensor,
    slot: usize,
    dst: &'a mut B::Tensor,
) -> TensorCopy<'a, B::Tensor> {
    let n = backend.tensor_len(dst);
    TensorCopy {
        src,
        src_off: slot * n,
        dst,
        dst_off: 0,
        n,
    }
}
