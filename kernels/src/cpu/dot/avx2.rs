//! AVX2 + FMA + F16C kernels. Each dots one weight row against `R` activation rows, decoding every weight
//! block into registers once and reusing it for all `R` rows (the prefill tile). Integer arithmetic is exact,
//! so results differ from the scalar path only by f32 summation order.
//!
//! The `_vnni` variants of the 32-value block kernels replace maddubs+madd by AVX512-VNNI's `vpdpbusd`.
//!
//! Safety contract of every `pub(super)` function: the CPU supports avx2, fma and f16c (and for `_vnni`
//! avx512f/bw/vl/vnni), and the pointers are
//! valid for `nb` blocks of the weight type (for `w`) and of the matching activation type (for each `x[r]`).

use std::arch::asm;
use std::arch::x86_64::*;

use crate::quant::scales_mins_k4;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_at(p: *const u8) -> f32 {
    _mm_cvtss_f32(f16_lane0(p))
}

/// The f16 at `p` as f32 in lane 0 (other lanes zero). In asm because from
/// intrinsics LLVM sees that only lane 0 is used, narrows the load to a `vpinsrw` into whatever register it
/// likes (often an accumulator), and that false dependency chains every block of a dot product onto the
/// previous block's FMA. `vmovd` writes the whole register.
#[inline(always)]
unsafe fn f16_lane0(p: *const u8) -> __m128 {
    let out: __m128;
    // Reads the 2 bytes at `p` only.
    asm!(
        "movzx {t:e}, word ptr [{p}]",
        "vmovd {o}, {t:e}",
        "vcvtph2ps {o}, {o}",
        p = in(reg) p,
        t = out(reg) _,
        o = out(xmm_reg) out,
        options(pure, readonly, nostack, preserves_flags),
    );
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f32_at(p: *const u8) -> f32 {
    p.cast::<f32>().read_unaligned()
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// 16 bytes of packed nibbles → 32 bytes: low nibbles first (values 0..16), then high nibbles (16..32).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p.cast());
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(q), q),
        _mm256_set1_epi8(0x0F),
    )
}

/// 32 bits (little-endian u32 at `p`) → 32 bytes, 0xFF where the bit is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bits_to_bytes(p: *const u8) -> __m256i {
    let word = p.cast::<u32>().read_unaligned() as i32;
    // Byte i takes source byte i / 8, then ORing every bit except bit i % 8 leaves all-ones iff that bit is set.
    let spread = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(word), spread);
    let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
}

/// Σ of unsigned × signed byte products, four per i32 lane (no i16 saturation: products here stay < 2^14).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// The two f16 values at `p` (a block's leading scale pair, or a scale and whatever follows) as f32 lanes 0, 1.
/// A full 32-bit load keeps the conversion free of false dependencies on older registers.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16x2(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()))
}

#[allow(clippy::needless_range_loop)]
/// Symmetric 32-value weight blocks (decoded to signed bytes) × Q8_0 activations.
///
/// Always inlined (no target features of its own) so each entry point compiles it with its own feature set and
/// byte-product instruction `mul` (maddubs+madd on AVX2, `vpdpbusd` with AVX512-VNNI).
#[inline(always)]
unsafe fn dot_signed<const R: usize>(
    nb: usize,
    w: *const u8,
    w_block: usize,
    x: [*const u8; R],
    decode: impl Fn(*const u8) -> __m256i,
    mul: impl Fn(__m256i, __m256i) -> __m256i,
) -> [f32; R] {
    // One accumulator, blocks in order: the float sum then rounds exactly as llama.cpp's AVX2 kernel does
    // (two interleaved accumulators hide FMA latency but change the low bits of every logit).
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        {
            let wb = w.add(b * w_block);
            let q = decode(wb);
            let (abs_q, dw) = (_mm256_abs_epi8(q), f16_lane0(wb));
            for r in 0..R {
                let xb = x[r].add(b * 34);
                // |w|·(x·sign(w)) = w·x with an unsigned first operand, as maddubs needs.
                let p = mul(abs_q, _mm256_sign_epi8(load(xb.add(2)), q));
                let d = _mm256_broadcastss_ps(_mm_mul_ss(dw, f16_lane0(xb)));
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r]);
            }
        }
    }
    let mut out = [0.0; R];
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
    out
}

#[allow(clippy::needless_range_loop)]
/// Weight blocks `d·q + m` (decoded to unsigned bytes) × Q8_1 activations.
///
/// Always inlined (no target features of its own) so each entry point compiles it with its own feature set and
/// byte-product instruction `mul` (maddubs+madd on AVX2, `vpdpbusd` with AVX512-VNNI).
#[inline(always)]
unsafe fn dot_unsigned<const R: usize>(
    nb: usize,
    w: *const u8,
    w_block: usize,
    x: [*const u8; R],
    decode: impl Fn(*const u8) -> __m256i,
    mul: impl Fn(__m256i, __m256i) -> __m256i,
) -> [f32; R] {
    // One accumulator, blocks in order, as in `dot_signed`. Lane 1 of `mins` accumulates m_w·s_x.
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [_mm_setzero_ps(); R];
    for b in 0..nb {
        {
            let wb = w.add(b * w_block);
            let q = decode(wb);
            let dm = f16x2(wb);
            for r in 0..R {
                let xb = x[r].add(b * 36);
                let p = mul(q, load(xb.add(4)));
                // [d_w·d_x, m_w·s_x]
                let scales = _mm_mul_ps(dm, f16x2(xb));
                acc[r] =
                    _mm256_fmadd_ps(_mm256_broadcastss_ps(scales), _mm256_cvtepi32_ps(p), acc[r]);
                mins[r] = _mm_add_ps(mins[r], scales);
            }
        }
    }
    let mut out = [0.0; R];
    for r in 0..R {
        out[r] = hsum(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[r]));
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_0<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_signed(
        nb,
        w,
        18,
        x,
        |b| _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8)),
        |u, s| dot_u8_i8(u, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q4_0_vnni<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_signed(
        nb,
        w,
        18,
        x,
        |b| _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8)),
        |u, s| _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_0<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    // q - 16 = nibble when the fifth bit is set, nibble | 0xF0 (as i8) when it is clear.
    dot_signed(
        nb,
        w,
        22,
        x,
        |b| {
            _mm256_or_si256(
                nibbles(b.add(6)),
                _mm256_andnot_si256(bits_to_bytes(b.add(2)), _mm256_set1_epi8(-16)),
            )
        },
        |u, s| dot_u8_i8(u, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q5_0_vnni<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_signed(
        nb,
        w,
        22,
        x,
        |b| {
            _mm256_or_si256(
                nibbles(b.add(6)),
                _mm256_andnot_si256(bits_to_bytes(b.add(2)), _mm256_set1_epi8(-16)),
            )
        },
        |u, s| _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_signed(nb, w, 34, x, |b| load(b.add(2)), |u, s| dot_u8_i8(u, s))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q8_0_vnni<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_signed(
        nb,
        w,
        34,
        x,
        |b| load(b.add(2)),
        |u, s| _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_1<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_unsigned(nb, w, 20, x, |b| nibbles(b.add(4)), |u, s| dot_u8_i8(u, s))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q4_1_vnni<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_unsigned(
        nb,
        w,
        20,
        x,
        |b| nibbles(b.add(4)),
        |u, s| _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_1<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_unsigned(
        nb,
        w,
        24,
        x,
        |b| {
            _mm256_or_si256(
                nibbles(b.add(8)),
                _mm256_and_si256(bits_to_bytes(b.add(4)), _mm256_set1_epi8(0x10)),
            )
        },
        |u, s| dot_u8_i8(u, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q5_1_vnni<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_unsigned(
        nb,
        w,
        24,
        x,
        |b| {
            _mm256_or_si256(
                nibbles(b.add(8)),
                _mm256_and_si256(bits_to_bytes(b.add(4)), _mm256_set1_epi8(0x10)),
            )
        },
        |u, s| _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
    )
}

/// Offsets inside a Q8_K block.
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;
const Q8K_SIZE: usize = 292;

/// `acc + madd(p, s)` (AVX2) or the same by AVX512-VNNI's `vpdpwssd`: the scaled sums of the K-quant kernels.
#[inline(always)]
unsafe fn madd_acc_avx2(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
}

/// In asm: from the intrinsic LLVM emits `vpmaddwd` + `vpaddd` instead (twice the instructions here).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn madd_acc_vnni(mut acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    asm!(
        "vpdpwssd {acc}, {p}, {s}",
        acc = inout(ymm_reg) acc,
        p = in(ymm_reg) p,
        s = in(ymm_reg) s,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// A Q4_K/Q5_K super-block decoded for the dot kernels: sub-blocks `2i` and `2i + 1` as unsigned bytes, the
/// 6-bit scales, the mins paired for Q8_K's 16-value `bsums`, and the f32 super-block scales. The batched path
/// stores these once per weight row ([`prepare_q4_k`]); the single-row path decodes them into registers.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct K4Block {
    levels: [[__m256i; 2]; 4],
    mins: __m256i,
    scales: [i16; 8],
    d: f32,
    dmin: f32,
}

/// (No closures inside: they would not inherit the callers' target features, and the intrinsics in them
/// would become calls.)
#[inline(always)]
unsafe fn decode_k4(
    wb: *const u8,
    levels: impl Fn(*const u8, usize) -> (__m256i, __m256i),
) -> K4Block {
    let (sc, m) = scales_mins_k4(std::slice::from_raw_parts(wb.add(4), 12));
    // bsums[i] covers values 16i..16i + 16, i.e. sub-block i / 2.
    let mut m_pairs = [0u8; 16];
    let mut scales = [0i16; 8];
    let mut lv = [[_mm256_setzero_si256(); 2]; 4];
    for i in 0..8 {
        m_pairs[2 * i] = m[i];
        m_pairs[2 * i + 1] = m[i];
        scales[i] = sc[i] as i16;
    }
    for (i, l) in lv.iter_mut().enumerate() {
        let (lo, hi) = levels(wb, i);
        *l = [lo, hi];
    }
    K4Block {
        levels: lv,
        mins: _mm256_cvtepu8_epi16(_mm_loadu_si128(m_pairs.as_ptr().cast())),
        scales,
        d: f16_at(wb),
        dmin: f16_at(wb.add(2)),
    }
}

/// Adds super-block `b` (decoded in `k`) × the activation rows `x` to `acc`.
#[inline(always)]
unsafe fn apply_k4<const R: usize>(
    k: &K4Block,
    b: usize,
    x: &[*const u8; R],
    acc: &mut [__m256; R],
    madd_acc: &impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) {
    let mut sumi = [_mm256_setzero_si256(); R];
    for i in 0..4 {
        let [lo, hi] = k.levels[i];
        let (s_lo, s_hi) = (
            _mm256_set1_epi16(k.scales[2 * i]),
            _mm256_set1_epi16(k.scales[2 * i + 1]),
        );
        for r in 0..R {
            let xq = x[r].add(b * Q8K_SIZE + Q8K_QS + 64 * i);
            let p_lo = _mm256_maddubs_epi16(lo, load(xq));
            let p_hi = _mm256_maddubs_epi16(hi, load(xq.add(32)));
            sumi[r] = madd_acc(madd_acc(sumi[r], p_lo, s_lo), p_hi, s_hi);
        }
    }
    for r in 0..R {
        let xb = x[r].add(b * Q8K_SIZE);
        let dy = f32_at(xb);
        let min_sums = _mm256_madd_epi16(load(xb.add(Q8K_BSUMS)), k.mins);
        acc[r] = _mm256_fmadd_ps(
            _mm256_set1_ps(k.d * dy),
            _mm256_cvtepi32_ps(sumi[r]),
            acc[r],
        );
        acc[r] = _mm256_fnmadd_ps(
            _mm256_set1_ps(k.dmin * dy),
            _mm256_cvtepi32_ps(min_sums),
            acc[r],
        );
    }
}

#[inline(always)]
unsafe fn hsum_rows<const R: usize>(acc: &[__m256; R]) -> [f32; R] {
    let mut out = [0.0; R];
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
    out
}

/// Q4_K/Q5_K × Q8_K. `levels(wb, i)` yields sub-blocks `2i` and `2i + 1` of a super-block as unsigned bytes.
///
/// Always inlined (no target features of its own) so each entry point compiles it with its own feature set
/// and `madd_acc` (integer sums are exact either way, so both give the same bits).
#[inline(always)]
unsafe fn dot_k4<const R: usize>(
    nb: usize,
    w: *const u8,
    w_block: usize,
    x: [*const u8; R],
    levels: impl Fn(*const u8, usize) -> (__m256i, __m256i),
    madd_acc: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let k = decode_k4(w.add(b * w_block), &levels);
        apply_k4(&k, b, &x, &mut acc, &madd_acc);
    }
    hsum_rows(&acc)
}

/// [`dot_k4`] over super-blocks decoded beforehand by [`prepare_q4_k`] / [`prepare_q5_k`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_k4_prepared_vnni<const R: usize>(
    nb: usize,
    prep: *const K4Block,
    x: [*const u8; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        apply_k4(&*prep.add(b), b, &x, &mut acc, &|a, p, s| {
            madd_acc_vnni(a, p, s)
        });
    }
    hsum_rows(&acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_k4_prepared<const R: usize>(
    nb: usize,
    prep: *const K4Block,
    x: [*const u8; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        apply_k4(&*prep.add(b), b, &x, &mut acc, &|a, p, s| {
            madd_acc_avx2(a, p, s)
        });
    }
    hsum_rows(&acc)
}

/// Decodes the `nb` super-blocks of one Q4_K row into `out`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn prepare_q4_k(nb: usize, w: *const u8, out: *mut K4Block) {
    for b in 0..nb {
        out.add(b)
            .write(decode_k4(w.add(b * 144), |wb, i| levels_q4_k(wb, i)));
    }
}

/// Decodes the `nb` super-blocks of one Q5_K row into `out`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn prepare_q5_k(nb: usize, w: *const u8, out: *mut K4Block) {
    for b in 0..nb {
        out.add(b)
            .write(decode_k4(w.add(b * 176), |wb, i| levels_q5_k(wb, i)));
    }
}

/// Sub-blocks `2i`, `2i + 1` of a Q4_K super-block.
#[inline(always)]
unsafe fn levels_q4_k(wb: *const u8, i: usize) -> (__m256i, __m256i) {
    let q = load(wb.add(16 + 32 * i));
    let mask = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(q, mask),
        _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask),
    )
}

/// Sub-blocks `2i`, `2i + 1` of a Q5_K super-block.
#[inline(always)]
unsafe fn levels_q5_k(wb: *const u8, i: usize) -> (__m256i, __m256i) {
    let q = load(wb.add(48 + 32 * i));
    let qh = load(wb.add(16));
    let (mask, one) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
    // Fifth bits of sub-blocks 2i and 2i + 1 are bits 2i and 2i + 1 of each qh byte.
    let h_lo = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * i as i32)), one);
    let h_hi = _mm256_and_si256(
        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * i as i32 + 1)),
        one,
    );
    (
        _mm256_or_si256(_mm256_and_si256(q, mask), _mm256_slli_epi16::<4>(h_lo)),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask),
            _mm256_slli_epi16::<4>(h_hi),
        ),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_k4(
        nb,
        w,
        144,
        x,
        |wb, i| levels_q4_k(wb, i),
        |a, p, s| madd_acc_avx2(a, p, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q4_k_vnni<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_k4(
        nb,
        w,
        144,
        x,
        |wb, i| levels_q4_k(wb, i),
        |a, p, s| madd_acc_vnni(a, p, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_k<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_k4(
        nb,
        w,
        176,
        x,
        |wb, i| levels_q5_k(wb, i),
        |a, p, s| madd_acc_avx2(a, p, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q5_k_vnni<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_k4(
        nb,
        w,
        176,
        x,
        |wb, i| levels_q5_k(wb, i),
        |a, p, s| madd_acc_vnni(a, p, s),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_k6(nb, w, x, |a, p, s| madd_acc_avx2(a, p, s))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q6_k_vnni<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
) -> [f32; R] {
    dot_k6(nb, w, x, |a, p, s| madd_acc_vnni(a, p, s))
}

/// A Q6_K super-block decoded for the dot kernels: the unsigned levels (0..63) of each 32-value chunk, the
/// scale pairs of each chunk (one per 16 values, one per 128-bit half), the 16 scales as i16 for the -32
/// offset, and the f32 scale. Stored once per weight row by [`prepare_q6_k`] for the batched path.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct K6Block {
    v: [[__m256i; 4]; 2],
    s: [[__m256i; 4]; 2],
    scales16: __m256i,
    d: f32,
}

/// (No closures inside, as in `decode_k4`.)
#[inline(always)]
unsafe fn decode_k6(wb: *const u8) -> K6Block {
    let (low4, low2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    let sc = wb.add(192).cast::<i8>();
    let mut v = [[_mm256_setzero_si256(); 4]; 2];
    let mut s = [[_mm256_setzero_si256(); 4]; 2];
    for h in 0..2 {
        let (ql0, ql1, qh) = (
            load(wb.add(64 * h)),
            load(wb.add(64 * h + 32)),
            load(wb.add(128 + 32 * h)),
        );
        // Unsigned levels 0..63 (the -32 offset is applied through the bsums), 32 values each.
        v[h] = [
            _mm256_or_si256(
                _mm256_and_si256(ql0, low4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(qh, low2)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, low4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), low2)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), low2)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), low2)),
            ),
        ];
        for (k, s) in s[h].iter_mut().enumerate() {
            let (a, b) = (
                *sc.add(8 * h + 2 * k) as i16,
                *sc.add(8 * h + 2 * k + 1) as i16,
            );
            *s = _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a));
        }
    }
    K6Block {
        v,
        s,
        scales16: _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.cast())),
        d: f16_at(wb.add(208)),
    }
}

#[inline(always)]
unsafe fn apply_k6<const R: usize>(
    k: &K6Block,
    b: usize,
    x: &[*const u8; R],
    acc: &mut [__m256; R],
    madd_acc: &impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) {
    let mut sumi = [_mm256_setzero_si256(); R];
    for h in 0..2 {
        for r in 0..R {
            let xq = x[r].add(b * Q8K_SIZE + Q8K_QS + 128 * h);
            for j in 0..4 {
                let p = _mm256_maddubs_epi16(k.v[h][j], load(xq.add(32 * j)));
                sumi[r] = madd_acc(sumi[r], p, k.s[h][j]);
            }
        }
    }
    for r in 0..R {
        let xb = x[r].add(b * Q8K_SIZE);
        // Σ sc·(q - 32)·x = Σ sc·q·x - 32·Σ sc·bsum.
        let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(load(xb.add(Q8K_BSUMS)), k.scales16));
        let total = _mm256_sub_epi32(sumi[r], offset);
        acc[r] = _mm256_fmadd_ps(
            _mm256_set1_ps(k.d * f32_at(xb)),
            _mm256_cvtepi32_ps(total),
            acc[r],
        );
    }
}

/// Q6_K × Q8_K, in ggml's AVX2 order (always inlined, as `dot_k4`).
#[inline(always)]
unsafe fn dot_k6<const R: usize>(
    nb: usize,
    w: *const u8,
    x: [*const u8; R],
    madd_acc: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let k = decode_k6(w.add(b * 210));
        apply_k6(&k, b, &x, &mut acc, &madd_acc);
    }
    hsum_rows(&acc)
}

/// [`dot_k6`] over super-blocks decoded beforehand by [`prepare_q6_k`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_k6_prepared_vnni<const R: usize>(
    nb: usize,
    prep: *const K6Block,
    x: [*const u8; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        apply_k6(&*prep.add(b), b, &x, &mut acc, &|a, p, s| {
            madd_acc_vnni(a, p, s)
        });
    }
    hsum_rows(&acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_k6_prepared<const R: usize>(
    nb: usize,
    prep: *const K6Block,
    x: [*const u8; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        apply_k6(&*prep.add(b), b, &x, &mut acc, &|a, p, s| {
            madd_acc_avx2(a, p, s)
        });
    }
    hsum_rows(&acc)
}

/// Decodes the `nb` super-blocks of one Q6_K row into `out`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn prepare_q6_k(nb: usize, w: *const u8, out: *mut K6Block) {
    for b in 0..nb {
        out.add(b).write(decode_k6(w.add(b * 210)));
    }
}
