//! Type-dispatched row conversion with length checks: `dequantize_row` and `quantize_row`.

use super::{float, k_quants, legacy, GgmlType, QuantError};

/// Checks that `n` values of `ty` occupy exactly `bytes` bytes.
pub(crate) fn check_row(ty: GgmlType, n: usize, bytes: usize) -> Result<(), QuantError> {
    let want = ty.bytes_for(n).ok_or(QuantError::NotBlockAligned {
        ty,
        n,
        block: ty.block_size(),
    })?;
    if bytes != want {
        return Err(QuantError::WrongLength {
            ty,
            n,
            got: bytes,
            want,
        });
    }
    Ok(())
}

/// Converts one row of `dst.len()` values of type `ty` to f32.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    if !matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    ) {
        return Err(QuantError::Unsupported(ty));
    }
    check_row(ty, dst.len(), src.len())?;
    match ty {
        F32 => float::dequantize_f32(src, dst),
        F16 => float::dequantize_f16(src, dst),
        BF16 => float::dequantize_bf16(src, dst),
        Q4_0 => legacy::dequantize_q4_0(src, dst),
        Q4_1 => legacy::dequantize_q4_1(src, dst),
        Q5_0 => legacy::dequantize_q5_0(src, dst),
        Q5_1 => legacy::dequantize_q5_1(src, dst),
        Q8_0 => legacy::dequantize_q8_0(src, dst),
        Q4_K => k_quants::dequantize_q4_k(src, dst),
        Q5_K => k_quants::dequantize_q5_k(src, dst),
        Q6_K => k_quants::dequantize_q6_k(src, dst),
        _ => unreachable!("filtered above"),
    }
    Ok(())
}

/// Quantizes one row of weights with ggml's reference quantizer for `ty` (what `llama-quantize` does without an
/// importance matrix). Q8_0 here rounds half away from zero, like `quantize_row_q8_0_ref`; activations use
/// [`quantize_row_q8_0`](super::quantize_row_q8_0) instead.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    use GgmlType::*;
    if !matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    ) {
        return Err(QuantError::Unsupported(ty));
    }
    check_row(ty, src.len(), dst.len())?;
    match ty {
        F32 => float::quantize_f32(src, dst),
        F16 => float::quantize_f16(src, dst),
        BF16 => float::quantize_bf16(src, dst),
        Q4_0 => legacy::quantize_q4_0_ref(src, dst),
        Q4_1 => legacy::quantize_q4_1_ref(src, dst),
        Q5_0 => legacy::quantize_q5_0_ref(src, dst),
        Q5_1 => legacy::quantize_q5_1_ref(src, dst),
        Q8_0 => legacy::quantize_q8_0_ref(src, dst),
        Q4_K => k_quants::quantize_q4_k_ref(src, dst),
        Q5_K => k_quants::quantize_q5_k_ref(src, dst),
        Q6_K => k_quants::quantize_q6_k_ref(src, dst),
        _ => unreachable!("filtered above"),
    }
    Ok(())
}
