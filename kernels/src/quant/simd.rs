//! AVX2 versions of the activation quantizers (Q8_0, Q8_1, Q8_K). They give the same bytes as the scalar
//! ones for finite inputs: the same scale formulas in the same f32 operations, and `vroundps` to nearest
//! even where the scalar code calls `round_ties_even` (ggml's AVX quantizer and `nearest_int` round the same
//! way); `vpackssdw`/`vpacksswb` saturate where the scalar code clamps.
//!
//! Safety contract of every function here: the CPU supports AVX2, FMA and F16C, and the slices have the
//! lengths the scalar callers checked (whole blocks).

use std::arch::x86_64::*;

use super::float::put_f16;
use super::QK_K;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn abs(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
}

/// `round_half_even(v * id)` of 32 floats as i32 (four registers of eight).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn round_scaled(x: *const f32, id: __m256) -> [__m256i; 4] {
    std::array::from_fn(|j| {
        let v = _mm256_mul_ps(_mm256_loadu_ps(x.add(8 * j)), id);
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(v))
    })
}

/// Packs 32 i32 (saturating to i8, which for these values is the scalar clamp) into bytes at `dst`, in order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store_i8(i: &[__m256i; 4], dst: *mut u8) {
    // packs works within 128-bit halves: the result holds dwords 0,4,1,5,2,6,3,7 of the wanted order.
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(i[0], i[1]),
        _mm256_packs_epi32(i[2], i[3]),
    );
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(dst.cast(), p);
}

/// Q8_0 (`SUM = false`, 34-byte blocks) or Q8_1 (`SUM = true`, 36-byte blocks): `d = amax / 127`,
/// `q = round_half_even(x * (127 / amax))`, and for Q8_1 `s = d * Σq`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8<const SUM: bool>(x: &[f32], dst: &mut [u8]) {
    let bs = if SUM { 36 } else { 34 };
    for (xb, yb) in x.chunks_exact(32).zip(dst.chunks_exact_mut(bs)) {
        let p = xb.as_ptr();
        let m = (0..4).fold(_mm256_setzero_ps(), |m, j| {
            _mm256_max_ps(m, abs(_mm256_loadu_ps(p.add(8 * j))))
        });
        let amax = hmax(m);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let q = round_scaled(p, _mm256_set1_ps(id));
        store_i8(&q, yb.as_mut_ptr().add(bs - 32));
        put_f16(yb, 0, d);
        if SUM {
            let sum = hsum_i32(_mm256_add_epi32(
                _mm256_add_epi32(q[0], q[1]),
                _mm256_add_epi32(q[2], q[3]),
            ));
            put_f16(yb, 2, d * sum as f32);
        }
    }
}

/// Q8_K (292-byte blocks of 256): the scale follows the value of largest magnitude with its sign (the first
/// one on ties), `q = round_half_even(x * (-127 / max))`, `d = 1 / iscale`, and the sums of each 16 values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_k(x: &[f32], dst: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK_K).zip(dst.chunks_exact_mut(292)) {
        let p = xb.as_ptr();
        let m = (0..QK_K / 8).fold(_mm256_setzero_ps(), |m, j| {
            _mm256_max_ps(m, abs(_mm256_loadu_ps(p.add(8 * j))))
        });
        let amax = hmax(m);
        if amax == 0.0 {
            yb.fill(0);
            continue;
        }
        let target = _mm256_set1_ps(amax);
        let first = (0..QK_K / 8)
            .find_map(|j| {
                let eq = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                    abs(_mm256_loadu_ps(p.add(8 * j))),
                    target,
                ));
                (eq != 0).then(|| 8 * j + eq.trailing_zeros() as usize)
            })
            .expect("amax is one of the values");
        let iscale = -127.0 / xb[first];
        let id = _mm256_set1_ps(iscale);
        let out = yb.as_mut_ptr();
        for g in 0..QK_K / 32 {
            let q = round_scaled(p.add(32 * g), id);
            store_i8(&q, out.add(4 + 32 * g));
            // Sums of values 32g..32g + 16 and 32g + 16..32g + 32 (in range for i16: |q| ≤ 128).
            let lo = hsum_i32(_mm256_add_epi32(q[0], q[1])) as i16;
            let hi = hsum_i32(_mm256_add_epi32(q[2], q[3])) as i16;
            out.add(260 + 4 * g)
                .cast::<i16>()
                .write_unaligned(lo.to_le());
            out.add(262 + 4 * g)
                .cast::<i16>()
                .write_unaligned(hi.to_le());
        }
        yb[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::k_quants::quantize_row_q8_k_scalar;
    use super::super::legacy::{quantize_row_q8_0_scalar, quantize_row_q8_1_scalar};
    use super::*;

    /// Rows that exercise the rounding and scale corner cases, then random rows of many magnitudes.
    fn rows() -> Vec<Vec<f32>> {
        let mut rows = vec![];
        // Scale exactly 1 (amax 127): every .5 is a tie that must go to even, both signs.
        let mut halves: Vec<f32> = (0..256).map(|i| (i % 254) as f32 - 126.5).collect();
        halves[0] = 127.0;
        halves[32] = -127.0;
        rows.push(halves);
        rows.push(vec![0.0; 256]);
        // A zero block among nonzero ones, negative zeros, and a max tie of opposite signs (first wins).
        let mut mixed: Vec<f32> = (0..256)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 7.0)
            .collect();
        mixed[..32].fill(0.0);
        mixed[40] = -0.0;
        mixed[100] = -20.0;
        mixed[7] = 20.0;
        rows.push(mixed);
        let mut s = 0x9E3779B97F4A7C15u64;
        for r in 0..200 {
            let scale = 10f32.powi(r % 13 - 6);
            rows.push(
                (0..256)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                        // Some exact small integers make ties likely after scaling.
                        if s.is_multiple_of(7) {
                            (v * 8.0).round() * scale
                        } else {
                            v * scale
                        }
                    })
                    .collect(),
            );
        }
        rows
    }

    #[test]
    fn simd_quantizers_match_scalar_bytes() {
        if !crate::cpu::dot::Simd::Avx2.is_supported() {
            return;
        }
        for x in rows() {
            let (mut a, mut b) = (vec![0u8; 8 * 34], vec![0u8; 8 * 34]);
            quantize_row_q8_0_scalar(&x, &mut a);
            unsafe { quantize_q8::<false>(&x, &mut b) };
            assert_eq!(a, b, "Q8_0 {x:?}");
            let (mut a, mut b) = (vec![0u8; 8 * 36], vec![0u8; 8 * 36]);
            quantize_row_q8_1_scalar(&x, &mut a);
            unsafe { quantize_q8::<true>(&x, &mut b) };
            assert_eq!(a, b, "Q8_1 {x:?}");
            let (mut a, mut b) = (vec![0u8; 292], vec![0u8; 292]);
            quantize_row_q8_k_scalar(&x, &mut a);
            unsafe { quantize_q8_k(&x, &mut b) };
            assert_eq!(a, b, "Q8_K {x:?}");
        }
    }
}
