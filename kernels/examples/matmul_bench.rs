//! Times `matmul` on the shapes that dominate decoding of the reference models and prints weight GB/s.
//!
//! `cargo run -p kiln-kernels --release --example matmul_bench [n_rows...]` (default: 1 and 32 rows).
//! Prints the fastest and the median call of ~0.6 s of calls per shape.
//! `KILN_NO_SIMD=1` times the scalar kernels.

use std::time::{Duration, Instant};

use kiln_kernels::cpu::dot::Simd;
use kiln_kernels::cpu::matmul::matmul;
use kiln_kernels::cpu::pool::ThreadPool;
use kiln_kernels::quant::GgmlType;

#[path = "../tests/common/mod.rs"]
mod common;

fn bench(pool: &ThreadPool, ty: GgmlType, n_out: usize, k: usize, n_rows: usize) {
    let w = common::random_weights(ty, n_out, k, 1);
    let x: Vec<f32> = (0..n_rows * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut y = vec![0.0; n_rows * n_out];
    matmul(pool, ty, &w, n_out, k, &x, n_rows, &mut y).unwrap();
    if let Some(iters) = std::env::var("KILN_BENCH_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        // A fixed amount of work, for `perf stat -e cycles:u` (which a busy machine does not disturb much).
        let start = Instant::now();
        for _ in 0..iters {
            matmul(pool, ty, &w, n_out, k, &x, n_rows, &mut y).unwrap();
        }
        let per_call = start.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{ty:5} n_out={n_out:6} k={k:5} rows={n_rows:3}: {iters} calls, {:9.1} us/call",
            per_call * 1e6
        );
        return;
    }
    // Per-call times over ~0.6 s: on a shared machine the minimum is the stable statistic (most calls that
    // are not preempted or slowed by a neighbour run at it); the median shows how noisy the run was.
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(600) || times.len() < 5 {
        let t = Instant::now();
        matmul(pool, ty, &w, n_out, k, &x, n_rows, &mut y).unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let (best, median) = (times[0], times[times.len() / 2]);
    println!(
        "{ty:5} n_out={n_out:6} k={k:5} rows={n_rows:3} threads={}: {:9.1} us/call (median {:9.1})  {:6.2} GB/s weights  {:7.1} GMAC/s",
        pool.n_threads(),
        best * 1e6,
        median * 1e6,
        w.len() as f64 / best / 1e9,
        (n_out * k * n_rows) as f64 / best / 1e9,
    );
}

/// `KILN_BENCH_TYPES=Q5_0,Q4_K` keeps only those weight types; `KILN_BENCH_THREADS=1` only that pool size;
/// `KILN_BENCH_ITERS=n` runs each shape exactly n times.
fn main() {
    let rows: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("n_rows"))
        .collect();
    let rows = if rows.is_empty() { vec![1, 32] } else { rows };
    let types = std::env::var("KILN_BENCH_TYPES").ok();
    let threads: Vec<usize> = match std::env::var("KILN_BENCH_THREADS") {
        Ok(t) => t
            .split(',')
            .map(|t| t.parse().expect("thread count"))
            .collect(),
        Err(_) => vec![1, 2],
    };
    // SmolLM2-135M (Q4_1 layers, Q8_0 head) and Gemma-3-270M Q4_K_M shapes.
    let shapes = [
        (GgmlType::Q4_1, 576, 576),
        (GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q4_1, 576, 1536),
        (GgmlType::Q8_0, 49152, 576),
        (GgmlType::Q5_0, 1024, 640),
        (GgmlType::Q5_0, 2048, 640),
        (GgmlType::Q8_0, 256, 640),
        (GgmlType::Q4_K, 640, 1024),
        (GgmlType::Q4_K, 640, 2048),
        (GgmlType::Q6_K, 640, 2048),
        (GgmlType::Q8_0, 262144, 640),
    ];
    println!("kernels: {:?}", Simd::detect());
    for n_threads in threads {
        let pool = ThreadPool::new(n_threads);
        for &n_rows in &rows {
            for &(ty, n_out, k) in &shapes {
                if types
                    .as_ref()
                    .is_some_and(|t| !t.split(',').any(|t| t == ty.name()))
                {
                    continue;
                }
                // The head only ever sees a few rows (the last prompt position, speculative drafts).
                let n_rows = if n_out > 100_000 {
                    n_rows.min(4)
                } else {
                    n_rows
                };
                bench(&pool, ty, n_out, k, n_rows);
            }
        }
    }
}
