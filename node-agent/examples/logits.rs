//! Prints the logits of the last position for a list of token ids, as JSON (top entries and a few
//! statistics) — a debugging aid for comparing Kiln with a reference implementation.
//! Usage: cargo run --release --example logits -- MODEL ID,ID,... [TOP] [THREADS]

use kiln_agent::engine::Engine;
use kiln_agent::gguf::GgufFile;
use kiln_kernels::backend::KvType;
use kiln_kernels::cpu::CpuBackend;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        anyhow::bail!("usage: logits MODEL ID,ID,... [TOP] [THREADS]");
    }
    let ids: Vec<u32> = args[2]
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let top: usize = args.get(3).map_or(Ok(10), |s| s.parse())?;
    let threads: usize = args.get(4).map_or(Ok(2), |s| s.parse())?;
    let file = GgufFile::open(&args[1])?;
    let backend = Arc::new(CpuBackend::new(threads));
    let engine = Engine::new(backend.clone(), kiln_agent::model::load(&file, backend)?);
    let mut seq = engine.new_sequence(ids.len().max(16), KvType::F16)?;
    // KILN_ONE_BY_ONE=1 feeds the tokens one forward pass each (isolates batched-matmul effects).
    let logits = if std::env::var_os("KILN_ONE_BY_ONE").is_some() {
        let mut l = Vec::new();
        for &t in &ids {
            l = engine.decode(&mut seq, t)?;
        }
        l
    } else {
        engine.prefill(&mut seq, &ids)?.0
    };
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top: Vec<(usize, f32)> = order[..top.min(order.len())]
        .iter()
        .map(|&i| (i, logits[i]))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "n_vocab": logits.len(), "top": top })
    );
    Ok(())
}
