//! f32 dot products and axpy for float weights (F32, F16, BF16) and attention, scalar and AVX2.

use half::{bf16, f16};

use super::Simd;
use crate::quant::GgmlType;

/// Weight `i` of a float row stored as `ty` (F32, F16 or BF16 little-endian bytes).
#[inline(always)]
fn weight_at(ty: GgmlType, w: &[u8], i: usize) -> f32 {
    match ty {
        GgmlType::F32 => f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]),
        GgmlType::F16 => f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32(),
        _ => bf16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32(),
    }
}

/// Σ_i W[i]·x_r[i] for one float weight row and `R` f32 activation rows, weights converted to f32.
pub(crate) fn dot_float_rows<const R: usize>(
    simd: Simd,
    ty: GgmlType,
    w: &[u8],
    x: [&[f32]; R],
) -> [f32; R] {
    let k = x[0].len();
    assert!(x.iter().all(|r| r.len() == k) && w.len() == k * ty.type_size());
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::Scalar {
        // SAFETY: `simd` is only above Scalar when the CPU has avx2/fma/f16c; lengths were checked above.
        return unsafe { avx2::dot_float_rows(ty, k, w.as_ptr(), x.map(|r| r.as_ptr())) };
    }
    let _ = simd;
    let mut acc = [0.0f32; R];
    for i in 0..k {
        let wi = weight_at(ty, w, i);
        for (a, xr) in acc.iter_mut().zip(&x) {
            *a += wi * xr[i];
        }
    }
    acc
}

/// Σ a[i]·b[i]. Panics if the lengths differ.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32 operands differ in length");
    let bytes = unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), 4 * a.len()) };
    dot_float_rows(Simd::detect(), GgmlType::F32, bytes, [b])[0]
}

/// Σ a[i]·b[i] with `a` in f16. Panics if the lengths differ.
pub fn dot_f16_f32(a: &[f16], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f16_f32 operands differ in length");
    // SAFETY: f16 is a transparent u16, so its slice is 2·len initialised bytes (little-endian on x86).
    let bytes = unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), 2 * a.len()) };
    if cfg!(target_endian = "big") {
        return a.iter().zip(b).map(|(a, b)| a.to_f32() * b).sum();
    }
    dot_float_rows(Simd::detect(), GgmlType::F16, bytes, [b])[0]
}

/// y[i] += a·x[i]. Panics if the lengths differ.
pub fn axpy_f32(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy_f32 operands differ in length");
    #[cfg(target_arch = "x86_64")]
    if Simd::detect() != Simd::Scalar {
        // SAFETY: feature-checked; equal lengths.
        return unsafe { avx2::axpy_f32(y, a, x) };
    }
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// y[i] += a·x[i] with `x` in f16. Panics if the lengths differ.
pub fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
    assert_eq!(y.len(), x.len(), "axpy_f16 operands differ in length");
    #[cfg(target_arch = "x86_64")]
    if Simd::detect() != Simd::Scalar {
        // SAFETY: feature-checked; equal lengths.
        return unsafe { avx2::axpy_f16(y, a, x) };
    }
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{super::avx2::hsum, weight_at, GgmlType};

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8(ty: GgmlType, p: *const u8) -> __m256 {
        match ty {
            GgmlType::F32 => _mm256_loadu_ps(p.cast()),
            GgmlType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            // bf16 is the high half of an f32.
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p.cast()),
            ))),
        }
    }

    /// SAFETY: avx2/fma/f16c present; `w` holds `k` values of `ty`, each `x[r]` `k` f32s.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_float_rows<const R: usize>(
        ty: GgmlType,
        k: usize,
        w: *const u8,
        x: [*const f32; R],
    ) -> [f32; R] {
        let elem = ty.type_size();
        // Two accumulators per row hide FMA latency for the single-row case.
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut i = 0;
        while i + 16 <= k {
            let w0 = load8(ty, w.add(i * elem));
            let w1 = load8(ty, w.add((i + 8) * elem));
            for r in 0..R {
                acc[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[r].add(i)), acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[r].add(i + 8)), acc[r][1]);
            }
            i += 16;
        }
        let mut out = [0.0f32; R];
        let w_tail = std::slice::from_raw_parts(w.add(i * elem), (k - i) * elem);
        for r in 0..R {
            out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
            for j in i..k {
                out[r] += weight_at(ty, w_tail, j - i) * *x[r].add(j);
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f32(y: &mut [f32], a: f32, x: &[f32]) {
        let (n, av) = (y.len(), _mm256_set1_ps(a));
        let mut i = 0;
        while i + 8 <= n {
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                yp,
                _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)),
            );
            i += 8;
        }
        for j in i..n {
            y[j] += a * x[j];
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
        let (n, av) = (y.len(), _mm256_set1_ps(a));
        let mut i = 0;
        while i + 8 <= n {
            let yp = y.as_mut_ptr().add(i);
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i).cast()));
            _mm256_storeu_ps(yp, _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(yp)));
            i += 8;
        }
        for j in i..n {
            y[j] += a * x[j].to_f32();
        }
    }
}
