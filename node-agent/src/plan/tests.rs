//! The plan against the numbers measured on real deployments of the Qwen3.6-27B shape (from the
//! synthetic 27B's header: the same tensors, types and byte counts as the real Q4_K_M file).

use super::*;
use crate::gguf::Value;
use crate::synth::{Qwen35Shape, Synth};

const GIB: f64 = (1u64 << 30) as f64;

fn facts_27b(quant: &str) -> ModelFacts {
    let shape = Qwen35Shape::preset("qwen3.6-27b").unwrap();
    let synth = Synth::qwen35(&shape, quant, 0).unwrap();
    let meta: Metadata = synth.writer.metadata.iter().cloned().collect();
    ModelFacts::from_header(
        &meta,
        synth
            .writer
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.n_bytes().unwrap())),
    )
    .unwrap()
}

fn opts(ctx: usize, kv: KvType) -> PlanOptions {
    PlanOptions {
        ctx: Some(ctx),
        kv_type: kv,
        ..PlanOptions::default()
    }
}

fn within(got: u64, want: f64, tol: f64) -> bool {
    ((got as f64 - want) / want).abs() <= tol
}

#[test]
fn qwen36_27b_shape_terms() {
    let m = facts_27b("q4_k_m");
    assert_eq!(m.attention_layers, 16);
    assert_eq!(m.mtp_layers, 1);
    let r = m.recurrent.as_ref().unwrap();
    assert_eq!(r.layers, 48);
    // 48 layers × (48 heads × 128 × 128 f32 + 3 × 10240 conv f32) = 149.6 MiB, the checkpoint size
    // llama.cpp reports for this model.
    assert_eq!(
        r.bytes_per_copy(),
        48 * (48 * 128 * 128 * 4 + 3 * 10240 * 4)
    );
    assert!((r.bytes_per_copy() as f64 / (1 << 20) as f64 - 149.6).abs() < 0.1);
    // q4_0 KV: 16 layers × 4 heads × 256 × (K + V) × 18/32 bytes = 18 KiB per token.
    assert_eq!(
        m.kv_bytes_per_token_layer(KvType::Q4_0).unwrap() * 16,
        18 * 1024
    );
    // ≈15.8 GB of weights on the device (the embedding stays on the host).
    let f = opts(4096, KvType::F16).footprint(&m, 4096).unwrap();
    assert!(within(f.weights.device_bytes, 15.8e9, 0.01), "{f:?}");
    assert!(within(m.host_weights_bytes, 0.715e9, 0.01));
}

/// The field number: Qwen3.6-27B Q4_K_M at 128K with q4_0 KV and MTP (draft max 3) used 21 GB at start
/// on a 7900 XTX (notes/field-lessons.md), and it fits a 24 GiB card.
#[test]
fn reproduces_the_field_number_at_128k_q4_0() {
    let m = facts_27b("q4_k_m");
    let o = PlanOptions {
        mtp_draft_max: Some(3),
        available: Some(24 * (1 << 30)),
        ..opts(131072, KvType::Q4_0)
    };
    let p = o.plan(&m).unwrap();
    assert_eq!(p.context, 131072);
    assert!(
        within(p.total_bytes, 21e9, 0.05),
        "{:.2} GB",
        p.total_bytes as f64 / 1e9
    );
    assert_eq!(p.attention_kv.bytes, 18 * 1024 * 131072);
    assert_eq!(p.recurrent_state.rollback_copies, 4);
    assert_eq!(p.mtp_kv.bytes, 18 * 1024 * 131072 / 16);
    assert!(p.spare_bytes.unwrap() > 0);
}

/// Measured on an H200 (notes/qwen35.md): llama.cpp, same model shape, 128K, q4_0 KV, no speculation,
/// no checkpoints: peak device memory 18.9 GiB.
#[test]
fn matches_the_h200_measurement_without_mtp() {
    let m = facts_27b("q4_k_m");
    let o = PlanOptions {
        prefix_checkpoints: 0,
        ..opts(131072, KvType::Q4_0)
    };
    let p = o.plan(&m).unwrap();
    assert!(
        within(p.total_bytes, 18.9 * GIB, 0.05),
        "{:.2} GiB",
        p.total_bytes as f64 / GIB
    );
    assert_eq!(
        p.weights.device_bytes,
        m.weights_bytes - m.host_weights_bytes - m.mtp_weights_bytes
    );
}

#[test]
fn steps_down_the_ladder_when_memory_is_short() {
    let m = facts_27b("q4_k_m");
    let o = PlanOptions {
        mtp_draft_max: Some(3),
        available: Some(21_500_000_000),
        ..opts(131072, KvType::Q4_0)
    };
    let p = o.plan(&m).unwrap();
    assert_eq!(p.context, 98304, "near 21.5 GB the 27B drops to 96K");
    assert!(p.spare_bytes.unwrap() >= 0);
    // Every rung above the chosen one really does not fit.
    let above = o.footprint(&m, 131072).unwrap();
    assert!(above.total_bytes + o.headroom > 21_500_000_000);
    // f16 KV costs more than q4_0: the same memory holds less context.
    let f16 = PlanOptions {
        kv_type: KvType::F16,
        ..o.clone()
    }
    .plan(&m)
    .unwrap();
    assert!(f16.context < p.context);
}

#[test]
fn refuses_with_how_much_is_missing() {
    let m = facts_27b("q4_k_m");
    let o = PlanOptions {
        available: Some(16_000_000_000),
        ctx_min: 8192,
        ..opts(131072, KvType::Q4_0)
    };
    let e = o.plan(&m).unwrap_err().to_string();
    assert!(e.contains("minimum context 8192"), "{e}");
    assert!(e.contains("missing"), "{e}");
    let need = o.footprint(&m, 8192).unwrap().total_bytes + o.headroom;
    assert!(e.contains(&gb(need - 16_000_000_000)), "{e}");
}

#[test]
fn slots_multiply_caches_not_weights() {
    let m = facts_27b("q4_k_m");
    let one = opts(32768, KvType::Q8_0).footprint(&m, 32768).unwrap();
    let two = PlanOptions {
        parallel: 2,
        ..opts(32768, KvType::Q8_0)
    }
    .footprint(&m, 32768)
    .unwrap();
    assert_eq!(two.weights, one.weights);
    assert_eq!(two.attention_kv.bytes, 2 * one.attention_kv.bytes);
    assert_eq!(two.recurrent_state.bytes, 2 * one.recurrent_state.bytes);
    assert_eq!(two.compute, one.compute);
}

#[test]
fn ladder_rungs() {
    assert_eq!(
        ladder(131072, 4096),
        vec![131072, 98304, 65536, 49152, 32768, 24576, 16384, 12288, 8192, 6144, 4096]
    );
    // Model-aligned: an odd request is rounded down to the 256-token grid.
    assert_eq!(
        ladder(100_000, 32768),
        vec![99840, 98304, 65536, 49152, 32768]
    );
    assert_eq!(ladder(2048, 4096), vec![2048]);
    assert_eq!(ladder(4096, 1000), vec![4096, 3072, 2048, 1536, 1024, 768]);
}

#[test]
fn dense_transformer_and_bad_requests() {
    // A SmolLM2-135M-like header: 30 layers, 3 KV heads of 64, tied embeddings.
    let meta: Metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(30)),
        ("llama.embedding_length", Value::U32(576)),
        ("llama.feed_forward_length", Value::U32(1536)),
        ("llama.attention.head_count", Value::U32(9)),
        ("llama.attention.head_count_kv", Value::U32(3)),
        ("llama.context_length", Value::U32(8192)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()); 49152]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let m = ModelFacts::from_header(&meta, [("token_embd.weight", 1000u64)].into_iter()).unwrap();
    assert!(m.recurrent.is_none());
    assert_eq!(
        m.host_weights_bytes, 0,
        "tied embeddings are the output head: on the device"
    );
    let f = opts(4096, KvType::F16).footprint(&m, 4096).unwrap();
    assert_eq!(f.attention_kv.bytes_per_token, 30 * 2 * 3 * 64 * 2);
    assert_eq!(f.recurrent_state.bytes, 0);
    // No expanded f16 copy of an f16 cache; the GPU prefill attention's scores and probabilities of one
    // head group (9 / 3 heads) over a micro-batch of rows, and the decode attention's partial sums: one
    // row, 9 heads, 4096 / 16 splits, 64 + 2 values.
    let ub = PlanOptions::default().ubatch as u64;
    let partials = 9 * 256 * (64 + 2) * 4;
    assert_eq!(
        f.compute.attention_scratch_bytes,
        3 * ub * 4096 * 6 + partials
    );
    assert_eq!(opts(4096, KvType::F16).plan(&m).unwrap().context, 4096);
    let e = PlanOptions {
        mtp_draft_max: Some(3),
        ..opts(4096, KvType::F16)
    }
    .plan(&m)
    .unwrap_err();
    assert!(e.to_string().contains("no MTP block"), "{e}");
    // 3 KV heads × 64 = 192 values per row: six q4_0 blocks of 18 bytes, for K and for V, per layer.
    assert_eq!(
        m.kv_bytes_per_token_layer(KvType::Q4_0).unwrap(),
        2 * 6 * 18
    );
    assert_eq!(parse_bytes("24GiB").unwrap(), 24 << 30);
    assert_eq!(parse_bytes("21G").unwrap(), 21_000_000_000);
    assert_eq!(parse_bytes("512Mi").unwrap(), 512 << 20);
    assert_eq!(parse_bytes("1234").unwrap(), 1234);
    for bad in ["", "G", "-1", "1.5G", "12XB", "99999999999999999999"] {
        assert!(parse_bytes(bad).is_err(), "`{bad}`");
    }
}
