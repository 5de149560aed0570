//! matmul against a plain f64 reference built from dequantized weights and quantized-then-dequantized
//! activations (the exact inputs the integer kernels see), on the scalar and SIMD paths, for all weight types.

mod common;

use common::values;
use half::f16;
use kiln_kernels::cpu::dot::{activation_type, Simd};
use kiln_kernels::cpu::matmul::{matmul, matmul_with};
use kiln_kernels::cpu::pool::ThreadPool;
use kiln_kernels::quant::*;

const TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn f16_at(b: &[u8], off: usize) -> f64 {
    f16::from_le_bytes([b[off], b[off + 1]]).to_f64()
}

/// What the kernels see of one activation row: its dequantized values, plus for Q8_1 the per-block
/// `s` (an f16 of d·Σq that the Q4_1/Q5_1 dot uses in place of the exact block sum).
fn activation_view(act: GgmlType, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut q = vec![0u8; act.bytes_for(x.len()).unwrap()];
    match act {
        GgmlType::F32 => return (x.iter().map(|&v| v as f64).collect(), vec![]),
        GgmlType::Q8_0 => quantize_row_q8_0(x, &mut q).unwrap(),
        GgmlType::Q8_1 => quantize_row_q8_1(x, &mut q).unwrap(),
        _ => quantize_row_q8_k(x, &mut q).unwrap(),
    }
    let (mut vals, mut sums) = (vec![], vec![]);
    for b in q.chunks_exact(act.type_size()) {
        let (d, qs) = match act {
            GgmlType::Q8_0 => (f16_at(b, 0), &b[2..]),
            GgmlType::Q8_1 => {
                sums.push(f16_at(b, 2));
                (f16_at(b, 0), &b[4..])
            }
            _ => (
                f32::from_le_bytes(b[..4].try_into().unwrap()) as f64,
                &b[4..260],
            ),
        };
        vals.extend(qs.iter().map(|&v| d * v as i8 as f64));
    }
    (vals, sums)
}

/// Reference y and Σ|w·x| per output (the scale of f32 rounding error).
fn reference(
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    x: &[f32],
    n_rows: usize,
) -> (Vec<f64>, Vec<f64>) {
    let row_bytes = ty.bytes_for(k).unwrap();
    let act = activation_type(ty).unwrap();
    let (mut y, mut mag) = (vec![0.0; n_rows * n_out], vec![0.0; n_rows * n_out]);
    for r in 0..n_rows {
        let (xv, sums) = activation_view(act, &x[r * k..(r + 1) * k]);
        for i in 0..n_out {
            let wb = &w[i * row_bytes..(i + 1) * row_bytes];
            let mut wv = vec![0f32; k];
            dequantize_row(ty, wb, &mut wv).unwrap();
            let (mut acc, mut m) = (0.0f64, 0.0f64);
            for j in 0..k {
                acc += wv[j] as f64 * xv[j];
                m += (wv[j] as f64 * xv[j]).abs();
            }
            if act == GgmlType::Q8_1 {
                // llama.cpp's Q4_1/Q5_1 dot adds m_w·s_x with the f16-rounded s_x instead of m_w·d_x·Σq_x.
                for (b, s) in sums.iter().enumerate() {
                    let mw = f16_at(&wb[b * ty.type_size()..], 2);
                    let exact: f64 = xv[32 * b..32 * b + 32].iter().sum();
                    acc += mw * (s - exact);
                    m += (mw * s).abs();
                }
            }
            y[r * n_out + i] = acc;
            mag[r * n_out + i] = m;
        }
    }
    (y, mag)
}

fn random_weights(ty: GgmlType, n_out: usize, k: usize, seed: u64) -> Vec<u8> {
    let row_bytes = ty.bytes_for(k).unwrap();
    let mut w = vec![0u8; n_out * row_bytes];
    for (i, row) in w.chunks_exact_mut(row_bytes).enumerate() {
        let mut v = values(seed + i as u64, k);
        if i % 5 == 3 {
            v.iter_mut().for_each(|x| *x = x.abs() * 3.0); // all positive: nonzero mins in Q4_1/Q5_1/K-quants
        }
        quantize_row(ty, &v, row).unwrap();
    }
    w
}

#[test]
fn matmul_matches_reference_for_every_type_shape_and_path() {
    let pools = [ThreadPool::new(1), ThreadPool::new(3)];
    let paths: Vec<Simd> = [Simd::Scalar, Simd::Avx2, Simd::Avx512Vnni]
        .into_iter()
        .filter(|s| s.is_supported())
        .collect();
    for ty in TYPES {
        let k = if ty.block_size() == 1 { 45 } else { 512 };
        for (case, &n_out) in [1usize, 7, 33, 257].iter().enumerate() {
            let w = random_weights(ty, n_out, k, 100 * case as u64);
            for n_rows in [1usize, 2, 3, 4, 5, 8, 20, 33] {
                let mut x = values(7 + n_rows as u64, n_rows * k);
                x[3] = 0.0;
                if n_rows > 1 {
                    x[k..2 * k].iter_mut().for_each(|v| *v *= 40.0); // rows of different scale
                }
                let (want, mag) = reference(ty, &w, n_out, k, &x, n_rows);
                for &simd in &paths {
                    let pool = &pools[n_rows % 2];
                    let mut y = vec![f32::NAN; n_rows * n_out];
                    matmul_with(simd, pool, ty, &w, n_out, k, &x, n_rows, &mut y).unwrap();
                    for idx in 0..y.len() {
                        // Integer block sums are exact; what remains is f32 rounding of the scale products and the
                        // block accumulation, far below 1e-5 of the magnitude sum.
                        let tol = 1e-5 * mag[idx] + 1e-30;
                        let err = (y[idx] as f64 - want[idx]).abs();
                        assert!(err <= tol, "{ty} {simd:?} n_out={n_out} n_rows={n_rows} idx={idx}: {} vs {} (tol {tol})", y[idx], want[idx]);
                    }
                }
            }
        }
    }
}

/// Several activation rows give the same bits as one at a time, for every quantized type: the batched
/// kernels keep the single-row kernels' float order (SmolLM2's prompt logits are bit-identical to llama.cpp's,
/// and Gemma 3's greedy continuations move with any change of rounding).
#[test]
fn batched_matmul_is_bit_identical_to_single_rows() {
    let pool = ThreadPool::new(2);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        for simd in [Simd::Avx2, Simd::Avx512Vnni] {
            if !simd.is_supported() {
                continue;
            }
            let (k, n_out) = (if ty.block_size() == 32 { 576 } else { 768 }, 43);
            let w = random_weights(ty, n_out, k, 5);
            for n_rows in [8usize, 17, 40] {
                let mut x = values(11 + n_rows as u64, n_rows * k);
                x[5 * k..6 * k].iter_mut().for_each(|v| *v *= 300.0);
                let mut batched = vec![0.0; n_rows * n_out];
                matmul_with(simd, &pool, ty, &w, n_out, k, &x, n_rows, &mut batched).unwrap();
                for r in 0..n_rows {
                    let mut single = vec![0.0; n_out];
                    matmul_with(
                        simd,
                        &pool,
                        ty,
                        &w,
                        n_out,
                        k,
                        &x[r * k..(r + 1) * k],
                        1,
                        &mut single,
                    )
                    .unwrap();
                    for i in 0..n_out {
                        assert_eq!(
                            batched[r * n_out + i].to_bits(),
                            single[i].to_bits(),
                            "{ty} {simd:?} n_rows={n_rows} row {r} output {i}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn simd_and_scalar_agree_closely() {
    if !Simd::Avx2.is_supported() {
        return;
    }
    let pool = ThreadPool::new(2);
    for ty in TYPES {
        let (k, n_out, n_rows) = (if ty.block_size() == 1 { 1000 } else { 2048 }, 64, 6);
        let w = random_weights(ty, n_out, k, 99);
        let x = values(5, n_rows * k);
        let (mut a, mut b) = (vec![0.0; n_out * n_rows], vec![0.0; n_out * n_rows]);
        matmul_with(Simd::Scalar, &pool, ty, &w, n_out, k, &x, n_rows, &mut a).unwrap();
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        for simd in [Simd::Avx2, Simd::Avx512Vnni] {
            if !simd.is_supported() {
                continue;
            }
            matmul_with(simd, &pool, ty, &w, n_out, k, &x, n_rows, &mut b).unwrap();
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-5 * scale,
                    "{ty} output {i}: scalar {p} vs {simd:?} {q}"
                );
            }
        }
    }
}

#[test]
fn matmul_rejects_bad_lengths_without_panicking() {
    let pool = ThreadPool::new(2);
    let ty = GgmlType::Q4_1;
    let w = vec![0u8; 4 * 20];
    let mut y = vec![0.0; 4];
    assert!(matmul(&pool, ty, &w, 4, 32, &[0.0; 32], 1, &mut y).is_ok());
    assert!(matches!(
        matmul(&pool, ty, &w, 4, 33, &[0.0; 33], 1, &mut y),
        Err(QuantError::NotBlockAligned { .. })
    ));
    assert!(matches!(
        matmul(&pool, ty, &w[1..], 4, 32, &[0.0; 32], 1, &mut y),
        Err(QuantError::WrongLength { .. })
    ));
    assert!(matches!(
        matmul(&pool, ty, &w, 4, 32, &[0.0; 31], 1, &mut y),
        Err(QuantError::WrongLength { .. })
    ));
    assert!(matches!(
        matmul(&pool, ty, &w, 4, 32, &[0.0; 32], 1, &mut y[1..]),
        Err(QuantError::WrongLength { .. })
    ));
    assert!(matches!(
        matmul(&pool, ty, &w, usize::MAX, 32, &[0.0; 32], 1, &mut y),
        Err(QuantError::WrongLength { .. })
    ));
    assert_eq!(
        matmul(&pool, GgmlType::Q2_K, &[], 0, 256, &[0.0; 256], 1, &mut []),
        Err(QuantError::Unsupported(GgmlType::Q2_K))
    );
}

#[test]
fn activation_quantizers_round_half_to_even() {
    // amax = 127 makes the scale exactly 1, so x*127/amax = x and the halves must round to even.
    let mut x = vec![0.0f32; 32];
    x[..6].copy_from_slice(&[127.0, 2.5, 3.5, -2.5, -0.5, 1.5]);
    let mut q = vec![0u8; 34];
    quantize_row_q8_0(&x, &mut q).unwrap();
    assert_eq!(f16_at(&q, 0), 1.0);
    assert_eq!(
        q[2..8].iter().map(|&v| v as i8).collect::<Vec<_>>(),
        [127, 2, 4, -2, 0, 2]
    );
    let mut q1 = vec![0u8; 36];
    quantize_row_q8_1(&x, &mut q1).unwrap();
    assert_eq!(f16_at(&q1, 2), (127 + 2 + 4 - 2 + 2) as f64);
    // Q8_K: the scale follows the signed maximum (-127 here), so d = 1 and values keep their sign.
    let mut xk = vec![0.0f32; 256];
    xk[..4].copy_from_slice(&[-127.0, 2.5, -3.5, 100.4]);
    let mut qk = vec![0u8; 292];
    quantize_row_q8_k(&xk, &mut qk).unwrap();
    assert_eq!(f32::from_le_bytes(qk[..4].try_into().unwrap()), 1.0);
    assert_eq!(
        qk[4..8].iter().map(|&v| v as i8).collect::<Vec<_>>(),
        [-127, 2, -4, 100]
    );
    assert_eq!(i16::from_le_bytes([qk[260], qk[261]]), -127 + 2 - 4 + 100);
}

#[test]
fn f32_and_f16_helpers_match_plain_loops() {
    for n in [0usize, 1, 7, 8, 15, 16, 17, 100, 1003] {
        let a = values(1, n);
        let b = values(2, n);
        let a16: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let want16: f64 = a16
            .iter()
            .zip(&b)
            .map(|(x, y)| x.to_f64() * *y as f64)
            .sum();
        assert!(
            (kiln_kernels::cpu::dot::dot_f32(&a, &b) as f64 - want).abs() < 1e-4,
            "dot_f32 n={n}"
        );
        assert!(
            (kiln_kernels::cpu::dot::dot_f16_f32(&a16, &b) as f64 - want16).abs() < 1e-4,
            "dot_f16 n={n}"
        );
        let mut y = b.clone();
        kiln_kernels::cpu::dot::axpy_f32(&mut y, 0.5, &a);
        let mut y16 = b.clone();
        kiln_kernels::cpu::dot::axpy_f16(&mut y16, -2.0, &a16);
        for j in 0..n {
            assert!((y[j] - (b[j] + 0.5 * a[j])).abs() < 1e-6);
            assert!((y16[j] - (b[j] - 2.0 * a16[j].to_f32())).abs() < 1e-6);
        }
    }
}
