//! Recurrent-state checkpoints for prefix reuse. A Gated DeltaNet state summarises every token seen and
//! cannot be cut back to a shorter prefix, so prefill keeps copies of the recurrent (and conv) states at
//! regular positions along the prompt and at its end. A later prompt that shares a prefix restores the
//! nearest checkpoint at or below the common prefix and prefills only the rest; attention KV entries up to
//! that position are still in place.

use crate::model::{Cache, Result, StateCopy};
use kiln_kernels::backend::Backend;

/// Where checkpoints are taken and how many are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// A checkpoint at every multiple of this many prompt tokens, plus one at the end of each prompt.
    /// 0 turns checkpoints off.
    pub spacing: usize,
    /// Most checkpoints kept per sequence.
    pub max_count: usize,
    /// Most bytes their copies may take per sequence.
    pub max_bytes: usize,
}

impl Default for CheckpointPolicy {
    /// Every 512 tokens, at most 8 (for Qwen3.6-27B one checkpoint is ~150 MiB), at most 2 GiB.
    fn default() -> Self {
        CheckpointPolicy {
            spacing: 512,
            max_count: 8,
            max_bytes: 2 << 30,
        }
    }
}

struct Checkpoint<B: Backend> {
    /// Tokens the state has seen.
    pos: usize,
    states: StateCopy<B>,
    /// The main model's final-normed hidden state at `pos − 1`, when the sequence drafts with an MTP
    /// head (the head pairs it with the token at `pos`).
    hidden: Option<B::Tensor>,
    bytes: usize,
}

/// One sequence's checkpoints, ordered by position.
pub struct Checkpoints<B: Backend> {
    pub policy: CheckpointPolicy,
    list: Vec<Checkpoint<B>>,
}

impl<B: Backend> Checkpoints<B> {
    pub fn new(policy: CheckpointPolicy) -> Self {
        Checkpoints {
            policy,
            list: Vec::new(),
        }
    }

    /// Positions of the checkpoints held.
    pub fn positions(&self) -> Vec<usize> {
        self.list.iter().map(|c| c.pos).collect()
    }

    pub fn bytes(&self) -> usize {
        self.list.iter().map(|c| c.bytes).sum()
    }

    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// The next position after `pos` where a checkpoint falls due (a multiple of the spacing).
    pub fn next_due(&self, pos: usize) -> Option<usize> {
        let s = self.policy.spacing;
        (s > 0).then(|| (pos / s + 1) * s)
    }

    /// Whether prefill should save a checkpoint at `pos` (`end`: the prompt ends there).
    pub fn due(&self, pos: usize, end: bool) -> bool {
        let s = self.policy.spacing;
        s > 0
            && pos > 0
            && (end || pos.is_multiple_of(s))
            && self.list.last().is_none_or(|c| c.pos < pos)
    }

    /// Copies `cache`'s recurrent states as the checkpoint at `pos` (with `hidden`'s first `dim` values,
    /// the MTP head's pending hidden row), then drops checkpoints until the limits hold.
    pub fn save(
        &mut self,
        backend: &B,
        cache: &Cache<B>,
        pos: usize,
        hidden: Option<(&B::Tensor, usize)>,
    ) -> Result<()> {
        let bytes = cache.state_bytes(backend) + hidden.map_or(0, |(_, d)| 4 * d);
        if bytes > self.policy.max_bytes || self.policy.max_count == 0 {
            return Ok(());
        }
        let hidden = match hidden {
            Some((h, d)) => {
                let mut t = backend.tensor(d)?;
                backend.copy(h, 0, &mut t, 0, d)?;
                Some(t)
            }
            None => None,
        };
        self.list.retain(|c| c.pos < pos);
        self.list.push(Checkpoint {
            pos,
            states: cache.save_states(backend)?,
            hidden,
            bytes,
        });
        self.evict();
        Ok(())
    }

    /// Over a limit, drops the checkpoint that leaves the smallest gap (never the newest), which thins
    /// them evenly along the prompt instead of losing its start or its end.
    fn evict(&mut self) {
        while self.list.len() > self.policy.max_count || self.bytes() > self.policy.max_bytes {
            if self.list.len() <= 1 {
                self.list.clear();
                return;
            }
            let last = self.list.len() - 1;
            let victim = (0..last)
                .min_by_key(|&i| {
                    let before = if i == 0 { 0 } else { self.list[i - 1].pos };
                    self.list[i + 1].pos - before
                })
                .unwrap_or(0);
            self.list.remove(victim);
        }
    }

    /// Forgets checkpoints past `pos` (the sequence was cut back to `pos` tokens).
    pub fn truncate(&mut self, pos: usize) {
        self.list.retain(|c| c.pos <= pos);
    }

    /// Restores the latest checkpoint at or below `limit` into `cache` (and its hidden row into
    /// `hidden`, which must then be given) and returns its position; `None` when there is none.
    pub fn restore(
        &self,
        backend: &B,
        cache: &mut Cache<B>,
        limit: usize,
        hidden: Option<(&mut B::Tensor, usize)>,
    ) -> Result<Option<usize>> {
        let Some(c) = self
            .list
            .iter()
            .rev()
            .find(|c| c.pos <= limit && (hidden.is_none() || c.hidden.is_some()))
        else {
            return Ok(None);
        };
        cache.restore_states(backend, &c.states)?;
        if let (Some((dst, d)), Some(src)) = (hidden, &c.hidden) {
            backend.copy(src, 0, dst, 0, d)?;
        }
        Ok(Some(c.pos))
    }
}
