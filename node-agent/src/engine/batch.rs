//! Batched decoding: one decode step of several sequences through one forward pass
//! ([`Model::forward_batch`](crate::model::Model::forward_batch)), so the weights are read once per
//! step instead of once per sequence.

use super::{Engine, Sequence};
use crate::model::{BatchRow, ModelError, Output, Readout, Result};
use kiln_kernels::backend::Backend;

impl<B: Backend> Engine<B> {
    /// Appends `token` to each `(sequence, token)` row and returns, per row in order, the logits for
    /// its next position (what [`Engine::decode`] returns for that row alone) or why that row failed.
    ///
    /// Speculative sequences (their MTP head mirrors every main-model pass) are decoded alone. A row
    /// whose context is full fails before the pass, alone. Should the batched pass itself fail, rows
    /// without recurrent state are retried one by one (their KV entries at the new position are simply
    /// overwritten), so only a row that fails again loses its request; with recurrent layers the
    /// states of every row may be half-advanced, so every row of that pass fails.
    pub fn decode_batch(&self, rows: &mut [(&mut Sequence<B>, u32)]) -> Vec<Result<Vec<f32>>> {
        let readouts = vec![Readout::Logits; rows.len()];
        self.decode_batch_with(rows, &readouts)
            .into_iter()
            .map(|r| r.and_then(Output::into_logits))
            .collect()
    }

    /// [`Engine::decode_batch`], each row decoded alone read back as its `readouts` entry asks (rows
    /// of a batched pass come back as whole logits: with the weights read once for several rows, the
    /// read-back is not what costs).
    pub fn decode_batch_with(
        &self,
        rows: &mut [(&mut Sequence<B>, u32)],
        readouts: &[Readout],
    ) -> Vec<Result<Output>> {
        let mut out: Vec<Option<Result<Output>>> = (0..rows.len()).map(|_| None).collect();
        let readout = |i: usize| readouts.get(i).copied().unwrap_or_default();
        let mut batched = Vec::new();
        for (i, (seq, token)) in rows.iter_mut().enumerate() {
            if seq.draft.is_some() {
                out[i] = Some(self.decode_with(seq, *token, readout(i)));
            } else if seq.tokens.len() >= seq.n_ctx() {
                out[i] = Some(Err(ModelError::Invalid(format!(
                    "the context of {} tokens is full",
                    seq.n_ctx()
                ))));
            } else {
                batched.push(i);
            }
        }
        if let [i] = batched[..] {
            // One row: the plain single-sequence pass (no per-row copies).
            let (seq, token) = &mut rows[i];
            out[i] = Some(self.decode_with(seq, *token, readout(i)));
            batched.clear();
        }
        for group in batched.chunks(self.model.max_batch().max(1)) {
            let result = {
                let mut batch: Vec<BatchRow<'_, B>> = rows
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| group.contains(i))
                    .map(|(_, (seq, token))| BatchRow {
                        pos: seq.tokens.len(),
                        cache: &mut seq.cache,
                        token: *token,
                    })
                    .collect();
                self.model.forward_batch(&mut batch)
            };
            match result {
                Ok(logits) if logits.len() == group.len() => {
                    for (&i, l) in group.iter().zip(logits) {
                        let (seq, token) = &mut rows[i];
                        seq.tokens.push(*token);
                        out[i] = Some(Ok(Output::Logits(l)));
                    }
                }
                Ok(logits) => {
                    let e = format!("a {}-row pass returned {} rows", group.len(), logits.len());
                    self.fail_group(rows, group, &e, &mut out);
                }
                Err(e) => self.fail_group(rows, group, &e.to_string(), &mut out),
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ModelError::Invalid("row was not decoded".into()))))
            .collect()
    }

    /// After a failed batched pass: retries the rows alone when no cache holds recurrent state,
    /// otherwise fails them all (see [`Engine::decode_batch`]).
    fn fail_group(
        &self,
        rows: &mut [(&mut Sequence<B>, u32)],
        group: &[usize],
        error: &str,
        out: &mut [Option<Result<Output>>],
    ) {
        tracing::warn!(
            "a batched decode pass of {} rows failed: {error}",
            group.len()
        );
        let recurrent = group.iter().any(|&i| rows[i].0.cache.has_recurrent());
        for &i in group {
            let (seq, token) = &mut rows[i];
            out[i] = Some(if recurrent {
                Err(ModelError::Invalid(format!(
                    "batched decode failed: {error}"
                )))
            } else {
                self.decode_with(seq, *token, Readout::Logits)
            });
        }
    }
}
