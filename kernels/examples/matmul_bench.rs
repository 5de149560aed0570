//! Times `matmul` on the shapes that dominate decoding of the reference models and prints weight GB/s.
//!
//! `cargo run -p kiln-kernels --release --example matmul_bench [n_rows...]` (default: 1 and 32 rows).
//! `KILN_NO_SIMD=1` times the scalar kernels.

use std::time::{Duration, Instant};

use kiln_kernels::cpu::dot::Simd;
use kiln_kernels::cpu::matmul::matmul;
use kiln_kernels::cpu::pool::ThreadPool;
use kiln_kernels::quant::GgmlType;

/// Random quantized bytes with every block's f16 scale (and min) set to small sane values.
fn synthetic_weights(ty: GgmlType, n_out: usize, k: usize) -> Vec<u8> {
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut w: Vec<u8> = (0..n_out * ty.bytes_for(k).unwrap())
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in w.chunks_exact_mut(ty.type_size()) {
        block[..2].copy_from_slice(&scale);
        if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
            block[2..4].copy_from_slice(&scale);
        }
    }
    w
}

fn bench(pool: &ThreadPool, ty: GgmlType, n_out: usize, k: usize, n_rows: usize) {
    let w = synthetic_weights(ty, n_out, k);
    let x: Vec<f32> = (0..n_rows * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut y = vec![0.0; n_rows * n_out];
    matmul(pool, ty, &w, n_out, k, &x, n_rows, &mut y).unwrap();
    let (start, mut iters) = (Instant::now(), 0u32);
    while start.elapsed() < Duration::from_millis(700) {
        matmul(pool, ty, &w, n_out, k, &x, n_rows, &mut y).unwrap();
        iters += 1;
    }
    let per_call = start.elapsed().as_secs_f64() / iters as f64;
    println!(
        "{ty:5} n_out={n_out:6} k={k:5} rows={n_rows:3} threads={}: {:9.1} us/call  {:6.2} GB/s weights  {:7.1} GMAC/s",
        pool.n_threads(),
        per_call * 1e6,
        w.len() as f64 / per_call / 1e9,
        (n_out * k * n_rows) as f64 / per_call / 1e9,
    );
}

fn main() {
    let rows: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("n_rows"))
        .collect();
    let rows = if rows.is_empty() { vec![1, 32] } else { rows };
    println!("kernels: {:?}", Simd::detect());
    for n_threads in [1, 2] {
        let pool = ThreadPool::new(n_threads);
        for &n_rows in &rows {
            bench(&pool, GgmlType::Q4_1, 576, 1536, n_rows);
            bench(&pool, GgmlType::Q4_1, 1536, 576, n_rows);
            bench(&pool, GgmlType::Q8_0, 262144, 640, n_rows.min(4));
            bench(&pool, GgmlType::Q4_K, 640, 2048, n_rows);
            bench(&pool, GgmlType::Q6_K, 640, 2048, n_rows);
            bench(&pool, GgmlType::Q5_0, 2048, 640, n_rows);
        }
    }
}
