//! Kiln against llama.cpp on tiny random-weight models of every supported dense architecture that has no
//! real model in the test set: qwen2 (q/k/v biases), qwen3 (per-head q/k RMSNorm, head size from
//! `attention.key_length` ≠ n_embd / n_head) and llama with GQA and an untied output head, in f32, f16, Q8_0
//! and Q4_0. The GGUFs and their llama.cpp goldens are committed in `tests/golden/synthetic/` (made by
//! `tests/reference/make_synthetic.py`), so this needs neither llama.cpp nor a downloaded model.
//!
//! Checked per model: the full last-position logits of one prompt (max |Δ| within the model's bound below,
//! same argmax, llama.cpp's top 20 inside Kiln's top 25), the greedy continuation of three prompts
//! (identical, except that a divergence is accepted at a step whose llama.cpp top-1/top-2 margin is a
//! numerical tie), and Kiln's tokenization of the prompts (a prefix of SmolLM2's vocabulary with the
//! `qwen2` and `smollm` pre-tokenizers).

mod common;

use common::{check_greedy_path, ids};
use kiln_agent::engine::sampling::{argmax, Sampler, SamplingParams};
use kiln_agent::engine::Engine;
use kiln_agent::tokenizer::Tokenizer;
use kiln_kernels::backend::KvType;
use kiln_kernels::cpu::CpuBackend;
use serde_json::Value;
use std::path::PathBuf;

/// A greedy step whose llama.cpp top-1/top-2 margin is below this is a numerical tie (as in
/// `llama_cpp_goldens.rs`): a different pick there says nothing about correctness.
const TIE_MARGIN: f64 = 0.25;

/// Per model: the bound on max |Δlogit| over the whole vocabulary at the last prompt position, and the bound
/// on |Δlogit| of llama.cpp's top 5 at every step along the three greedy paths. Measured on this machine
/// (AMD EPYC, AVX-512; the goldens' llama.cpp build is AVX-512 too), with the reason for each:
///
/// - Q8_0 / Q4_0: the prompt logits are bit-identical (measured 0; bound 1e-4, far below any architecture
///   error). Along the greedy paths most steps are bit-identical too, but a few positions differ by up to
///   0.062 (qwen2-q4_0) / 0.093 (qwen3-q8_0) and the difference then comes and goes: see `QUANT_PATH`.
/// - f32 (llama): prompt logits within 2.4e-6 (f32 summation order of the f32 matmuls). Along the path up to
///   2.4e-3: llama.cpp itself gives different logits for the same tokens when they are fed one per
///   `llama_decode` (its single-row f32 matmul) or in one batch: by 1.3e-3 at step 2 of `capital_fr`, the
///   same amount Kiln differs there; f16 KV rounding turns ~1e-7 differences in K/V into ~1e-3.
/// - f16: up to 1.3e-2 (prompt) and 1.4e-2 (path), because llama.cpp rounds the activations to f16 before
///   every f16-weight matmul (`vec_dot_type` of F16 is F16; its f16 tinyBLAS/`ggml_vec_dot_f16` dot f16 by
///   f16) while Kiln dots f16 weights against f32 activations (`kernels/src/cpu/matmul.rs`). With the
///   activations rounded to f16 in Kiln the same models agree within 1.9e-6, so this is the matmul, not
///   the qwen2/qwen3 code. `f16_weight_matmul_rounds_activations_like_llama_cpp` (ignored) asserts that.
const MODELS: &[(&str, f32, f32)] = &[
    ("llama-gqa-f32", 1e-4, 5e-3),
    ("qwen2-f16", F16_BOUND, F16_BOUND),
    ("qwen3-f16", F16_BOUND, F16_BOUND),
    ("qwen3-q8_0", 1e-4, QUANT_PATH),
    ("qwen2-q4_0", 1e-4, QUANT_PATH),
];

/// f16-weight models: twice the measured 1.4e-2 (see `MODELS`).
const F16_BOUND: f32 = 3e-2;

/// Quantized models along the greedy path: below llama.cpp's own flash-attention on/off spread on the same
/// prompts (0.17 and 0.20, recorded in the goldens) and below `TIE_MARGIN`; an architecture error (RoPE,
/// biases, norms, GQA, KV handling) moves logits by whole units. Measured 0.093 at most.
///
/// One cause is identified: ggml's CPU flash-attention kernel updates the softmax sum as `S = S*ms + vs`,
/// which GCC contracts into one fused multiply-add, while Kiln's `sum = sum * rescale + weight`
/// (`kernels/src/cpu/attention.rs`) rounds twice. They differ only when a key raises the running maximum,
/// so a whole head's output is off by an ulp at some positions; the Q8_0 activation quantization before
/// `attn_output` sometimes turns that into a different int8 and then a visible logit change (first seen at
/// layer 1, position 7 of qwen3-q8_0 `capital_fr`). With `sum.mul_add(rescale, weight)` qwen3-q8_0 is
/// bit-identical along all three paths, including `capital_fr`, which then no longer diverges at step 23.
/// qwen2-q4_0's `once_upon` (0.061 at steps 13-21) is unchanged by that and not explained yet.
const QUANT_PATH: f32 = 0.15;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/synthetic")
}

fn golden(name: &str) -> Value {
    common::read_json(&dir().join(format!("{name}.json")))
}

fn load(name: &str) -> (Engine<CpuBackend>, Tokenizer) {
    common::load_engine(&dir().join(format!("{name}.gguf")))
}

fn check_model(name: &str, max_abs: f32, max_path: f32) {
    let g = golden(name);
    let (engine, tok) = load(name);
    let cfg = &g["model"]["config"];
    let info = engine.model.info();
    assert_eq!(info.arch, cfg["arch"].as_str().unwrap(), "{name}: arch");
    assert_eq!(info.n_vocab as u64, g["model"]["n_vocab"].as_u64().unwrap());
    assert_eq!(info.n_layer as u64, cfg["n_layer"].as_u64().unwrap());

    // Logits of the last prompt position.
    let lg = &g["logits"];
    let want: Vec<f32> = lg["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let mut seq = engine.new_sequence(512, KvType::F16).unwrap();
    let (got, cached) = engine.prefill(&mut seq, &ids(&lg["prompt_ids"])).unwrap();
    assert_eq!(cached, 0);
    assert_eq!(got.len(), want.len(), "{name}: n_vocab");
    let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().copied().fold(0f32, f32::max);
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    let n_exact = diffs.iter().filter(|&&d| d == 0.0).count();
    let fa = &lg["flash_attn_disabled"];
    eprintln!(
        "{name}: |Δlogit| max {max:.3e} mean {mean:.3e}, {n_exact}/{} bit-identical (llama.cpp FA on vs off: max {:.3e})",
        diffs.len(),
        fa["max_abs_diff"].as_f64().unwrap()
    );
    assert!(
        max <= max_abs,
        "{name}: max |Δlogit| {max} > {max_abs} (mean {mean})"
    );
    let mut order: Vec<usize> = (0..got.len()).collect();
    order.sort_by(|&a, &b| got[b].total_cmp(&got[a]));
    assert_eq!(
        order[0] as u64,
        lg["argmax"].as_u64().unwrap(),
        "{name}: argmax"
    );
    let top25: Vec<u32> = order[..25].iter().map(|&i| i as u32).collect();
    for t in ids(&lg["top20_ids"]) {
        assert!(
            top25.contains(&t),
            "{name}: llama.cpp's top token {t} not in Kiln's top 25"
        );
    }

    // Greedy continuations: once through `Engine::generate`, and once step by step (prefill, then one
    // `decode` per token) comparing Kiln's logits with llama.cpp's top 5 of every step on the way.
    let eog: Vec<u32> = ids(&g["model"]["eog_ids"]);
    let mut path_max = 0f32;
    for case in g["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let prompt = ids(&case["prompt_ids"]);
        assert_eq!(
            tok.encode(case["prompt"].as_str().unwrap(), true, true),
            prompt,
            "{name}/{id}: prompt tokenization"
        );
        let want = ids(&case["generated_ids"]);
        let margins = common::f64s(&case["top1_top2_logit_margin"]);
        let mut seq = engine.new_sequence(512, KvType::F16).unwrap();
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let (got, _) = engine
            .generate(
                &mut seq,
                &prompt,
                want.len(),
                &mut sampler,
                &|t| eog.contains(&t),
                &mut |_| true,
            )
            .unwrap();

        let mut seq = engine.new_sequence(512, KvType::F16).unwrap();
        let (mut logits, _) = engine.prefill(&mut seq, &prompt).unwrap();
        let mut stepped = Vec::new();
        let mut case_max = 0f32;
        for (step, top) in case["step_topk"].as_array().unwrap().iter().enumerate() {
            let vals = top["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32);
            for (t, v) in ids(&top["ids"]).into_iter().zip(vals) {
                case_max = case_max.max((logits[t as usize] - v).abs());
            }
            let t = argmax(&logits);
            stepped.push(t);
            if t != want[step] || eog.contains(&t) {
                break;
            }
            logits = engine.decode(&mut seq, t).unwrap();
        }
        path_max = path_max.max(case_max);
        assert_eq!(
            &got[..stepped.len().min(got.len())],
            &stepped[..stepped.len().min(got.len())],
            "{name}/{id}: generate() and prefill+decode disagree"
        );

        let same = check_greedy_path(&format!("{name}/{id}"), &got, &want, &margins, TIE_MARGIN);
        if same == want.len() {
            eprintln!(
                "{name}/{id}: all {} greedy tokens identical; top-5 |Δlogit| along the path ≤ {case_max:.3e}",
                want.len()
            );
        } else {
            eprintln!("{name}/{id}: top-5 |Δlogit| up to the tie ≤ {case_max:.3e}");
        }
    }
    assert!(
        path_max <= max_path,
        "{name}: |Δlogit| of llama.cpp's top-5 along the greedy paths reaches {path_max} > {max_path}"
    );
}

#[test]
fn llama_gqa_f32_matches_llama_cpp() {
    let (name, logits, path) = MODELS[0];
    check_model(name, logits, path);
}

#[test]
fn qwen2_f16_matches_llama_cpp() {
    let (name, logits, path) = MODELS[1];
    check_model(name, logits, path);
}

#[test]
fn qwen3_f16_matches_llama_cpp() {
    let (name, logits, path) = MODELS[2];
    check_model(name, logits, path);
}

#[test]
fn qwen3_q8_0_matches_llama_cpp() {
    let (name, logits, path) = MODELS[3];
    check_model(name, logits, path);
}

#[test]
fn qwen2_q4_0_matches_llama_cpp() {
    let (name, logits, path) = MODELS[4];
    check_model(name, logits, path);
}

/// The f16 models within f32-summation-order distance of llama.cpp (as the f32 model is). Fails today:
/// Kiln's f16-weight matmul does not round the activations to f16 as llama.cpp's does (see `MODELS`);
/// run with `--ignored` after changing that.
#[test]
#[ignore = "Kiln's f16 matmul keeps f32 activations; llama.cpp rounds them to f16 (measured |Δ| 1.2e-2)"]
fn f16_weight_matmul_rounds_activations_like_llama_cpp() {
    check_model("qwen2-f16", 1e-4, 5e-3);
    check_model("qwen3-f16", 1e-4, 5e-3);
}
