//! The engine: sequences with their caches, chunked prefill with prefix reuse (recurrent-state
//! checkpoints for hybrid models), the decode loop, and MTP speculative decoding.

mod batch;
pub mod checkpoints;
pub mod sampling;
pub mod speculative;

use crate::model::{Cache, Logits, Model, ModelError, Output, PassOptions, Readout, Result};
use checkpoints::{CheckpointPolicy, Checkpoints};
use kiln_kernels::backend::{Backend, KvType};
use sampling::Sampler;
use serde::Serialize;
use speculative::{DraftState, SpecStats};
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
    /// Recurrent-state checkpoints along past prompts (prefix reuse for hybrid models).
    pub checkpoints: Checkpoints<B>,
    /// The MTP head's cache and inputs, when this sequence decodes speculatively
    /// ([`Engine::enable_speculation`]).
    pub draft: Option<DraftState<B>>,
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
    /// Speculative decoding: acceptance, tokens per round, draft cost (absent when off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpecStats>,
}

pub(crate) fn per_second(n: usize, ms: f64) -> f64 {
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
            checkpoints: Checkpoints::new(CheckpointPolicy::default()),
            draft: None,
        })
    }

    /// Makes `seq` hold `tokens`, computing only what its cache does not already have, and returns the
    /// logits of the last token and how many tokens were reused. Attention caches keep the longest
    /// common prefix (entries past it are overwritten). A recurrent state exists only at the end of what
    /// it has seen: it is kept for an exact extension of the cached tokens, and otherwise the latest
    /// checkpoint at or below the common prefix is restored (or, without one, the sequence starts
    /// over). The last token is always recomputed, since its logits are needed.
    pub fn prefill(&self, seq: &mut Sequence<B>, tokens: &[u32]) -> Result<(Vec<f32>, usize)> {
        let (out, keep) = self.prefill_with(seq, tokens, Readout::Logits)?;
        Ok((out.into_logits()?, keep))
    }

    /// [`Engine::prefill`], the last token's logits read back as `readout` asks.
    pub fn prefill_with(
        &self,
        seq: &mut Sequence<B>,
        tokens: &[u32],
        readout: Readout,
    ) -> Result<(Output, usize)> {
        let keep = self.reuse_prefix(seq, tokens)?;
        let mut last = None;
        let mut done = keep;
        while done < tokens.len() {
            let rest = &tokens[done..];
            let (out, n) = self.prefill_chunk(seq, rest, self.model.max_batch(), readout)?;
            last = Some(out);
            done += n;
        }
        // reuse_prefix always leaves the last token to run.
        let out = last.ok_or_else(|| ModelError::Invalid("nothing to prefill".into()))?;
        Ok((out, keep))
    }

    /// The first half of [`Engine::prefill`], for callers that feed the prompt in steps (the server):
    /// checks `tokens`, keeps what `seq` can reuse of it (restoring a checkpoint if needed) and returns
    /// how many tokens that is; the caller then feeds `tokens[kept..]` with [`Engine::prefill_chunk`].
    pub fn reuse_prefix(&self, seq: &mut Sequence<B>, tokens: &[u32]) -> Result<usize> {
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
        let keep = if seq.cache.has_recurrent() && common < seq.tokens.len() {
            self.restore_checkpoint(seq, common)?
        } else {
            common
        };
        seq.tokens.truncate(keep);
        seq.checkpoints.truncate(keep);
        Ok(keep)
    }

    /// Runs the next part of a prompt: at most `max` tokens of `rest` (the prompt's tokens not yet in
    /// `seq`), cut at the next checkpoint position, saving the checkpoint when one falls due (the end
    /// of `rest` is the end of the prompt). Returns the last token's logits, read back as `readout`
    /// asks, and how many tokens were run.
    pub fn prefill_chunk(
        &self,
        seq: &mut Sequence<B>,
        rest: &[u32],
        max: usize,
        readout: Readout,
    ) -> Result<(Output, usize)> {
        let start = seq.tokens.len();
        let mut n = rest.len().min(max.clamp(1, self.model.max_batch()));
        let recurrent = seq.cache.has_recurrent();
        if recurrent {
            if let Some(due) = seq.checkpoints.next_due(start) {
                n = n.min(due - start);
            }
        }
        let logits = self.pass(seq, &rest[..n], Logits::Last, readout)?;
        let done = start + n;
        if recurrent && seq.checkpoints.due(done, n == rest.len()) {
            let dim = self.model.info().n_embd;
            let hidden = seq.draft.as_ref().map(|d| (d.pending_row(), dim));
            seq.checkpoints
                .save(&self.backend, &seq.cache, done, hidden)?;
        }
        Ok((logits, n))
    }

    /// Puts `seq`'s recurrent states back to the latest checkpoint at or below `limit` (or zero) and
    /// returns how many of its tokens stay valid.
    fn restore_checkpoint(&self, seq: &mut Sequence<B>, limit: usize) -> Result<usize> {
        let be = &*self.backend;
        let dim = self.model.info().n_embd;
        let restored = match &mut seq.draft {
            Some(d) => {
                let pos = seq.checkpoints.restore(
                    be,
                    &mut seq.cache,
                    limit.min(d.max_restart()),
                    Some((d.pending_row_mut(), dim)),
                )?;
                if let Some(pos) = pos {
                    d.restart_at(pos);
                }
                pos
            }
            None => seq.checkpoints.restore(be, &mut seq.cache, limit, None)?,
        };
        match restored {
            Some(pos) => Ok(pos),
            None => {
                seq.cache.reset(be)?;
                if let Some(d) = &mut seq.draft {
                    d.restart_at(0);
                }
                Ok(0)
            }
        }
    }

    /// One forward pass appending `chunk` to `seq`; with an MTP head, the head's cache mirrors it.
    fn pass(
        &self,
        seq: &mut Sequence<B>,
        chunk: &[u32],
        logits: Logits,
        readout: Readout,
    ) -> Result<Output> {
        let start = seq.tokens.len();
        let out = match (&mut seq.draft, self.model.draft_head()) {
            (Some(d), Some(head)) => {
                if !d.has_room(chunk.len()) {
                    // Pending rows left by a verify pass: pair them up now (chunk[0] follows them).
                    d.mirror(&*self.backend, head, &seq.tokens, Some(chunk[0]))?;
                }
                let opts = PassOptions {
                    logits,
                    readout,
                    hidden: Some(&mut d.hidden),
                    snapshots: false,
                };
                let out = self
                    .model
                    .forward_with(&mut seq.cache, chunk, start, opts)?;
                seq.tokens.extend_from_slice(chunk);
                d.push_hidden(&*self.backend, chunk.len())?;
                d.mirror(&*self.backend, head, &seq.tokens, None)?;
                return Ok(out);
            }
            _ => {
                let opts = PassOptions {
                    readout,
                    ..PassOptions::plain(logits)
                };
                self.model
                    .forward_with(&mut seq.cache, chunk, start, opts)?
            }
        };
        seq.tokens.extend_from_slice(chunk);
        Ok(out)
    }

    /// Empties `seq` (its recurrent states back to zero, checkpoints dropped) so it can hold a new
    /// sequence.
    pub fn reset(&self, seq: &mut Sequence<B>) -> Result<()> {
        seq.tokens.clear();
        seq.checkpoints.clear();
        if let Some(d) = &mut seq.draft {
            d.restart_at(0);
        }
        seq.cache.reset(&self.backend)
    }

    /// Appends one token and returns the logits for the next position.
    pub fn decode(&self, seq: &mut Sequence<B>, token: u32) -> Result<Vec<f32>> {
        self.decode_with(seq, token, Readout::Logits)?.into_logits()
    }

    /// [`Engine::decode`], the logits read back as `readout` asks.
    pub fn decode_with(
        &self,
        seq: &mut Sequence<B>,
        token: u32,
        readout: Readout,
    ) -> Result<Output> {
        self.pass(seq, &[token], Logits::Last, readout)
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
        if seq.draft.is_some() {
            return self.generate_speculative(seq, prompt, max_tokens, sampler, is_end, on_token);
        }
        let t0 = Instant::now();
        let (readout, n_vocab) = (sampler.readout(), self.model.info().n_vocab);
        let (mut logits, cached) = self.prefill_with(seq, prompt, readout)?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let computed = prompt.len() - cached;

        let mut out = Vec::new();
        let mut decode_ms = 0.0;
        let mut decoded = 0usize;
        let finish = loop {
            if out.len() >= max_tokens {
                break FinishReason::Length;
            }
            let row = logits.last_row(n_vocab)?;
            let token = sampler.sample_row(row, &seq.tokens);
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
            logits = self.decode_with(seq, token, readout)?;
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
            speculative: None,
        };
        Ok((out, stats))
    }
}
