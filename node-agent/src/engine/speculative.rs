//! MTP speculative decoding. The model's MTP head drafts up to `draft_max` tokens greedily, each step
//! feeding its own output hidden state to the next (chained); the main model then verifies the last
//! token plus the drafts in one forward pass and keeps the longest prefix its own sampler agrees with,
//! plus one token of its own. Rejected positions are undone without recomputing: attention entries are
//! simply overwritten later, and the recurrent (delta-rule and conv) states are copied back from the
//! per-token snapshots the verify pass kept.
//!
//! The head's own cache mirrors every main-model pass (the prompt too): entry p holds the pair
//! (h_p, x_{p+1}) of the main model's final-normed hidden state at p and the token after it. Entries made
//! from drafted hidden states are overwritten with the true ones once the main model has computed them.
//!
//! Greedy output is token-identical to plain decoding. With sampling, a draft d is accepted with
//! probability p(d) under the target distribution p, and otherwise a token is drawn from p with d
//! removed (renormalised) — the standard rule for a one-hot draft distribution, which keeps the output
//! distributed exactly as p.

use super::sampling::Sampler;
use super::{per_second, Engine, FinishReason, GenerationStats, Sequence};
use crate::model::{Cache, DraftHead, Logits, ModelError, PassOptions, Result};
use kiln_kernels::backend::{Backend, KvType};
use serde::Serialize;
use std::time::Instant;

/// Most tokens one round may draft.
pub const MAX_DRAFT: usize = 16;

/// The MTP head's cache and inputs for one sequence.
pub struct DraftState<B: Backend> {
    cache: Cache<B>,
    pub draft_max: usize,
    /// Entries `0..mirrored` of `cache` hold true (h_p, x_{p+1}) pairs.
    mirrored: usize,
    /// The main model's hidden rows of positions `mirrored..mirrored + n_pending` (the sequence's
    /// last `n_pending` tokens), waiting for the token after each.
    pending: B::Tensor,
    n_pending: usize,
    pending_rows: usize,
    /// The hidden rows of the main model's last pass.
    pub(crate) hidden: B::Tensor,
    /// The head's output hidden, two buffers for chained steps.
    chain: [B::Tensor; 2],
    dim: usize,
}

impl<B: Backend> DraftState<B> {
    fn new(
        backend: &B,
        head: &dyn DraftHead<B>,
        n_ctx: usize,
        kv: KvType,
        dim: usize,
        max_batch: usize,
        draft_max: usize,
    ) -> Result<Self> {
        let pending_rows = max_batch + 1;
        Ok(DraftState {
            cache: head.new_draft_cache(n_ctx, kv)?,
            draft_max,
            mirrored: 0,
            pending: backend.tensor(pending_rows * dim)?,
            n_pending: 0,
            pending_rows,
            hidden: backend.tensor(max_batch * dim)?,
            chain: [backend.tensor(dim)?, backend.tensor(dim)?],
            dim,
        })
    }

    /// The first pending hidden row (after a prefill pass: the hidden of the sequence's last token).
    pub(crate) fn pending_row(&self) -> &B::Tensor {
        &self.pending
    }

    pub(crate) fn pending_row_mut(&mut self) -> &mut B::Tensor {
        &mut self.pending
    }

    /// The longest prefix the sequence can be cut back to while keeping this cache: pos − 1 entries
    /// must be valid.
    pub(crate) fn max_restart(&self) -> usize {
        self.mirrored + 1
    }

    /// The sequence was cut back to `pos` (≤ [`Self::max_restart`]) tokens, with the hidden row of
    /// its last token already in `pending` when `pos > 0`.
    pub(crate) fn restart_at(&mut self, pos: usize) {
        self.mirrored = pos.saturating_sub(1).min(self.mirrored);
        self.n_pending = pos - self.mirrored;
    }

    /// Whether `rows` more hidden rows fit behind the pending ones.
    pub(crate) fn has_room(&self, rows: usize) -> bool {
        self.n_pending + rows <= self.pending_rows
    }

    /// Appends the first `rows` rows of `hidden` (the last main pass) to the pending rows.
    pub(crate) fn push_hidden(&mut self, backend: &B, rows: usize) -> Result<()> {
        if self.n_pending + rows > self.pending_rows {
            return Err(ModelError::Invalid(format!(
                "{} pending MTP rows exceed {}",
                self.n_pending + rows,
                self.pending_rows
            )));
        }
        let d = self.dim;
        backend.copy(
            &self.hidden,
            0,
            &mut self.pending,
            self.n_pending * d,
            rows * d,
        )?;
        self.n_pending += rows;
        Ok(())
    }

    /// Runs the head over the pending pairs whose next token is known: `tokens` is the whole sequence,
    /// and `next` the token after it when one has been sampled but not yet run. Without `next`, the last
    /// pending row stays pending. Returns the last pair's prediction (the head's greedy draft) and
    /// leaves its output hidden in `chain[0]`.
    pub(crate) fn mirror(
        &mut self,
        backend: &B,
        head: &dyn DraftHead<B>,
        tokens: &[u32],
        next: Option<u32>,
    ) -> Result<Option<u32>> {
        let n = match next {
            Some(_) => self.n_pending,
            None => self.n_pending.saturating_sub(1),
        };
        if n == 0 {
            return Ok(None);
        }
        let first = self.mirrored + 1;
        let mut pair_tokens: Vec<u32> = tokens[first.min(tokens.len())..].to_vec();
        pair_tokens.extend(next);
        pair_tokens.truncate(n);
        if pair_tokens.len() != n {
            return Err(ModelError::Invalid(
                "MTP pairs out of step with the sequence".into(),
            ));
        }
        let predicted = head.draft_forward(
            &mut self.cache,
            &self.pending,
            &pair_tokens,
            self.mirrored,
            &mut self.chain[0],
        )?;
        self.mirrored += n;
        self.n_pending -= n;
        if self.n_pending > 0 {
            // Move the rows left over to the front (through a scratch copy: src and dst may overlap).
            let d = self.dim;
            let mut rest = backend.tensor(self.n_pending * d)?;
            backend.copy(&self.pending, n * d, &mut rest, 0, self.n_pending * d)?;
            backend.copy(&rest, 0, &mut self.pending, 0, self.n_pending * d)?;
        }
        Ok(Some(predicted))
    }
}

/// What speculative decoding did during one generation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SpecStats {
    pub draft_max: usize,
    /// Verify passes.
    pub rounds: usize,
    pub drafted: usize,
    pub accepted: usize,
    /// accepted / drafted.
    pub acceptance_rate: f64,
    /// Tokens emitted per verify pass (accepted drafts + the target's own token).
    pub tokens_per_round: f64,
    /// Time in the MTP head (mirroring the verified tokens and drafting).
    pub draft_ms: f64,
    pub verify_ms: f64,
    /// draft_ms per drafted token.
    pub draft_ms_per_token: f64,
}

impl<B: Backend> Engine<B> {
    /// Turns on MTP speculative decoding for `seq` with up to `draft_max` drafts per round. The model
    /// needs an MTP head. A sequence that held tokens without its head's cache is emptied first.
    pub fn enable_speculation(&self, seq: &mut Sequence<B>, draft_max: usize) -> Result<()> {
        let head = self.model.draft_head().ok_or_else(|| {
            ModelError::Invalid(format!(
                "the {} model has no MTP head to draft with",
                self.model.info().arch
            ))
        })?;
        if draft_max == 0 || draft_max > MAX_DRAFT || draft_max + 1 > self.model.max_batch() {
            return Err(ModelError::Invalid(format!(
                "draft max {draft_max} is outside 1..={MAX_DRAFT}"
            )));
        }
        seq.cache.enable_snapshots(&self.backend, draft_max + 1)?;
        match &mut seq.draft {
            Some(d) => d.draft_max = draft_max,
            None => {
                self.reset(seq)?;
                seq.draft = Some(DraftState::new(
                    &*self.backend,
                    head,
                    seq.n_ctx(),
                    seq.cache.kv_type,
                    self.model.info().n_embd,
                    self.model.max_batch(),
                    draft_max,
                )?);
            }
        }
        Ok(())
    }

    /// Drafts up to `n` tokens to follow `next` (the latest token, not yet run): the head first runs
    /// the pending pairs ending with (h_last, next), then chains on its own output.
    pub fn draft(&self, seq: &mut Sequence<B>, next: u32, n: usize) -> Result<Vec<u32>> {
        let head = self
            .model
            .draft_head()
            .ok_or_else(|| ModelError::Invalid("the model has no MTP head".into()))?;
        let d = seq
            .draft
            .as_mut()
            .ok_or_else(|| ModelError::Invalid("speculation is not enabled".into()))?;
        let be = &*self.backend;
        let Some(mut tok) = d.mirror(be, head, &seq.tokens, Some(next))? else {
            return Ok(Vec::new());
        };
        let mut drafts = Vec::with_capacity(n);
        let (mut cur, mut entry) = (0, d.mirrored);
        for k in 0..n {
            drafts.push(tok);
            if k + 1 == n {
                break;
            }
            let [a, b] = &mut d.chain;
            let (src, dst) = if cur == 0 { (&*a, b) } else { (&*b, a) };
            tok = head.draft_forward(&mut d.cache, src, &[tok], entry, dst)?;
            cur ^= 1;
            entry += 1;
        }
        Ok(drafts)
    }

    /// Runs `next` and `drafts` through the main model in one pass and accepts drafts while the
    /// sampler agrees with them. Each emitted token goes to `emit`, which returns false to stop there.
    /// Returns the emitted tokens: the accepted drafts and then the target's own token (which, like any
    /// sampled token, is not run yet). The sequence ends up holding `next` and the accepted drafts
    /// before the last emitted token; rejected positions are rolled back from the state snapshots.
    pub fn verify(
        &self,
        seq: &mut Sequence<B>,
        next: u32,
        drafts: &[u32],
        sampler: &mut Sampler,
        emit: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let start = seq.tokens.len();
        let mut batch = Vec::with_capacity(drafts.len() + 1);
        batch.push(next);
        batch.extend_from_slice(drafts);
        let opts = PassOptions {
            logits: Logits::All,
            readout: sampler.readout(),
            hidden: seq.draft.as_mut().map(|d| &mut d.hidden),
            snapshots: true,
        };
        let mut out = self
            .model
            .forward_with(&mut seq.cache, &batch, start, opts)?;
        seq.tokens.extend_from_slice(&batch);
        let n_vocab = self.model.info().n_vocab;
        let mut emitted = Vec::with_capacity(batch.len());
        for (i, row) in out.rows(n_vocab).into_iter().enumerate() {
            let history = &seq.tokens[..start + 1 + i];
            let (tok, accepted) = match drafts.get(i) {
                Some(&d) => sampler.verify_draft_row(row, history, d),
                None => (sampler.sample_row(row, history), false),
            };
            emitted.push(tok);
            if !emit(tok) || !accepted {
                break;
            }
        }
        // Rows 0..keep stay: `next` and the accepted drafts, whose successors were emitted.
        let keep = emitted.len();
        seq.tokens.truncate(start + keep);
        if keep < batch.len() {
            seq.cache.rollback(&self.backend, keep)?;
        }
        if let Some(d) = &mut seq.draft {
            d.push_hidden(&*self.backend, keep)?;
        }
        Ok(emitted)
    }

    /// [`Engine::generate`] with MTP speculation (`seq` must have it enabled).
    pub(crate) fn generate_speculative(
        &self,
        seq: &mut Sequence<B>,
        prompt: &[u32],
        max_tokens: usize,
        sampler: &mut Sampler,
        is_end: &dyn Fn(u32) -> bool,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, GenerationStats)> {
        let draft_max = seq
            .draft
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("speculation is not enabled".into()))?
            .draft_max;
        let t0 = Instant::now();
        let (mut first, cached) = self.prefill_with(seq, prompt, sampler.readout())?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let mut spec = SpecStats {
            draft_max,
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut stop = None;
        // Every emitted token passes here; it records why generation stops, like the plain loop.
        let mut emit = |out: &mut Vec<u32>, stop: &mut Option<FinishReason>, t: u32| -> bool {
            out.push(t);
            let go_on = on_token(t);
            *stop = if is_end(t) {
                Some(FinishReason::Stop)
            } else if !go_on {
                Some(FinishReason::Cancelled)
            } else if out.len() >= max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            stop.is_none()
        };
        let (mut decode_ms, mut decoded) = (0.0, 0usize);
        let finish = if max_tokens == 0 {
            FinishReason::Length
        } else {
            let row = first.last_row(self.model.info().n_vocab)?;
            let mut next = sampler.sample_row(row, &seq.tokens);
            if emit(&mut out, &mut stop, next) {
                loop {
                    let room = seq.n_ctx() - seq.tokens.len();
                    if room == 0 {
                        break FinishReason::Context;
                    }
                    let n = draft_max.min(room - 1).min(max_tokens - out.len() - 1);
                    let t = Instant::now();
                    let drafts = self.draft(seq, next, n)?;
                    let t_verify = Instant::now();
                    spec.draft_ms += (t_verify - t).as_secs_f64() * 1000.0;
                    let emitted = self.verify(seq, next, &drafts, sampler, &mut |tok| {
                        emit(&mut out, &mut stop, tok)
                    })?;
                    spec.verify_ms += t_verify.elapsed().as_secs_f64() * 1000.0;
                    decode_ms += t.elapsed().as_secs_f64() * 1000.0;
                    spec.rounds += 1;
                    spec.drafted += drafts.len();
                    let accepted = drafts
                        .iter()
                        .zip(&emitted)
                        .take_while(|(d, e)| d == e)
                        .count();
                    spec.accepted += accepted;
                    decoded += emitted.len();
                    if let Some(f) = stop {
                        break f;
                    }
                    next = *emitted.last().expect("a verify pass emits a token");
                }
            } else {
                stop.unwrap_or(FinishReason::Length)
            }
        };
        if spec.drafted > 0 {
            spec.acceptance_rate = spec.accepted as f64 / spec.drafted as f64;
            spec.draft_ms_per_token = spec.draft_ms / spec.drafted as f64;
        }
        if spec.rounds > 0 {
            spec.tokens_per_round = decoded as f64 / spec.rounds as f64;
        }
        let stats = GenerationStats {
            prompt_tokens: prompt.len(),
            cached_tokens: cached,
            generated_tokens: out.len(),
            prefill_ms,
            decode_ms,
            prefill_tok_s: per_second(prompt.len() - cached, prefill_ms),
            decode_tok_s: per_second(decoded, decode_ms),
            finish_reason: finish,
            speculative: Some(spec),
        };
        Ok((out, stats))
    }
}
