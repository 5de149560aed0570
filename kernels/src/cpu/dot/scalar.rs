//! Portable dot products of one weight row with one activation row, following ggml's generic kernels: integer
//! sums per block, scaled by the product of the block scales. Always compiled; the reference for SIMD paths.

use crate::quant::{f16_at, q5_values, q6_k_values, scales_mins_k4, GgmlType, QK_K};

/// Σ w·x for one weight row `w` of type `ty` and its activation row `x` (Q8_0, Q8_1 or Q8_K blocks).
pub(crate) fn dot_quant(ty: GgmlType, w: &[u8], x: &[u8]) -> f32 {
    match ty {
        GgmlType::Q4_0 => dot_legacy(w, 18, x, 34, |b| nibbles(&b[2..]).map(|q| q as i32 - 8)),
        GgmlType::Q5_0 => dot_legacy(w, 22, x, 34, |b| {
            q5_values(&b[2..6], &b[6..]).map(|q| q as i32 - 16)
        }),
        GgmlType::Q8_0 => dot_legacy(w, 34, x, 34, |b| {
            std::array::from_fn(|j| b[2 + j] as i8 as i32)
        }),
        GgmlType::Q4_1 => dot_with_min(w, 20, x, |b| nibbles(&b[4..])),
        GgmlType::Q5_1 => dot_with_min(w, 24, x, |b| q5_values(&b[4..8], &b[8..])),
        GgmlType::Q4_K => dot_q4_k(w, x),
        GgmlType::Q5_K => dot_q5_k(w, x),
        GgmlType::Q6_K => dot_q6_k(w, x),
        _ => unreachable!("{ty} has no quantized dot product"),
    }
}

fn nibbles(qs: &[u8]) -> [u8; 32] {
    std::array::from_fn(|j| if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 })
}

fn q8_values(block: &[u8]) -> impl Iterator<Item = i32> + '_ {
    block.iter().map(|&q| q as i8 as i32)
}

/// Symmetric weights × Q8_0: Σ_blocks d_w·d_x·Σ q_w·q_x.
fn dot_legacy(
    w: &[u8],
    w_block: usize,
    x: &[u8],
    x_block: usize,
    values: impl Fn(&[u8]) -> [i32; 32],
) -> f32 {
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(w_block).zip(x.chunks_exact(x_block)) {
        let sumi: i32 = values(wb)
            .iter()
            .zip(q8_values(&xb[2..]))
            .map(|(a, b)| a * b)
            .sum();
        sum += sumi as f32 * (f16_at(wb, 0) * f16_at(xb, 0));
    }
    sum
}

/// Weights `d·q + m` × Q8_1: Σ_blocks d_w·d_x·Σ q_w·q_x + m_w·s_x (with `s_x = d_x·Σ q_x`).
fn dot_with_min(w: &[u8], w_block: usize, x: &[u8], values: impl Fn(&[u8]) -> [u8; 32]) -> f32 {
    let (mut sum, mut sum_min) = (0.0f32, 0.0f32);
    for (wb, xb) in w.chunks_exact(w_block).zip(x.chunks_exact(36)) {
        let sumi: i32 = values(wb)
            .iter()
            .zip(q8_values(&xb[4..]))
            .map(|(&a, b)| a as i32 * b)
            .sum();
        sum += sumi as f32 * (f16_at(wb, 0) * f16_at(xb, 0));
        sum_min += f16_at(wb, 2) * f16_at(xb, 2);
    }
    sum + sum_min
}

fn q8k_d(xb: &[u8]) -> f32 {
    f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]])
}

fn q8k_bsum(xb: &[u8], i: usize) -> i32 {
    i16::from_le_bytes([xb[260 + 2 * i], xb[261 + 2 * i]]) as i32
}

/// Q4_K/Q5_K × Q8_K given each super-block's 256 levels: d·Σ_j sc_j·Σ q·x − dmin·Σ_j m_j·Σ x.
fn dot_k4(w: &[u8], w_block: usize, x: &[u8], levels: impl Fn(&[u8]) -> [u8; QK_K]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(w_block).zip(x.chunks_exact(292)) {
        let (sc, m) = scales_mins_k4(&wb[4..16]);
        let q = levels(wb);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for j in 0..8 {
            let s: i32 = q[32 * j..32 * j + 32]
                .iter()
                .zip(q8_values(&xb[4 + 32 * j..36 + 32 * j]))
                .map(|(&a, b)| a as i32 * b)
                .sum();
            sumi += sc[j] as i32 * s;
            summ += m[j] as i32 * (q8k_bsum(xb, 2 * j) + q8k_bsum(xb, 2 * j + 1));
        }
        let dy = q8k_d(xb);
        sum += f16_at(wb, 0) * dy * sumi as f32 - f16_at(wb, 2) * dy * summ as f32;
    }
    sum
}

fn dot_q4_k(w: &[u8], x: &[u8]) -> f32 {
    dot_k4(w, 144, x, |b| {
        let mut q = [0u8; QK_K];
        for (i, qs) in b[16..144].chunks_exact(32).enumerate() {
            for l in 0..32 {
                q[64 * i + l] = qs[l] & 0xF;
                q[64 * i + 32 + l] = qs[l] >> 4;
            }
        }
        q
    })
}

fn dot_q5_k(w: &[u8], x: &[u8]) -> f32 {
    dot_k4(w, 176, x, |b| {
        let (qh, qs) = (&b[16..48], &b[48..176]);
        let mut q = [0u8; QK_K];
        for (i, qs) in qs.chunks_exact(32).enumerate() {
            for l in 0..32 {
                q[64 * i + l] = (qs[l] & 0xF) | (((qh[l] >> (2 * i)) & 1) << 4);
                q[64 * i + 32 + l] = (qs[l] >> 4) | (((qh[l] >> (2 * i + 1)) & 1) << 4);
            }
        }
        q
    })
}

fn dot_q6_k(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(210).zip(x.chunks_exact(292)) {
        let q = q6_k_values(wb);
        let mut sumi = 0i32;
        for j in 0..16 {
            let s: i32 = q[16 * j..16 * j + 16]
                .iter()
                .zip(q8_values(&xb[4 + 16 * j..20 + 16 * j]))
                .map(|(&a, b)| a as i32 * b)
                .sum();
            sumi += wb[192 + j] as i8 as i32 * s;
        }
        sum += f16_at(wb, 208) * q8k_d(xb) * sumi as f32;
    }
    sum
}
