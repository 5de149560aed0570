//! Batched decoding (`Engine::decode_batch` / `Model::forward_batch`): one pass over the next token of
//! several sequences at different positions must give each sequence the logits it gets decoded alone,
//! on real GGUF models: the committed synthetic qwen3 and llama (GQA, f32) transformers, the tiny qwen35
//! (gated attention + Gated DeltaNet recurrent state), and SmolLM2 when it is downloaded.
//!
//! The batch changes from step to step (sequences join and leave, as slots do in `serve`), and a row
//! whose context is full fails alone without disturbing the others.

mod common;

use common::{cached_model, max_abs, test_model};
use kiln_agent::engine::sampling::argmax;
use kiln_agent::engine::{Engine, Sequence};
use kiln_kernels::backend::KvType;
use kiln_kernels::cpu::CpuBackend;
use std::path::{Path, PathBuf};

/// Prompt lengths of the sequences: one token, short, and ones past a 64-token delta-rule chunk.
const PROMPT_LENS: [usize; 4] = [1, 9, 37, 90];
const STEPS: usize = 10;
const N_CTX: usize = 256;

/// A fixed pseudo-random prompt of `len` ordinary tokens (ids below 250 exist in every test vocabulary).
fn prompt(seed: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 31 + seed * 17 + 5) % 250) as u32)
        .collect()
}

fn synthetic(name: &str) -> PathBuf {
    common::repo().join(format!("tests/golden/synthetic/{name}.gguf"))
}

/// Decodes `STEPS` tokens of every sequence two ways, batched and each alone, feeding both the greedy
/// pick of the alone run, and returns the largest logit difference seen. In step s, sequence i sits
/// out when 3 divides i + s, so rows join and leave the batch and each row is at its own position.
fn batched_vs_alone(path: &Path, kv: KvType) -> f32 {
    let (engine, _) = common::load_engine(path);
    let prompts: Vec<Vec<u32>> = PROMPT_LENS
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt(i, n))
        .collect();
    let new_seqs = |engine: &Engine<CpuBackend>| -> (Vec<Sequence<CpuBackend>>, Vec<u32>) {
        let mut next = Vec::new();
        let seqs = prompts
            .iter()
            .map(|p| {
                let mut seq = engine.new_sequence(N_CTX, kv).unwrap();
                let (logits, _) = engine.prefill(&mut seq, p).unwrap();
                next.push(argmax(&logits));
                seq
            })
            .collect();
        (seqs, next)
    };
    let (mut batched, mut next) = new_seqs(&engine);
    let (mut alone, _) = new_seqs(&engine);
    let mut worst = 0f32;
    for step in 0..STEPS {
        let member = |i: usize| !(i + step).is_multiple_of(3);
        let mut rows: Vec<(&mut Sequence<CpuBackend>, u32)> = batched
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| member(*i))
            .map(|(i, s)| (s, next[i]))
            .collect();
        assert!(rows.len() >= 2, "step {step}: a batch of {}", rows.len());
        let results = engine.decode_batch(&mut rows);
        let members: Vec<usize> = (0..prompts.len()).filter(|&i| member(i)).collect();
        for (&i, got) in members.iter().zip(results) {
            let got = got.unwrap_or_else(|e| panic!("step {step}, sequence {i}: {e}"));
            let want = engine.decode(&mut alone[i], next[i]).unwrap();
            let d = max_abs(&got, &want);
            assert_eq!(
                argmax(&got),
                argmax(&want),
                "{}: step {step}, sequence {i}: greedy pick differs (max |Δ| {d})",
                path.display()
            );
            worst = worst.max(d);
            next[i] = argmax(&want);
            assert_eq!(batched[i].tokens, alone[i].tokens, "sequence {i} tokens");
        }
    }
    eprintln!(
        "{}: batched vs alone max |Δlogit| = {worst:e}",
        path.display()
    );
    worst
}

/// Every row goes through the same arithmetic as when alone except that the matmuls see several rows;
/// the CPU matmul dots each row independently (its ≥8-row gemm kernels are bit-identical too), so the
/// measured difference is 0 on every model here. The bound leaves room only for summation order; a
/// wrong position, cache or state moves logits by far more.
const TOLERANCE: f32 = 1e-4;

#[test]
fn qwen3_batched_decode_equals_each_sequence_alone() {
    assert!(batched_vs_alone(&synthetic("qwen3-q8_0"), KvType::F16) <= TOLERANCE);
}

#[test]
fn llama_gqa_batched_decode_equals_each_sequence_alone() {
    assert!(batched_vs_alone(&synthetic("llama-gqa-f32"), KvType::F32) <= TOLERANCE);
}

#[test]
fn qwen35_batched_decode_equals_each_sequence_alone() {
    assert!(batched_vs_alone(&test_model("qwen35-tiny-q8_0.gguf"), KvType::Q8_0) <= TOLERANCE);
}

#[test]
fn smollm2_batched_decode_equals_each_sequence_alone() {
    let Some(path) = cached_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    assert!(batched_vs_alone(&path, KvType::F16) <= TOLERANCE);
}

/// A row whose context is full fails alone: the other rows of the same call (still a batch of two) get
/// the logits they get alone, and the full sequence is left as it was.
#[test]
fn a_full_context_fails_only_its_row() {
    let (engine, _) = common::load_engine(&test_model("qwen35-tiny-q8_0.gguf"));
    let long = prompt(1, 40);
    let mut full = engine.new_sequence(long.len(), KvType::F16).unwrap();
    engine.prefill(&mut full, &long).unwrap();
    let prompts = [prompt(2, 12), prompt(3, 5)];
    let new_pair = || -> Vec<Sequence<CpuBackend>> {
        prompts
            .iter()
            .map(|p| {
                let mut seq = engine.new_sequence(N_CTX, KvType::F16).unwrap();
                engine.prefill(&mut seq, p).unwrap();
                seq
            })
            .collect()
    };
    let (mut batched, mut alone) = (new_pair(), new_pair());
    let [a, b] = &mut batched[..] else {
        unreachable!()
    };
    let mut rows = vec![(a, 7u32), (&mut full, 7u32), (b, 9u32)];
    let mut results = engine.decode_batch(&mut rows).into_iter();
    let first = results.next().unwrap().unwrap();
    let err = results.next().unwrap().unwrap_err().to_string();
    assert!(err.contains("full"), "unexpected error: {err}");
    let third = results.next().unwrap().unwrap();
    let want = [
        engine.decode(&mut alone[0], 7).unwrap(),
        engine.decode(&mut alone[1], 9).unwrap(),
    ];
    assert!(max_abs(&first, &want[0]) <= TOLERANCE);
    assert!(max_abs(&third, &want[1]) <= TOLERANCE);
    assert_eq!(full.tokens, long, "the refused row's sequence changed");
    for (b, a) in batched.iter().zip(&alone) {
        assert_eq!(b.tokens, a.tokens);
    }
}
