//! Element-wise and per-row CPU ops. These are small next to the matmuls; they follow llama.cpp's
//! arithmetic where it matters for matching its outputs (f64 sums in RMSNorm, RoPE angles by repeated
//! multiplication in f32).

use crate::backend::{RopeParams, RopeStyle};
use half::f16;
use std::sync::OnceLock;

pub fn rms_norm(x: &[f32], weight: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    rms_norm_scaled(x, sum, weight, eps, out);
}

/// [`rms_norm`] of four rows of `dim` values at once (`x`, `out`: 4 × dim): the same sequential f64 sum per
/// row, with the four sums interleaved so the additions overlap instead of waiting on each other.
pub fn rms_norm4(x: &[f32], dim: usize, weight: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let (x0, rest) = x[..4 * dim].split_at(dim);
    let (x1, rest) = rest.split_at(dim);
    let (x2, x3) = rest.split_at(dim);
    let mut s = [0f64; 4];
    for i in 0..dim {
        s[0] += (x0[i] as f64) * (x0[i] as f64);
        s[1] += (x1[i] as f64) * (x1[i] as f64);
        s[2] += (x2[i] as f64) * (x2[i] as f64);
        s[3] += (x3[i] as f64) * (x3[i] as f64);
    }
    for (r, (xr, o)) in x[..4 * dim]
        .chunks_exact(dim)
        .zip(out.chunks_exact_mut(dim))
        .enumerate()
    {
        rms_norm_scaled(xr, s[r], weight, eps, o);
    }
}

fn rms_norm_scaled(x: &[f32], sum: f64, weight: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    match weight {
        Some(w) => {
            for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
                *o = v * scale * w;
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v * scale;
            }
        }
    }
}

pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// ggml's softplus: log(1 + eˣ), and x itself above 20.
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        (1.0 + x.exp()).ln()
    }
}

/// GELU, tanh approximation (what Gemma's `gelu_pytorch_tanh` is).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// GELU as ggml's CPU backend computes it: through a table over every f16 input (x rounded to f16,
/// the result rounded to f16), exact passthrough beyond ±10. Following it keeps Gemma's outputs equal
/// to llama.cpp's; the table also makes GELU a lookup. One zero entry past the end lets the AVX2 version
/// gather 32 bits at the last index.
fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())))
            .chain([f16::ZERO])
            .collect()
    })
}

pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let table = gelu_table();
    let n = out.len().min(gate.len()).min(up.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::dot::Simd::detect() >= super::dot::Simd::Avx2 {
        // SAFETY: AVX2/FMA/F16C are present; the table has 65537 entries.
        done = unsafe { geglu_avx2(table, &gate[..n], &up[..n], &mut out[..n]) };
    }
    for ((o, &g), &u) in out[done..n]
        .iter_mut()
        .zip(&gate[done..n])
        .zip(&up[done..n])
    {
        *o = if g <= -10.0 {
            0.0
        } else if g >= 10.0 {
            g * u
        } else {
            table[f16::from_f32(g).to_bits() as usize].to_f32() * u
        };
    }
}

/// [`geglu`] eight values at a time, with the same roundings (F16C converts to nearest even, as
/// `f16::from_f32` does). Returns how many values it did (a multiple of 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn geglu_avx2(table: &[f16], gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = out.len() / 8 * 8;
    let base = table.as_ptr().cast::<i32>();
    for i in (0..n).step_by(8) {
        let (g, u) = (
            _mm256_loadu_ps(gate.as_ptr().add(i)),
            _mm256_loadu_ps(up.as_ptr().add(i)),
        );
        let idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(g));
        // 32 bits at table + 2·idx; the low half is the entry.
        let t = _mm256_and_si256(
            _mm256_i32gather_epi32::<2>(base, idx),
            _mm256_set1_epi32(0xFFFF),
        );
        let t = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(t, t));
        let mut r = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(t)), u);
        r = _mm256_blendv_ps(
            r,
            _mm256_setzero_ps(),
            _mm256_cmp_ps::<_CMP_LE_OQ>(g, _mm256_set1_ps(-10.0)),
        );
        r = _mm256_blendv_ps(
            r,
            _mm256_mul_ps(g, u),
            _mm256_cmp_ps::<_CMP_GE_OQ>(g, _mm256_set1_ps(10.0)),
        );
        _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
    }
    n
}

/// Rotates one token's row of `n_heads × head_dim` values at position `pos`.
pub fn rope_row(row: &mut [f32], pos: u32, p: &RopeParams) {
    let theta_scale = p.theta_base.powf(-2.0 / p.n_rot as f32);
    let half = p.n_rot / 2;
    // The angle of pair i is pos·scale·theta_scale^i, computed by repeated multiplication as ggml does.
    let mut cos_sin = [(0f32, 0f32); 256];
    let mut theta = pos as f32;
    for cs in cos_sin.iter_mut().take(half) {
        let t = theta * p.freq_scale;
        *cs = (t.cos(), t.sin());
        theta *= theta_scale;
    }
    for head in row.chunks_exact_mut(p.head_dim).take(p.n_heads) {
        for (i, &(c, s)) in cos_sin.iter().enumerate().take(half) {
            let (a, b) = match p.style {
                RopeStyle::Normal => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0.mul_add(c, -(x1 * s));
            head[b] = x0.mul_add(s, x1 * c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 0.0];
        let mut out = [0f32; 4];
        rms_norm(&x, None, 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
        assert!((out[0] - 1.2).abs() < 1e-6);
    }

    #[test]
    fn rms_norm4_matches_rms_norm_bits() {
        let dim = 37;
        let x: Vec<f32> = (0..4 * dim)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let w: Vec<f32> = (0..dim).map(|i| 1.0 + i as f32 / 50.0).collect();
        for weight in [None, Some(&w[..])] {
            let (mut a, mut b) = (vec![0f32; 4 * dim], vec![0f32; 4 * dim]);
            rms_norm4(&x, dim, weight, 1e-6, &mut a);
            for r in 0..4 {
                rms_norm(
                    &x[r * dim..(r + 1) * dim],
                    weight,
                    1e-6,
                    &mut b[r * dim..(r + 1) * dim],
                );
            }
            assert_eq!(a, b);
        }
    }

    #[test]
    fn rope_preserves_norm_and_is_identity_at_zero() {
        let p = RopeParams {
            n_heads: 2,
            head_dim: 8,
            n_rot: 8,
            theta_base: 10000.0,
            freq_scale: 1.0,
            style: RopeStyle::Neox,
        };
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.5).collect();
        let mut r = orig.clone();
        rope_row(&mut r, 0, &p);
        assert_eq!(r, orig);
        rope_row(&mut r, 17, &p);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = r.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // Pair (0, 4) of head 0 rotated by 17 rad.
        let (c, s) = (17f32.cos(), 17f32.sin());
        assert!((r[0] - (orig[0] * c - orig[4] * s)).abs() < 1e-5);
    }

    #[test]
    fn geglu_simd_matches_scalar_bits() {
        let table = gelu_table();
        let gate: Vec<f32> = (0..4099)
            .map(|i| ((i * 7919) % 4001) as f32 / 150.0 - 13.3)
            .chain([-10.0, 10.0, -0.0, 0.0, 65504.0, -1e-8, 9.999, -9.999])
            .collect();
        let up: Vec<f32> = (0..gate.len())
            .map(|i| (i % 17) as f32 * 0.37 - 3.0)
            .collect();
        let mut out = vec![0f32; gate.len()];
        geglu(&gate, &up, &mut out);
        for ((&g, &u), &o) in gate.iter().zip(&up).zip(&out) {
            let want = if g <= -10.0 {
                0.0
            } else if g >= 10.0 {
                g * u
            } else {
                table[f16::from_f32(g).to_bits() as usize].to_f32() * u
            };
            assert_eq!(o.to_bits(), want.to_bits(), "gelu({g}) * {u}");
        }
    }

    #[test]
    fn activations() {
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert_eq!(gelu_tanh(0.0), 0.0);
    }
}
