//! Dequantization and reference quantization against gguf-py's numpy implementation
//! (fixtures written by `tests/data/make_quant_fixtures.py`). Comparisons are bit-exact: both sides do the same
//! f32 operations in the same order. Q4_K/Q5_K/Q6_K quantization is compared with ggml's own C reference
//! quantizers (gguf-py has none), which the script compiles from the llama.cpp tree.

use kiln_kernels::quant::{dequantize_row, quantize_row, GgmlType, QuantError};
use serde_json::Value;

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| f32::from_bits(u32::from_str_radix(h.as_str().unwrap(), 16).unwrap()))
        .collect()
}

fn ty_named(name: &str) -> GgmlType {
    (0..64)
        .filter_map(GgmlType::from_u32)
        .find(|t| t.name() == name)
        .unwrap()
}

fn fixtures() -> Vec<Value> {
    let text = include_str!("data/quant_fixtures.json");
    serde_json::from_str::<Value>(text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn dequantize_matches_gguf_py_bit_exactly() {
    let all = fixtures();
    assert_eq!(all.len(), 11, "one fixture per supported type");
    for f in all {
        let ty = ty_named(f["type"].as_str().unwrap());
        let bytes = hex_bytes(f["bytes"].as_str().unwrap());
        let want = hex_f32s(&f["dequantized"]);
        let mut got = vec![f32::NAN; want.len()];
        dequantize_row(ty, &bytes, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{ty} value {i}: got {g}, gguf-py {w}"
            );
        }
    }
}

#[test]
fn reference_quantizers_match_gguf_py_and_ggml_bytes() {
    let mut checked = 0;
    for f in fixtures() {
        let Some(src) = f.get("quantize_src") else {
            continue;
        };
        let ty = ty_named(f["type"].as_str().unwrap());
        let src = hex_f32s(src);
        let want = hex_bytes(f["quantize_bytes"].as_str().unwrap());
        let mut got = vec![0u8; want.len()];
        quantize_row(ty, &src, &mut got).unwrap();
        assert_eq!(got, want, "{ty}");
        checked += 1;
    }
    assert_eq!(checked, 11);
}

#[test]
fn bad_lengths_are_errors() {
    let mut out = [0f32; 64];
    assert_eq!(
        dequantize_row(GgmlType::Q4_0, &[0; 18], &mut out),
        Err(QuantError::WrongLength {
            ty: GgmlType::Q4_0,
            n: 64,
            got: 18,
            want: 36
        })
    );
    assert!(matches!(
        dequantize_row(GgmlType::Q4_K, &[0; 144], &mut out),
        Err(QuantError::NotBlockAligned { .. })
    ));
    assert_eq!(
        dequantize_row(GgmlType::Q2_K, &[], &mut []),
        Err(QuantError::Unsupported(GgmlType::Q2_K))
    );
    assert!(quantize_row(GgmlType::Q8_0, &[0.0; 33], &mut [0; 34]).is_err());
    assert!(quantize_row(GgmlType::Q6_K, &[0.0; 256], &mut [0; 209]).is_err());
}
