//! The engine: sequences with their caches, chunked prefill with prefix reuse, and the decode loop.

pub mod sampling;

use crate::model::{Cache, Logits, Model, Result};
use kiln_kernels::backend::{Backend, KvType};
use sampling::Sampler;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

pub struct Engine<B: Backend> {
    pub backend: Arc<B>,
    pub model: Box<dyn Model<B>>,
}

/// One sequence: its cache and the tokens the cache holds.
pub struct Sequence<B: Backend> {
    pub cache: Cache<B>,
    pub tokens: Vec<u32>,
}

impl<B: Backend> Sequence<B> {
    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    Context,
    /// The caller asked to stop (a stop string, a closed connection).
    Cancelled,
}

#[derive(Clone, Debug, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose cache entries were reused instead of recomputed.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub finish_reason: FinishReason,
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

impl<B: Backend> Engine<B> {
    pub fn new(backend: Arc<B>, model: Box<dyn Model<B>>) -> Self {
        Engine { backend, model }
    }

    pub fn new_sequence(&self, n_ctx: usize, kv_type: KvType) -> Result<Sequence<B>> {
        Ok(Sequence {
            cache: self.model.new_cache(n_ctx, kv_type)?,
            tokens: Vec::new(),
        })
    }

    /// Makes `seq` hold `tokens`, computing only what its cache does not already have: the longest
    /// common prefix is kept (attention caches are simply overwritten past it). A model with recurrent
    /// layers keeps its cache only when `tokens` strictly extends the cached tokens, and otherwise
    /// starts over (recurrent-state checkpoints will lift this). Returns the logits of
    /// the last token and how many tokens were reused. At least the last token is always recomputed,
    /// since its logits are needed.
    pub fn prefill(&self, seq: &mut Sequence<B>, tokens: &[u32]) -> Result<(Vec<f32>, usize)> {
        if tokens.is_empty() {
            return Err(crate::model::ModelError::Invalid("empty prompt".into()));
        }
        if tokens.len() > seq.n_ctx() {
            return Err(crate::model::ModelError::Invalid(format!(
                "the prompt has {} tokens but the context holds {}",
                tokens.len(),
                seq.n_ctx()
            )));
        }
        let common = seq
            .tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len() - 1);
        // A recurrent state exists only at the end of what it has seen: it can be kept for an exact
        // extension of the cached tokens, never cut back to a shorter prefix.
        let common = if seq.cache.has_recurrent() && common < seq.tokens.len() {
            seq.cache.reset(&self.backend)?;
            0
        } else {
            common
        };
        seq.tokens.truncate(common);
        let mut logits = Vec::new();
        for chunk in tokens[common..].chunks(self.model.max_batch()) {
            let start = seq.tokens.len();
            logits = self
                .model
                .forward(&mut seq.cache, chunk, start, Logits::Last)?;
            seq.tokens.extend_from_slice(chunk);
        }
        Ok((logits, common))
    }

    /// Empties `seq` (its recurrent states back to zero) so it can hold a new sequence.
    pub fn reset(&self, seq: &mut Sequence<B>) -> Result<()> {
        seq.tokens.clear();
        seq.cache.reset(&self.backend)
    }

    /// Appends one token and returns the logits for the next position.
    pub fn decode(&self, seq: &mut Sequence<B>, token: u32) -> Result<Vec<f32>> {
        let start = seq.tokens.len();
        let logits = self
            .model
            .forward(&mut seq.cache, &[token], start, Logits::Last)?;
        seq.tokens.push(token);
        Ok(logits)
    }

    /// Prefills `prompt`, then samples up to `max_tokens` tokens. `on_token` sees each new token and
    /// returns false to stop; `is_end` says which tokens end generation (they are reported to
    /// `on_token` but not fed back).
    pub fn generate(
        &self,
        seq: &mut Sequence<B>,
        prompt: &[u32],
        max_tokens: usize,
        sampler: &mut Sampler,
        is_end: &dyn Fn(u32) -> bool,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, GenerationStats)> {
        let t0 = Instant::now();
        let (mut logits, cached) = self.prefill(seq, prompt)?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let computed = prompt.len() - cached;

        let mut out = Vec::new();
        let mut decode_ms = 0.0;
        let mut decoded = 0usize;
        let finish = loop {
            if out.len() >= max_tokens {
                break FinishReason::Length;
            }
            let token = sampler.sample(&mut logits, &seq.tokens);
            out.push(token);
            let go_on = on_token(token);
            if is_end(token) {
                break FinishReason::Stop;
            }
            if !go_on {
                break FinishReason::Cancelled;
            }
            if out.len() >= max_tokens {
                break FinishReason::Length;
            }
            if seq.tokens.len() >= seq.n_ctx() {
                break FinishReason::Context;
            }
            let t = Instant::now();
            logits = self.decode(seq, token)?;
            decode_ms += t.elapsed().as_secs_f64() * 1000.0;
            decoded += 1;
        };
        let stats = GenerationStats {
            prompt_tokens: prompt.len(),
            cached_tokens: cached,
            generated_tokens: out.len(),
            prefill_ms,
            decode_ms,
            prefill_tok_s: per_second(computed, prefill_ms),
            decode_tok_s: per_second(decoded, decode_ms),
            finish_reason: finish,
        };
        Ok((out, stats))
    }
}
