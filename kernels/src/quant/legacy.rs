//! The 32-value block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1): layouts, dequantization, ggml's reference
//! weight quantizers, and the activation quantizers the CPU dot products use.
//!
//! Kernels work on byte slices (GGUF data may be mapped at any 2-byte alignment); the `#[repr(C)]` structs
//! document the layouts and are what GPU backends mirror.

use half::f16;

use super::float::{f16_at, put_f16};
use super::{GgmlType, QuantError};

/// Values per legacy block.
pub const QK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Value `j` is the low nibble of `qs[j]`, value `j + 16` its high nibble; both offset by 8.
    pub qs: [u8; QK / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_0 {
    pub d: f16,
    /// Bit `j` (little-endian u32) is the fifth bit of value `j`.
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// Activation block for Q4_1/Q5_1 dot products: `s = d * Σ qs`, so the weights' offsets cost one multiply.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

const _: () = {
    assert!(size_of::<BlockQ4_0>() == 18);
    assert!(size_of::<BlockQ4_1>() == 20);
    assert!(size_of::<BlockQ5_0>() == 22);
    assert!(size_of::<BlockQ5_1>() == 24);
    assert!(size_of::<BlockQ8_0>() == 34);
    assert!(size_of::<BlockQ8_1>() == 36);
};

fn check_activation(ty: GgmlType, x: &[f32], dst: &[u8]) -> Result<(), QuantError> {
    let n = x.len();
    let want = ty.bytes_for(n).ok_or(QuantError::NotBlockAligned {
        ty,
        n,
        block: ty.block_size(),
    })?;
    if dst.len() != want {
        return Err(QuantError::WrongLength {
            ty,
            n,
            got: dst.len(),
            want,
        });
    }
    Ok(())
}

/// Scale and rounded values of one activation block, as ggml's AVX quantizer computes them: `d = amax / 127`,
/// `q = round_half_even(x * 127 / amax)`.
#[inline(always)]
fn quantize_q8_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        // `as i32` saturates like `_mm256_packs_*` does for out-of-range values (NaN/inf inputs only).
        let i = ((v * id).round_ties_even() as i32).clamp(-128, 127);
        sum += i;
        *q = i as i8 as u8;
    }
    (d, sum)
}

/// Quantizes activations to Q8_0 blocks (34 bytes per 32 values) into `dst`.
pub fn quantize_row_q8_0(x: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_activation(GgmlType::Q8_0, x, dst)?;
    #[cfg(target_arch = "x86_64")]
    if super::simd_quantizers() {
        // SAFETY: AVX2/FMA/F16C are present; the lengths were checked above.
        unsafe { super::simd::quantize_q8::<false>(x, dst) };
        return Ok(());
    }
    quantize_row_q8_0_scalar(x, dst);
    Ok(())
}

pub(crate) fn quantize_row_q8_0_scalar(x: &[f32], dst: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let (d, _) = quantize_q8_block(xb, &mut yb[2..]);
        put_f16(yb, 0, d);
    }
}

/// Quantizes activations to Q8_1 blocks (36 bytes per 32 values) into `dst`.
pub fn quantize_row_q8_1(x: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_activation(GgmlType::Q8_1, x, dst)?;
    #[cfg(target_arch = "x86_64")]
    if super::simd_quantizers() {
        // SAFETY: AVX2/FMA/F16C are present; the lengths were checked above.
        unsafe { super::simd::quantize_q8::<true>(x, dst) };
        return Ok(());
    }
    quantize_row_q8_1_scalar(x, dst);
    Ok(())
}

pub(crate) fn quantize_row_q8_1_scalar(x: &[f32], dst: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(dst.chunks_exact_mut(36)) {
        let (d, sum) = quantize_q8_block(xb, &mut yb[4..]);
        put_f16(yb, 0, d);
        put_f16(yb, 2, d * sum as f32);
    }
}

pub(crate) fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for (j, &q) in b[2..].iter().enumerate() {
            y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub(crate) fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (j, &q) in b[4..].iter().enumerate() {
            y[j] = (q & 0xF) as f32 * d + m;
            y[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

/// The five-bit values of a Q5 block (0..=31): low nibbles from `qs`, fifth bits from `qh`.
#[inline(always)]
pub(crate) fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut v = [0u8; QK];
    for (j, &q) in qs.iter().enumerate() {
        v[j] = (q & 0xF) | (((qh >> j) & 1) << 4) as u8;
        v[j + 16] = (q >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
    }
    v
}

pub(crate) fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for (o, q) in y.iter_mut().zip(q5_values(&b[2..6], &b[6..])) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }
}

pub(crate) fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (o, q) in y.iter_mut().zip(q5_values(&b[4..8], &b[8..])) {
            *o = q as f32 * d + m;
        }
    }
}

pub(crate) fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for (o, &q) in y.iter_mut().zip(&b[2..]) {
            *o = q as i8 as f32 * d;
        }
    }
}

/// The value of largest magnitude, keeping its sign (first one wins ties), as ggml's reference quantizers pick it.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    })
}

/// C's `(int8_t)f` then `(uint8_t)`: truncation toward zero, wrapping into a byte.
#[inline(always)]
fn trunc_u8(v: f32) -> u8 {
    v as i32 as i8 as u8
}

pub(crate) fn quantize_q4_0_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        for j in 0..16 {
            let lo = trunc_u8(x[j] * id + 8.5).min(15);
            let hi = trunc_u8(x[j + 16] * id + 8.5).min(15);
            b[2 + j] = lo | (hi << 4);
        }
    }
}

pub(crate) fn quantize_q4_1_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(20)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        put_f16(b, 2, min);
        for j in 0..16 {
            let lo = trunc_u8((x[j] - min) * id + 0.5).min(15);
            let hi = trunc_u8((x[j + 16] - min) * id + 0.5).min(15);
            b[4 + j] = lo | (hi << 4);
        }
    }
}

/// Packs five-bit values into a Q5 block's `qh` (fifth bits) and `qs` (nibbles).
fn pack_q5(v: &[u8; QK], qh: &mut [u8], qs: &mut [u8]) {
    let mut h = 0u32;
    for j in 0..16 {
        qs[j] = (v[j] & 0xF) | ((v[j + 16] & 0xF) << 4);
        h |= (((v[j] & 0x10) >> 4) as u32) << j;
        h |= (((v[j + 16] & 0x10) >> 4) as u32) << (j + 16);
    }
    qh.copy_from_slice(&h.to_le_bytes());
}

pub(crate) fn quantize_q5_0_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(22)) {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        let mut v = [0u8; QK];
        for (q, &xv) in v.iter_mut().zip(x) {
            *q = trunc_u8(xv * id + 16.5).min(31);
        }
        let (qh, qs) = b[2..].split_at_mut(4);
        pack_q5(&v, qh, qs);
    }
}

pub(crate) fn quantize_q5_1_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(24)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        put_f16(b, 2, min);
        let mut v = [0u8; QK];
        for (q, &xv) in v.iter_mut().zip(x) {
            // ggml does not clamp here: the value cannot exceed 31.5 before truncation.
            *q = ((xv - min) * id + 0.5) as u8;
        }
        let (qh, qs) = b[4..].split_at_mut(4);
        pack_q5(&v, qh, qs);
    }
}

/// ggml's `quantize_row_q8_0_ref`: rounds half away from zero (unlike the activation quantizer).
pub(crate) fn quantize_q8_0_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        for (q, &v) in b[2..].iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}
