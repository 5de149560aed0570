//! Helpers shared by the integration tests: where models and goldens live, loading an engine, reading
//! golden JSON, and the tie-aware comparison of greedy continuations. Each test binary uses a subset.
#![allow(dead_code)]

use kiln_agent::engine::Engine;
use kiln_agent::gguf::GgufFile;
use kiln_agent::tokenizer::Tokenizer;
use kiln_kernels::cpu::CpuBackend;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn golden_dir() -> PathBuf {
    repo().join("tests/golden")
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A downloaded model (`scripts/fetch-models.sh`), or `None` (with the reason printed) when it is
/// absent and not required: `KILN_REQUIRE_MODELS=1` (the project's test script) makes it a failure.
pub fn cached_model(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln/models")
        });
    let path = dir.join(file);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("KILN_REQUIRE_MODELS").is_some_and(|v| v == "1") {
        panic!(
            "{} is missing and KILN_REQUIRE_MODELS=1 (run scripts/fetch-models.sh)",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found (run scripts/fetch-models.sh)",
        path.display()
    );
    None
}

/// A committed test model in tests/models/.
pub fn test_model(name: &str) -> PathBuf {
    repo().join("tests/models").join(name)
}

/// An engine on a 2-thread CPU backend, and the file's tokenizer.
pub fn load_engine(path: &Path) -> (Engine<CpuBackend>, Tokenizer) {
    let gguf = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let backend = Arc::new(CpuBackend::new(2));
    let model = kiln_agent::model::load(&gguf, backend.clone()).unwrap();
    (
        Engine::new(backend, model),
        Tokenizer::from_gguf(&gguf).unwrap(),
    )
}

/// An engine for one of the tiny qwen35 models in tests/models/.
pub fn qwen35_engine(name: &str) -> Engine<CpuBackend> {
    load_engine(&test_model(name)).0
}

/// 150 tokens of a fixed pseudo-random walk over the tiny qwen35 vocabulary (ids < 300 are ordinary).
pub fn long_prompt() -> Vec<u32> {
    (0..150u32).map(|i| (i * 37 + 11) % 300).collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Compares Kiln's greedy tokens `got` with the reference's `want`: returns how many are identical from
/// the start, and fails unless the first difference falls on a step whose reference top-1/top-2 logit
/// margin (`margins`) is below `tie` — a numerical tie, where a different pick says nothing about
/// correctness.
pub fn check_greedy_path(
    label: &str,
    got: &[u32],
    want: &[u32],
    margins: &[f64],
    tie: f64,
) -> usize {
    let same = got.iter().zip(want).take_while(|(a, b)| a == b).count();
    if same < want.len() {
        assert!(
            margins[same] < tie,
            "{label}: token {same} is {} but the reference chose {} with a margin of {:.4} (not a tie)\n kiln {:?}\n ref  {:?}",
            got.get(same).map_or(-1, |&t| t as i64),
            want[same],
            margins[same],
            got,
            want
        );
        eprintln!(
            "{label}: identical for {same} tokens, then a numerical tie (reference margin {:.4})",
            margins[same]
        );
    }
    same
}

/// `n` tokens sampled on the host from whole logit rows (the engine's plain `prefill` and `decode`):
/// what the engine's own sampling, which asks the backend for less, must pick too.
pub fn sample_whole_rows<B: kiln_kernels::backend::Backend>(
    engine: &Engine<B>,
    prompt: &[u32],
    n: usize,
    n_ctx: usize,
    params: kiln_agent::engine::sampling::SamplingParams,
) -> Vec<u32> {
    let mut seq = engine
        .new_sequence(n_ctx, kiln_kernels::backend::KvType::F16)
        .unwrap();
    let mut sampler = kiln_agent::engine::sampling::Sampler::new(params);
    let (mut logits, _) = engine.prefill(&mut seq, prompt).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = sampler.sample(&mut logits, &seq.tokens);
        out.push(t);
        logits = engine.decode(&mut seq, t).unwrap();
    }
    out
}

/// The samplers whose rows the backend picks (greedy: the argmax; top-k 20 at temperature 0.9: the
/// candidates), for the tests that compare those picks with whole rows.
pub fn readout_samplers() -> [kiln_agent::engine::sampling::SamplingParams; 2] {
    use kiln_agent::engine::sampling::SamplingParams;
    let top_k = SamplingParams {
        temperature: 0.9,
        top_k: 20,
        seed: 4,
        ..Default::default()
    };
    [SamplingParams::greedy(), top_k]
}
