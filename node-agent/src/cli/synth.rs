//! `kiln-agent synth`: writes a synthetic model (random, well-scaled weights in a real architecture's
//! layout) for tests and benchmarks. See `kiln_agent::synth`.

use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_agent::synth::{Qwen35Shape, Synth, PRESETS, QUANTS};
use std::io::BufWriter;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Architecture (only `qwen35`).
    #[arg(long, default_value = "qwen35")]
    pub arch: String,
    /// Shape preset: tiny, qwen3.6-27b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Weight type: f32, f16, q8_0, q4_0, q4_k, q4_k_m (1-D tensors and the conv stay F32).
    #[arg(long, default_value = "f16")]
    pub quant: String,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the tensor plan (name, dims, type, bytes) and the file size instead of writing.
    #[arg(long)]
    pub dry_run: bool,
    /// Fill quantized tensors with random blocks (seconds for the 27B shape) instead of quantizing random
    /// values: for speed and memory benchmarks, which do not depend on the weights' values.
    #[arg(long)]
    pub fast: bool,
}

pub fn run(a: SynthArgs) -> Result<()> {
    if a.arch != "qwen35" {
        bail!("architecture `{}` cannot be synthesised (qwen35)", a.arch);
    }
    let shape = Qwen35Shape::preset(&a.preset)
        .with_context(|| format!("unknown preset `{}` ({PRESETS})", a.preset))?;
    let synth = Synth::qwen35(&shape, &a.quant, a.seed)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("quant types: {QUANTS}"))?;
    let data = synth.writer.data_bytes()?;
    if a.dry_run {
        print!("{}", synth.plan_text());
        println!(
            "{} tensors, {} data bytes ({:.2} GB)",
            synth.writer.tensors.len(),
            data,
            data as f64 / 1e9
        );
        return Ok(());
    }
    let out = a.out.context("--out is required unless --dry-run")?;
    let file =
        std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let n = if a.fast {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        synth.write_fast(&mut w, threads)?
    } else {
        synth.write(&mut w)?
    };
    std::io::Write::flush(&mut w)?;
    eprintln!("wrote {} ({n} bytes)", out.display());
    Ok(())
}
