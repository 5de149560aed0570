//! Times the quantized matrix × vector products of a 27B-shaped Qwen3.6 decode step on the GPU (one
//! activation row, and a 4-row verify batch) and prints the weight bytes read per second.
//!
//! `cargo run -p kiln-kernels --release --example gpu_matvec_bench` on a machine with an NVIDIA GPU.
//! Each shape is loaded in enough copies to overflow the L2 cache, and the calls rotate over them, so
//! every call reads its weights from device memory as a decode step does. `KILN_MMV=...` selects the
//! product layout (kernels/src/gpu/backend/matvec.rs); `MATVEC_BENCH_SHAPES=q4_k,q6_k:5120` times only
//! those weight types (`type:outputs` for one shape of a type).

use std::time::Instant;

use kiln_kernels::backend::{Backend, HostBytes, WeightSource};
use kiln_kernels::gpu::cuda::CudaBackend;
use kiln_kernels::quant::GgmlType;

#[path = "../tests/common/mod.rs"]
mod common;
use common::random_weights as weights;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let g = CudaBackend::new(0)?;
    // (type, outputs, inputs): the FFN's stacked gate+up and down, the recurrent layer's input and
    // output projections, attention's q (with its gate) and o, and the LM head.
    let shapes = [
        (GgmlType::Q4_K, 34816, 5120),
        (GgmlType::Q4_K, 5120, 17408),
        (GgmlType::Q6_K, 5120, 17408),
        (GgmlType::Q4_K, 10240, 5120),
        (GgmlType::Q5_K, 10240, 5120),
        (GgmlType::Q4_K, 5120, 6144),
        (GgmlType::Q4_K, 12288, 5120),
        (GgmlType::Q6_K, 248320, 5120),
    ];
    println!(
        "{:6} {:>7} {:>6} {:>5} {:>9} {:>8}",
        "type", "n_out", "k", "rows", "us/call", "GB/s"
    );
    let only = std::env::var("MATVEC_BENCH_SHAPES").ok();
    let wanted = |ty: GgmlType, n_out: usize| {
        only.as_deref().is_none_or(|o| {
            o.split(',').any(|s| {
                let (t, n) = s.split_once(':').unwrap_or((s, ""));
                t.eq_ignore_ascii_case(ty.name()) && (n.is_empty() || n == n_out.to_string())
            })
        })
    };
    for (ty, n_out, k) in shapes {
        if !wanted(ty, n_out) {
            continue;
        }
        let bytes = n_out * ty.bytes_for(k).unwrap();
        let copies = (200_000_000 / bytes).clamp(1, 16);
        let ws = (0..copies)
            .map(|c| {
                g.load_weight(WeightSource {
                    name: format!("w{c}"),
                    ty,
                    rows: n_out,
                    cols: k,
                    bytes: HostBytes::from_vec(weights(ty, n_out, k, c as u64 + 1)),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for rows in [1, 4] {
            let mut x = g.tensor(rows * k)?;
            let xs: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            g.write(&mut x, 0, &xs)?;
            let mut out = g.tensor(rows * n_out)?;
            for w in &ws {
                g.matmul(w, &x, rows, &mut out)?;
            }
            g.synchronize()?;
            let calls = (2_000_000_000 / bytes).clamp(copies, 400);
            let mut times = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                for i in 0..calls {
                    g.matmul(&ws[i % copies], &x, rows, &mut out)?;
                }
                g.synchronize()?;
                times.push(t.elapsed().as_secs_f64() / calls as f64);
            }
            times.sort_by(f64::total_cmp);
            let t = times[2];
            println!(
                "{:6} {n_out:>7} {k:>6} {rows:>5} {:>9.1} {:>8.0}",
                ty.name(),
                t * 1e6,
                bytes as f64 / t / 1e9
            );
        }
    }
    Ok(())
}
