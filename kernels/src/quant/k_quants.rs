//! The 256-value super-block formats (Q4_K, Q5_K, Q6_K and the Q8_K activations): layouts, dequantization,
//! ggml's reference quantizers (`quantize_row_q*_K_ref`) and the Q8_K activation quantizer.

mod search;

use half::f16;

use super::float::{f16_at, put_f16};
use super::{GgmlType, QuantError, QK_K};
use search::{make_qkx2_quants, make_qx_quants, nearest_int};

/// Q4_K: eight 32-value sub-blocks, each with a 6-bit scale and a 6-bit min (packed in `scales`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    /// Bytes `32*i..32*i + 32` hold sub-block `2i` in low nibbles and `2i + 1` in high nibbles.
    pub qs: [u8; QK_K / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    /// Bit `2i` / `2i + 1` of byte `l` is the fifth bit of value `l` of sub-block `2i` / `2i + 1`.
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: sixteen 16-value sub-blocks with signed 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// Activation block for K-quant dot products; `bsums[i]` is the sum of `qs[16i..16i + 16]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = {
    assert!(size_of::<BlockQ4K>() == 144);
    assert!(size_of::<BlockQ5K>() == 176);
    assert!(size_of::<BlockQ6K>() == 210);
    assert!(size_of::<BlockQ8K>() == 292);
};

/// Unpacks the 6-bit (scale, min) of sub-block `j` from a Q4_K/Q5_K `scales` array.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight (scales, mins) of a Q4_K/Q5_K super-block.
#[inline(always)]
pub(crate) fn scales_mins_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], m[j]) = scale_min_k4(j, q);
    }
    (sc, m)
}

/// Quantizes activations to Q8_K blocks (292 bytes per 256 values) into `dst`, like ggml's
/// `quantize_row_q8_K_ref`: the scale comes from the value of largest magnitude with its sign, `d` is f32.
pub fn quantize_row_q8_k(x: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let (ty, n) = (GgmlType::Q8_K, x.len());
    let want = ty
        .bytes_for(n)
        .ok_or(QuantError::NotBlockAligned { ty, n, block: QK_K })?;
    if dst.len() != want {
        return Err(QuantError::WrongLength {
            ty,
            n,
            got: dst.len(),
            want,
        });
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd_quantizers() {
        // SAFETY: AVX2/FMA/F16C are present; the lengths were checked above.
        unsafe { super::simd::quantize_q8_k(x, dst) };
        return Ok(());
    }
    quantize_row_q8_k_scalar(x, dst);
    Ok(())
}

pub(crate) fn quantize_row_q8_k_scalar(x: &[f32], dst: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK_K).zip(dst.chunks_exact_mut(292)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            yb.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        let (d, rest) = yb.split_at_mut(4);
        let (qs, bsums) = rest.split_at_mut(QK_K);
        for (q, &v) in qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).clamp(-128, 127) as i8 as u8;
        }
        for (s, group) in bsums.chunks_exact_mut(2).zip(qs.chunks_exact(16)) {
            let sum: i16 = group.iter().map(|&q| q as i8 as i16).sum();
            s.copy_from_slice(&sum.to_le_bytes());
        }
        d.copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

pub(crate) fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, m) = scales_mins_k4(&b[4..16]);
        for (i, (q, y)) in b[16..]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (d1, m1) = (d * sc[2 * i] as f32, dmin * m[2 * i] as f32);
            let (d2, m2) = (d * sc[2 * i + 1] as f32, dmin * m[2 * i + 1] as f32);
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub(crate) fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, m) = scales_mins_k4(&b[4..16]);
        let qh = &b[16..48];
        for (i, (q, y)) in b[48..]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (d1, m1) = (d * sc[2 * i] as f32, dmin * m[2 * i] as f32);
            let (d2, m2) = (d * sc[2 * i + 1] as f32, dmin * m[2 * i + 1] as f32);
            for l in 0..32 {
                let h1 = ((qh[l] >> (2 * i)) & 1) << 4;
                let h2 = ((qh[l] >> (2 * i + 1)) & 1) << 4;
                y[l] = d1 * ((q[l] & 0xF) | h1) as f32 - m1;
                y[l + 32] = d2 * ((q[l] >> 4) | h2) as f32 - m2;
            }
        }
    }
}

/// The 256 six-bit values of a Q6_K block, offset by -32, in natural order.
#[inline(always)]
pub(crate) fn q6_k_values(b: &[u8]) -> [i8; QK_K] {
    let mut v = [0i8; QK_K];
    for half in 0..2 {
        let (ql, qh) = (
            &b[64 * half..64 * half + 64],
            &b[128 + 32 * half..160 + 32 * half],
        );
        let v = &mut v[128 * half..128 * half + 128];
        for l in 0..32 {
            v[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            v[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            v[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            v[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    v
}

pub(crate) fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        let q = q6_k_values(b);
        for (j, (y, q)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let ds = d * b[192 + j] as i8 as f32;
            for (o, &v) in y.iter_mut().zip(q) {
                *o = ds * v as f32;
            }
        }
    }
}

/// Packs per-sub-block 6-bit scales and mins into a Q4_K/Q5_K `scales` array.
fn pack_scales_mins_k4(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8]) {
    out.fill(0);
    for j in 0..8 {
        if j < 4 {
            out[j] = ls[j];
            out[j + 4] = lm[j];
        } else {
            out[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            out[j - 4] |= (ls[j] >> 4) << 6;
            out[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Shared by Q4_K and Q5_K (ggml's `quantize_row_q{4,5}_K_ref`): per 32-value sub-block an asymmetric
/// (scale, min) search, then 6-bit super-block quantization of both. Returns the final levels `0..=nmax`.
fn quantize_k4_levels(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    header: &mut [u8],
) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        let l_out = &mut levels[32 * j..32 * j + 32];
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &weights, l_out, rmin, 0.1, nstep);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    put_f16(header, 0, max_scale / 63.0);
    put_f16(header, 2, max_min / 63.0);
    pack_scales_mins_k4(&ls, &lm, &mut header[4..16]);
    let (d_all, dmin_all) = (f16_at(header, 0), f16_at(header, 2));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &header[4..16]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for l in 32 * j..32 * j + 32 {
            levels[l] = nearest_int((x[l] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    levels
}

pub(crate) fn quantize_q4_k_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(144)) {
        let levels = quantize_k4_levels(x, 15, -1.0, 20, &mut b[..16]);
        for (i, q) in b[16..].chunks_exact_mut(32).enumerate() {
            for l in 0..32 {
                q[l] = levels[64 * i + l] | (levels[64 * i + 32 + l] << 4);
            }
        }
    }
}

pub(crate) fn quantize_q5_k_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(176)) {
        let levels = quantize_k4_levels(x, 31, -0.5, 15, &mut b[..16]);
        let (qh, qs) = b[16..].split_at_mut(32);
        qh.fill(0);
        for (i, q) in qs.chunks_exact_mut(32).enumerate() {
            for l in 0..32 {
                let (l1, l2) = (levels[64 * i + l], levels[64 * i + 32 + l]);
                qh[l] |= ((l1 >> 4) << (2 * i)) | ((l2 >> 4) << (2 * i + 1));
                q[l] = (l1 & 0xF) | ((l2 & 0xF) << 4);
            }
        }
    }
}

pub(crate) fn quantize_q6_k_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(210)) {
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for (ib, scale) in scales.iter_mut().enumerate() {
            *scale = make_qx_quants(
                32,
                &x[16 * ib..16 * ib + 16],
                &mut levels[16 * ib..16 * ib + 16],
            );
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = *scale;
            }
        }
        b.fill(0);
        if max_abs_scale < search::GROUP_MAX_EPS {
            continue;
        }
        let iscale = -128.0 / max_scale;
        put_f16(b, 208, 1.0 / iscale);
        for (ib, scale) in scales.iter().enumerate() {
            b[192 + ib] = nearest_int(iscale * scale).min(127) as i8 as u8;
        }
        let d_all = f16_at(b, 208);
        for j in 0..16 {
            let d = d_all * b[192 + j] as i8 as f32;
            if d == 0.0 {
                continue;
            }
            for l in 16 * j..16 * j + 16 {
                levels[l] = (nearest_int(x[l] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        let levels = levels.map(|l| l as u8);
        for half in 0..2 {
            let l = &levels[128 * half..128 * half + 128];
            for i in 0..32 {
                b[64 * half + i] = (l[i] & 0xF) | ((l[i + 64] & 0xF) << 4);
                b[64 * half + i + 32] = (l[i + 32] & 0xF) | ((l[i + 96] & 0xF) << 4);
                b[128 + 32 * half + i] = (l[i] >> 4)
                    | ((l[i + 32] >> 4) << 2)
                    | ((l[i + 64] >> 4) << 4)
                    | ((l[i + 96] >> 4) << 6);
            }
        }
    }
}
