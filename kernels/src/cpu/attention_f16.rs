//! The three f16 primitives of flash attention over an f16 KV cache, with ggml's exact rounding:
//! - `kq_dot`: k·q with products fused into 16-lane accumulators in the order of ggml's 512-bit
//!   `ggml_vec_dot_f16` (four accumulators per 64 values, folded 0+2 / 1+3, then a lane tree);
//! - `mad`: acc ← f16(fma(v, w, acc)) per element (`ggml_vec_mad_f16`);
//! - `scale`: acc ← f16(acc · s) (`ggml_vec_scale_f16`).
//!
//! The AVX2 versions do the same per-lane operations (a 16-lane accumulator is two 8-lane registers),
//! so both paths give identical bits; the scalar ones are the reference and the fallback.

use super::dot::Simd;
use half::f16;

pub(crate) fn kq_dot(k: &[f16], q: &[f32]) -> f32 {
    debug_assert_eq!(k.len(), q.len());
    #[cfg(target_arch = "x86_64")]
    if Simd::detect() >= Simd::Avx2 {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `Simd::detect`).
        return unsafe { avx2::kq_dot(k, q) };
    }
    scalar::kq_dot(k, q)
}

pub(crate) fn mad(acc: &mut [f16], v: &[f16], w: f32) {
    debug_assert_eq!(acc.len(), v.len());
    #[cfg(target_arch = "x86_64")]
    if Simd::detect() >= Simd::Avx2 {
        // SAFETY: as above.
        return unsafe { avx2::mad(acc, v, w) };
    }
    scalar::mad(acc, v, w)
}

pub(crate) fn scale(acc: &mut [f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if Simd::detect() >= Simd::Avx2 {
        // SAFETY: as above.
        return unsafe { avx2::scale(acc, s) };
    }
    scalar::scale(acc, s)
}

/// Folds the 4 × 16 accumulators the way ggml reduces them, then adds the tail (< 64 values) in f64.
fn reduce(acc: &[[f32; 16]; 4], k_tail: &[f16], q_tail: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for (l, lane) in lanes.iter_mut().enumerate() {
        *lane = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let mut a8 = [0f32; 8];
    for (i, a) in a8.iter_mut().enumerate() {
        *a = lanes[i] + lanes[i + 8];
    }
    let mut a4 = [0f32; 4];
    for (i, a) in a4.iter_mut().enumerate() {
        *a = a8[i] + a8[i + 4];
    }
    let mut sum = ((a4[0] + a4[2]) + (a4[1] + a4[3])) as f64;
    for (k, q) in k_tail.iter().zip(q_tail) {
        sum += (k.to_f32() * q) as f64;
    }
    sum as f32
}

pub(crate) mod scalar {
    use super::*;

    pub fn kq_dot(k: &[f16], q: &[f32]) -> f32 {
        let body = k.len() - k.len() % 64;
        let mut acc = [[0f32; 16]; 4];
        for c in (0..body).step_by(64) {
            for (a, accum) in acc.iter_mut().enumerate() {
                for (l, v) in accum.iter_mut().enumerate() {
                    let i = c + 16 * a + l;
                    *v = k[i].to_f32().mul_add(q[i], *v);
                }
            }
        }
        reduce(&acc, &k[body..], &q[body..])
    }

    pub fn mad(acc: &mut [f16], v: &[f16], w: f32) {
        for (a, x) in acc.iter_mut().zip(v) {
            *a = f16::from_f32(x.to_f32().mul_add(w, a.to_f32()));
        }
    }

    pub fn scale(acc: &mut [f16], s: f32) {
        for a in acc.iter_mut() {
            *a = f16::from_f32(a.to_f32() * s);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store8(p: *mut f16, v: __m256) {
        _mm_storeu_si128(
            p as *mut __m128i,
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
        );
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn kq_dot(k: &[f16], q: &[f32]) -> f32 {
        let body = k.len() - k.len() % 64;
        // acc[a][h]: lanes 8h..8h+8 of ggml's 16-lane accumulator a.
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let (kp, qp) = (k.as_ptr(), q.as_ptr());
        for c in (0..body).step_by(64) {
            for (a, pair) in acc.iter_mut().enumerate() {
                for (h, reg) in pair.iter_mut().enumerate() {
                    let i = c + 16 * a + 8 * h;
                    *reg = _mm256_fmadd_ps(load8(kp.add(i)), _mm256_loadu_ps(qp.add(i)), *reg);
                }
            }
        }
        // `reduce`'s folds in registers: lanes (0+2)+(1+3), then 16 → 8 → 4 lanes, then (0+2)+(1+3).
        let half = |h: usize| {
            _mm256_add_ps(
                _mm256_add_ps(acc[0][h], acc[2][h]),
                _mm256_add_ps(acc[1][h], acc[3][h]),
            )
        };
        let a8 = _mm256_add_ps(half(0), half(1));
        let a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps::<1>(a8));
        let a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(a2, _mm_movehdup_ps(a2))) as f64;
        for (k, q) in k[body..].iter().zip(&q[body..]) {
            sum += (k.to_f32() * q) as f64;
        }
        sum as f32
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad(acc: &mut [f16], v: &[f16], w: f32) {
        let n = acc.len() - acc.len() % 8;
        let wv = _mm256_set1_ps(w);
        let (ap, vp) = (acc.as_mut_ptr(), v.as_ptr());
        for i in (0..n).step_by(8) {
            store8(
                ap.add(i),
                _mm256_fmadd_ps(load8(vp.add(i)), wv, load8(ap.add(i))),
            );
        }
        scalar::mad(&mut acc[n..], &v[n..], w);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale(acc: &mut [f16], s: f32) {
        let n = acc.len() - acc.len() % 8;
        let sv = _mm256_set1_ps(s);
        let ap = acc.as_mut_ptr();
        for i in (0..n).step_by(8) {
            store8(ap.add(i), _mm256_mul_ps(load8(ap.add(i)), sv));
        }
        scalar::scale(&mut acc[n..], s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> (Vec<f16>, Vec<f32>) {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        };
        let k = (0..n).map(|_| f16::from_f32(next())).collect();
        let q = (0..n).map(|_| f16::from_f32(next()).to_f32()).collect();
        (k, q)
    }

    #[test]
    fn simd_paths_are_bit_identical_to_the_reference() {
        for n in [32, 64, 100, 128, 256] {
            let (k, q) = data(n, n as u32);
            assert_eq!(kq_dot(&k, &q).to_bits(), scalar::kq_dot(&k, &q).to_bits());
            let exact: f64 = k
                .iter()
                .zip(&q)
                .map(|(a, b)| a.to_f32() as f64 * *b as f64)
                .sum();
            assert!((kq_dot(&k, &q) as f64 - exact).abs() < 1e-4 * n as f64);
            let (mut a1, _) = data(n, 7);
            let (v, _) = data(n, 9);
            let mut a2 = a1.clone();
            mad(&mut a1, &v, 0.37);
            scalar::mad(&mut a2, &v, 0.37);
            assert_eq!(a1, a2);
            scale(&mut a1, 0.61);
            scalar::scale(&mut a2, 0.61);
            assert_eq!(a1, a2);
        }
    }
}
