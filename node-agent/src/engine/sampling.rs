//! Token sampling: repetition penalty, then top-k, top-p and min-p on the temperature-1 distribution,
//! then temperature — llama.cpp's default chain — or plain argmax when the temperature is 0.
//!
//! The sampler says what it needs of a row ([`Sampler::readout`]): at temperature 0 only the argmax, with
//! top-k on only the top k candidates, so the backend picks them where the logits are. Either way the
//! candidates are chosen in one order ([`kiln_kernels::backend::top_k`]: larger first, the lower id on
//! ties), so a row read back whole and a row's candidates picked on the device sample the same token.

use crate::model::{OutputRow, Readout};
pub use kiln_kernels::backend::argmax;
use kiln_kernels::backend::top_k;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off. Divides positive logits (multiplies negative ones) of recently seen tokens.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Rejects values that have no meaning, with a message naming the parameter.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.temperature;
        if !t.is_finite() || !(0.0..=100.0).contains(&t) {
            return Err(format!("temperature {t} must be between 0 and 100"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!(
                "repeat_penalty {} must be a positive number",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// What this sampler needs of a row of logits: the argmax at temperature 0, the top k with top-k
    /// on, else (or when a repetition penalty must first change the logits of past tokens) all of it.
    pub fn readout(&self) -> Readout {
        let p = &self.params;
        if penalty_on(p) {
            Readout::Logits
        } else if p.temperature <= 0.0 {
            Readout::Argmax
        } else if p.top_k > 0 {
            Readout::TopK(p.top_k)
        } else {
            Readout::Logits
        }
    }

    /// Picks the next token. `history` is every token so far (prompt included), for the penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.sample_row(OutputRow::Logits(logits), history)
    }

    /// [`Sampler::sample`] from a row read back as [`Sampler::readout`] asked.
    pub fn sample_row(&mut self, row: OutputRow<'_>, history: &[u32]) -> u32 {
        match self.distribution(row, history) {
            Distribution::Greedy(t) => t,
            Distribution::Weighted(cand) => {
                let r: f32 = self.rng.random();
                draw(&cand, r)
            }
        }
    }

    /// Speculative verification of a greedy `draft` (a one-hot draft distribution) at a position with
    /// these target logits: accepts it with probability p(draft), and otherwise draws from p without the
    /// draft, renormalised, so the token returned is distributed exactly as p. Returns the token and
    /// whether it is the accepted draft. At temperature 0 this is argmax == draft.
    pub fn verify_draft(&mut self, logits: &mut [f32], history: &[u32], draft: u32) -> (u32, bool) {
        self.verify_draft_row(OutputRow::Logits(logits), history, draft)
    }

    /// [`Sampler::verify_draft`] from a row read back as [`Sampler::readout`] asked.
    pub fn verify_draft_row(
        &mut self,
        row: OutputRow<'_>,
        history: &[u32],
        draft: u32,
    ) -> (u32, bool) {
        match self.distribution(row, history) {
            Distribution::Greedy(t) => (t, t == draft),
            Distribution::Weighted(cand) => {
                let (accept, resample): (f32, f32) = (self.rng.random(), self.rng.random());
                accept_or_resample(&cand, draft, accept, resample)
            }
        }
    }

    /// The target distribution after the penalty, top-k, top-p, min-p and temperature. An argmax row
    /// is taken as the greedy pick it is; a candidates row must hold (at least) the top k.
    fn distribution(&self, row: OutputRow<'_>, history: &[u32]) -> Distribution {
        let p = &self.params;
        let greedy = p.temperature <= 0.0;
        let limit = if p.top_k == 0 { usize::MAX } else { p.top_k };
        let mut cand: Vec<(u32, f32)> = match row {
            OutputRow::Argmax(t) => return Distribution::Greedy(t),
            OutputRow::TopK(c) if greedy => {
                return Distribution::Greedy(c.first().map_or(0, |c| c.0))
            }
            OutputRow::TopK(c) => c.iter().take(limit).copied().collect(),
            OutputRow::Logits(logits) => {
                if penalty_on(p) {
                    penalize(logits, history, p);
                }
                if greedy {
                    return Distribution::Greedy(argmax(logits));
                }
                top_k(logits, limit)
            }
        };
        // Candidates, largest first; what cannot be a probability is dropped. With no finite logit
        // left, the pick is argmax's (the first candidate).
        let first = cand.first().map_or(0, |c| c.0);
        cand.retain(|c| c.1.is_finite());
        if cand.is_empty() {
            return Distribution::Greedy(first);
        }
        let probs = softmax(cand.iter().map(|c| c.1));
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, &pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            let threshold = cand[0].1 + p.min_p.ln();
            cand.retain(|c| c.1 >= threshold);
        }
        let probs = softmax(cand.iter().map(|c| c.1 / p.temperature));
        Distribution::Weighted(cand.iter().map(|c| c.0).zip(probs).collect())
    }
}

fn penalty_on(p: &SamplingParams) -> bool {
    p.repeat_penalty != 1.0 && p.repeat_last_n > 0
}

/// Divides positive logits (multiplies negative ones) of the distinct tokens among the last
/// `repeat_last_n` of `history`.
fn penalize(logits: &mut [f32], history: &[u32], p: &SamplingParams) {
    let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
    let mut seen = std::collections::HashSet::new();
    for &t in recent {
        if let Some(l) = logits.get_mut(t as usize) {
            if seen.insert(t) {
                *l = if *l > 0.0 {
                    *l / p.repeat_penalty
                } else {
                    *l * p.repeat_penalty
                };
            }
        }
    }
}

/// What the sampler draws from.
enum Distribution {
    /// Temperature 0: this token.
    Greedy(u32),
    /// Candidates and their probabilities (summing to 1), most likely first.
    Weighted(Vec<(u32, f32)>),
}

/// The token at cumulative probability `r` ∈ [0, 1).
fn draw(cand: &[(u32, f32)], r: f32) -> u32 {
    let mut cum = 0.0;
    for &(t, pr) in cand {
        cum += pr;
        if r < cum {
            return t;
        }
    }
    cand.last().map_or(0, |c| c.0)
}

/// The accept/reject rule for a one-hot draft: accept `draft` when `accept` < p(draft); otherwise draw
/// with `resample` from p restricted to the other candidates (renormalised). `accept` and `resample`
/// are independent uniform numbers in [0, 1).
pub fn accept_or_resample(
    cand: &[(u32, f32)],
    draft: u32,
    accept: f32,
    resample: f32,
) -> (u32, bool) {
    let p_draft = cand.iter().find(|c| c.0 == draft).map_or(0.0, |c| c.1);
    if accept < p_draft {
        return (draft, true);
    }
    let rest: Vec<(u32, f32)> = cand.iter().filter(|c| c.0 != draft).copied().collect();
    let total: f32 = rest.iter().map(|c| c.1).sum();
    if rest.is_empty() || total <= 0.0 {
        // p is (numerically) all on the draft.
        return (draft, true);
    }
    (draw(&rest, resample * total), false)
}

fn softmax(logits: impl Iterator<Item = f32> + Clone) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
        }
    }

    #[test]
    fn seed_repeats_and_distribution_follows_probabilities() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..Default::default()
        };
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let draw = |params: SamplingParams| {
            let mut s = Sampler::new(params);
            (0..4000)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(params.clone());
        assert_eq!(a, draw(params));
        let ones = a.iter().filter(|&&t| t == 1).count() as f32 / a.len() as f32;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: 1,
            ..Default::default()
        });
        // Token 2 has p/p_max = e^-3 < 0.5: never drawn.
        for _ in 0..500 {
            assert_ne!(s.sample(&mut [2.0, 1.9, -1.0], &[]), 2);
        }
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            seed: 1,
            ..Default::default()
        });
        for _ in 0..500 {
            assert_eq!(s.sample(&mut [3.0, 1.0, 0.5], &[]), 0);
        }
    }

    #[test]
    fn repetition_penalty_changes_the_argmax() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [2.0, 1.5], &[0]), 1);
    }

    /// The accept/reject rule keeps the target distribution: over many trials with a fixed seed the
    /// emitted token follows p whichever token was drafted, and the draft is accepted with p(draft).
    #[test]
    fn speculative_rule_keeps_the_target_distribution() {
        let p = [0.1f32, 0.2, 0.3, 0.4];
        let logits: Vec<f32> = p.iter().map(|x| x.ln()).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 11,
            ..Default::default()
        };
        let trials = 40_000;
        for draft in [0u32, 3, 7] {
            let mut s = Sampler::new(params.clone());
            let mut counts = [0usize; 4];
            let mut accepted = 0;
            for _ in 0..trials {
                let (t, ok) = s.verify_draft(&mut logits.clone(), &[], draft);
                counts[t as usize] += 1;
                accepted += ok as usize;
                assert_eq!(ok, t == draft);
            }
            for (i, &c) in counts.iter().enumerate() {
                let f = c as f32 / trials as f32;
                assert!(
                    (f - p[i]).abs() < 0.01,
                    "draft {draft}: p[{i}] {f} vs {}",
                    p[i]
                );
            }
            let want = p.get(draft as usize).copied().unwrap_or(0.0);
            let rate = accepted as f32 / trials as f32;
            assert!((rate - want).abs() < 0.01, "draft {draft}: accepted {rate}");
        }
        // Greedy: accepted exactly when the draft is the argmax.
        let mut g = Sampler::new(SamplingParams::greedy());
        assert_eq!(g.verify_draft(&mut logits.clone(), &[], 3), (3, true));
        assert_eq!(g.verify_draft(&mut logits.clone(), &[], 1), (3, false));
    }

    /// A row read back as the sampler asks (on a GPU: picked on the device) samples exactly the token
    /// the whole row does, for every kind of readout, with ties, infinities and NaNs in the row.
    #[test]
    fn readout_rows_sample_as_whole_rows() {
        use crate::model::Output;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = SamplingParams {
            seed: 9,
            ..Default::default()
        };
        let cases = [
            (SamplingParams::greedy(), Readout::Argmax),
            (base.clone(), Readout::TopK(40)),
            (
                SamplingParams {
                    top_k: 3,
                    temperature: 1.5,
                    min_p: 0.0,
                    top_p: 1.0,
                    ..base.clone()
                },
                Readout::TopK(3),
            ),
            (
                SamplingParams {
                    top_k: 0,
                    ..base.clone()
                },
                Readout::Logits,
            ),
            (
                SamplingParams {
                    repeat_penalty: 1.3,
                    ..base.clone()
                },
                Readout::Logits,
            ),
        ];
        let n = 500;
        for (params, want) in cases {
            let mut whole = Sampler::new(params.clone());
            let mut picked = Sampler::new(params.clone());
            assert_eq!(picked.readout(), want, "{params:?}");
            for trial in 0..300 {
                // Coarse values make ties; a few rows carry -inf, +inf and NaN.
                let mut row: Vec<f32> = (0..n).map(|_| (next() % 64) as f32 / 8.0).collect();
                if trial % 7 == 0 {
                    for _ in 0..20 {
                        let i = next() as usize % n;
                        row[i] = [f32::NEG_INFINITY, f32::NAN, f32::INFINITY][i % 3];
                    }
                }
                let history: Vec<u32> = (0..8).map(|_| (next() % n as u64) as u32).collect();
                let draft = (next() % n as u64) as u32;
                let mut out = Output::from_logits(row.clone(), n, picked.readout());
                let got = picked.sample_row(out.last_row(n).unwrap(), &history);
                assert_eq!(got, whole.sample(&mut row.clone(), &history), "{params:?}");
                let mut out = Output::from_logits(row.clone(), n, picked.readout());
                let got = picked.verify_draft_row(out.last_row(n).unwrap(), &history, draft);
                assert_eq!(
                    got,
                    whole.verify_draft(&mut row, &history, draft),
                    "{params:?}"
                );
            }
        }
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
        let bad = SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("temperature"));
        assert!(SamplingParams::default().validate().is_ok());
    }
}
