//! MTP speculative decoding on the tiny synthetic qwen35 model (tests/models/, which carries an MTP
//! block): greedy output token-identical to plain decoding for draft max 1..4 on a short and a long
//! prompt; partial acceptance and rollback driven through every accept length; the MTP head's cache
//! mirroring the main model the same way whatever the prefill chunking or prefix reuse; sampled
//! speculation running with its stats. (The accept/reject rule's distribution is tested in
//! `engine::sampling`.)

mod common;

use common::{long_prompt, qwen35_engine};
use kiln_agent::engine::checkpoints::CheckpointPolicy;
use kiln_agent::engine::sampling::{Sampler, SamplingParams};
use kiln_agent::engine::{Engine, FinishReason, GenerationStats};
use kiln_agent::model::Readout;
use kiln_kernels::backend::KvType;
use kiln_kernels::cpu::CpuBackend;

const N_CTX: usize = 320;

fn run(
    engine: &Engine<CpuBackend>,
    prompt: &[u32],
    n: usize,
    draft_max: Option<usize>,
    params: SamplingParams,
) -> (Vec<u32>, GenerationStats) {
    let mut seq = engine.new_sequence(N_CTX, KvType::F16).unwrap();
    if let Some(k) = draft_max {
        engine.enable_speculation(&mut seq, k).unwrap();
    }
    let mut sampler = Sampler::new(params);
    engine
        .generate(&mut seq, prompt, n, &mut sampler, &|_| false, &mut |_| true)
        .unwrap()
}

#[test]
fn greedy_speculation_is_token_identical() {
    let engine = qwen35_engine("qwen35-tiny-f16.gguf");
    let long = long_prompt();
    for (name, prompt, n) in [("short", &long[..6], 64), ("long", &long[..], 48)] {
        let (plain, _) = run(&engine, prompt, n, None, SamplingParams::greedy());
        for k in 1..=4 {
            let (spec, stats) = run(&engine, prompt, n, Some(k), SamplingParams::greedy());
            let s = stats.speculative.as_ref().unwrap();
            eprintln!(
                "{name} prompt, draft max {k}: {} rounds, acceptance {:.2}, {:.2} tokens/round, draft {:.2} ms/token",
                s.rounds, s.acceptance_rate, s.tokens_per_round, s.draft_ms_per_token
            );
            assert_eq!(spec, plain, "{name} prompt, draft max {k}");
            assert_eq!(stats.finish_reason, FinishReason::Length);
            assert!(s.accepted <= s.drafted && s.drafted <= s.rounds * k);
            // Every token after the prefill's first comes out of a verify round.
            let per_round = s.tokens_per_round * s.rounds as f64;
            assert_eq!(per_round.round() as usize, n - 1);
            assert_eq!(s.rounds + s.accepted, n - 1);
        }
    }
}

/// The verify pass with drafts taken from the plain greedy continuation, corrupted at chosen offsets,
/// so every accept length 0..=k and every rollback slot is exercised (random MTP weights rarely agree
/// with the main model on their own). The emitted tokens must be the plain continuation.
#[test]
fn rollback_at_every_accept_length() {
    let engine = qwen35_engine("qwen35-tiny-f16.gguf");
    let prompt = &long_prompt()[..40];
    let (want, _) = run(&engine, prompt, 90, None, SamplingParams::greedy());
    for k in [2usize, 4] {
        let mut seq = engine.new_sequence(N_CTX, KvType::F16).unwrap();
        engine.enable_speculation(&mut seq, k).unwrap();
        let (mut logits, _) = engine.prefill(&mut seq, prompt).unwrap();
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let mut got = vec![sampler.sample(&mut logits, &seq.tokens)];
        let mut accept_lengths = vec![0usize; k + 1];
        let mut round = 0;
        while got.len() + k < want.len() {
            let next = *got.last().unwrap();
            // Keep the MTP mirror in step (its drafts are replaced below).
            let _ = engine.draft(&mut seq, next, k).unwrap();
            let good = round % (k + 1); // drafts 0..good are right, the one at `good` is wrong
            let drafts: Vec<u32> = (0..k)
                .map(|i| {
                    let t = want[got.len() + i];
                    if i == good {
                        (t + 1) % 300
                    } else {
                        t
                    }
                })
                .collect();
            let emitted = engine
                .verify(&mut seq, next, &drafts, &mut sampler, &mut |_| true)
                .unwrap();
            let accepted = emitted.len() - 1;
            assert_eq!(accepted, good.min(k), "round {round}");
            accept_lengths[accepted] += 1;
            got.extend(emitted);
            assert_eq!(seq.tokens.len(), prompt.len() + got.len() - 1);
            round += 1;
        }
        assert_eq!(got, want[..got.len()], "draft max {k}");
        assert!(accept_lengths.iter().all(|&c| c > 0), "{accept_lengths:?}");
        // The state after all those rollbacks is the plain one: the next logits agree.
        let next = *got.last().unwrap();
        let l_spec = engine.decode(&mut seq, next).unwrap();
        let mut plain = engine.new_sequence(N_CTX, KvType::F16).unwrap();
        let mut toks = prompt.to_vec();
        toks.extend_from_slice(&got);
        let (l_plain, _) = engine.prefill(&mut plain, &toks).unwrap();
        let d = common::max_abs(&l_spec, &l_plain);
        eprintln!("draft max {k}: {round} rounds, accept lengths {accept_lengths:?}, final |Δlogit| {d:.2e}");
        assert!(d < 1e-3, "{d}");
    }
}

/// The MTP cache mirrors every main-model pass, so its drafts do not depend on how the prompt was
/// split into passes, nor on whether a prefix came from a checkpoint.
#[test]
fn mtp_mirror_is_independent_of_chunking_and_reuse() {
    let engine = qwen35_engine("qwen35-tiny-f16.gguf");
    let p = long_prompt();
    let drafts = |spacing: usize, warm: Option<&[u32]>| {
        let mut seq = engine.new_sequence(N_CTX, KvType::F16).unwrap();
        seq.checkpoints.policy = CheckpointPolicy {
            spacing,
            ..Default::default()
        };
        engine.enable_speculation(&mut seq, 4).unwrap();
        if let Some(w) = warm {
            engine.prefill(&mut seq, w).unwrap();
        }
        let (mut logits, cached) = engine.prefill(&mut seq, &p).unwrap();
        let next = Sampler::new(SamplingParams::greedy()).sample(&mut logits, &seq.tokens);
        (engine.draft(&mut seq, next, 4).unwrap(), cached)
    };
    let (one_pass, _) = drafts(0, None);
    let (chunked, _) = drafts(16, None);
    assert_eq!(chunked, one_pass);
    // A different prompt sharing the first 100 tokens ran first: restored from the checkpoint at 96.
    let mut warm = p[..100].to_vec();
    warm.extend_from_slice(&[1, 2, 3]);
    let (reused, cached) = drafts(16, Some(&warm));
    assert_eq!(cached, 96);
    assert_eq!(reused, one_pass);
    eprintln!("MTP drafts after the long prompt: {one_pass:?}");
}

/// Sampled speculation runs, reports its stats, and repeats with the same seed.
#[test]
fn sampled_speculation_runs_and_repeats() {
    let engine = qwen35_engine("qwen35-tiny-f16.gguf");
    let params = SamplingParams {
        temperature: 0.7,
        seed: 5,
        ..Default::default()
    };
    let prompt = &long_prompt()[..20];
    let (a, stats) = run(&engine, prompt, 40, Some(3), params.clone());
    let (b, _) = run(&engine, prompt, 40, Some(3), params);
    assert_eq!(a, b);
    assert_eq!(a.len(), 40);
    let s = stats.speculative.unwrap();
    assert!(s.rounds > 0 && s.rounds <= 39 && s.tokens_per_round >= 1.0);
    assert!(a
        .iter()
        .all(|&t| (t as usize) < engine.model.info().n_vocab));
}

/// The engine samples from what it asks the backend to read back (the argmax, the top k); the tokens
/// must be those of sampling whole logit rows, plainly and speculatively.
#[test]
fn sampling_from_readouts_matches_whole_rows() {
    let engine = qwen35_engine("qwen35-tiny-f16.gguf");
    let prompt = &long_prompt()[..12];
    let n = 24;
    for params in common::readout_samplers() {
        let readout = Sampler::new(params.clone()).readout();
        assert_ne!(readout, Readout::Logits, "{params:?}");
        let whole = common::sample_whole_rows(&engine, prompt, n, N_CTX, params.clone());
        let (plain, _) = run(&engine, prompt, n, None, params.clone());
        assert_eq!(plain, whole, "{params:?}");
        if params.temperature == 0.0 {
            let (spec, _) = run(&engine, prompt, n, Some(3), params.clone());
            assert_eq!(spec, whole, "{params:?}");
        }
    }
}

#[test]
fn speculation_needs_an_mtp_head() {
    let engine = qwen35_engine("qwen35-tiny-f16.gguf");
    let mut seq = engine.new_sequence(N_CTX, KvType::F16).unwrap();
    assert!(engine.enable_speculation(&mut seq, 0).is_err());
    assert!(engine.enable_speculation(&mut seq, 17).is_err());
    let synthetic = common::repo().join("tests/golden/synthetic/qwen3-f16.gguf");
    let (engine, _) = common::load_engine(&synthetic);
    let mut seq = engine.new_sequence(64, KvType::F16).unwrap();
    let err = engine
        .enable_speculation(&mut seq, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no MTP head"), "{err}");
}
