//! Times decode attention alone on the GPU: the 27B's shape (24 query heads over 4 KV heads of 256, q4_0
//! cache in a 128K context), one token and a 4-token verify batch at growing depths, and prints the
//! effective read speed of the cached K and V.
//!
//! `cargo run -p kiln-kernels --release --example gpu_attention_bench [depth...]` on a machine with an
//! NVIDIA GPU (default depths 1024 8192 32768 131000). `KILN_ATTN_TILE=0` times the warp-per-key kernel.

use std::time::Instant;

use kiln_kernels::backend::{AttentionParams, Backend, KvType};
use kiln_kernels::gpu::cuda::CudaBackend;

#[path = "../tests/common/mod.rs"]
mod common;
use common::values;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut depths: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("depth"))
        .collect();
    if depths.is_empty() {
        depths = vec![1024, 8192, 32768, 131000];
    }
    depths.sort_unstable();
    let g = CudaBackend::new(0)?;
    let (n_heads, n_kv, d, n_ctx) = (24, 4, 256, 131072);
    let ty = KvType::Q4_0;
    let params = |n_heads| AttentionParams {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: d,
        scale: 1.0 / 16.0,
        window: None,
        softcap: None,
    };
    let mut kv = g.kv_cache(n_ctx, n_kv, d, ty)?;
    let put = |v: &[f32]| -> Result<_, Box<dyn std::error::Error>> {
        let mut t = g.tensor(v.len())?;
        g.write(&mut t, 0, v)?;
        Ok(t)
    };
    // Bytes of K and V one query row reads per cached position (q4_0: 18 bytes per 32 values).
    let row_bytes = 2 * n_kv * d / 32 * 18;
    let mut filled = 0;
    println!(
        "{:>8} {:>5} {:>10} {:>10}",
        "depth", "rows", "us/call", "KV GB/s"
    );
    for &depth in &depths {
        // Fill up to `depth` in prompt chunks with one query head per KV head (cheap), then time.
        while filled < depth {
            let rows = (depth - filled).min(4096);
            let (q, k, v) = (
                put(&values(1 + filled as u64, rows * n_kv * d))?,
                put(&values(2 + filled as u64, rows * n_kv * d))?,
                put(&values(3 + filled as u64, rows * n_kv * d))?,
            );
            let mut o = g.tensor(rows * n_kv * d)?;
            g.attention(&q, &k, &v, &mut kv, filled, rows, params(n_kv), &mut o)?;
            filled += rows;
        }
        for rows in [1, 4] {
            let (q, k, v) = (
                put(&values(7, rows * n_heads * d))?,
                put(&values(8, rows * n_kv * d))?,
                put(&values(9, rows * n_kv * d))?,
            );
            let mut o = g.tensor(rows * n_heads * d)?;
            let call = |o: &mut _, kv: &mut _| {
                g.attention(&q, &k, &v, kv, depth, rows, params(n_heads), o)
            };
            for _ in 0..20 {
                call(&mut o, &mut kv)?;
            }
            g.synchronize()?;
            let mut times = Vec::new();
            for _ in 0..7 {
                let t = Instant::now();
                for _ in 0..50 {
                    call(&mut o, &mut kv)?;
                }
                g.synchronize()?;
                times.push(t.elapsed().as_secs_f64() / 50.0);
            }
            times.sort_by(f64::total_cmp);
            let t = times[times.len() / 2];
            println!(
                "{depth:>8} {rows:>5} {:>10.1} {:>10.0}",
                t * 1e6,
                (depth * row_bytes) as f64 / t / 1e9
            );
        }
    }
    Ok(())
}
