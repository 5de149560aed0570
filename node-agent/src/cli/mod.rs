//! kiln-agent's subcommands. Each file is one subcommand; shared model-loading options live here.

pub mod bench;
pub mod fetch;
pub mod generate;
pub mod gpus;
pub mod plan;
pub mod serve;
pub mod synth;

use anyhow::{Context, Result};
use clap::Args;
use kiln_agent::engine::Engine;
use kiln_agent::gguf::GgufFile;
use kiln_kernels::backend::KvType;
use kiln_kernels::cpu::CpuBackend;
use std::path::PathBuf;
use std::sync::Arc;

/// Options every subcommand that runs a model shares.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file.
    #[arg(long, short = 'm', env = "KILN_MODEL")]
    pub model: PathBuf,
    /// Compute device: `cpu` (GPU backends come with their issue).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (default: all available cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Context size in tokens (default: the model's training context, at most 4096).
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// KV cache element type: f32, f16, q8_0, q4_0.
    #[arg(long, default_value = "f16", value_parser = parse_kv_type)]
    pub kv_type: KvType,
}

pub fn parse_kv_type(s: &str) -> std::result::Result<KvType, String> {
    KvType::parse(s).ok_or_else(|| format!("unknown KV type `{s}` (f32, f16, q8_0, q4_0)"))
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub struct Loaded {
    pub file: GgufFile,
    pub engine: Engine<CpuBackend>,
    pub n_ctx: usize,
    pub threads: usize,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Loaded> {
        if self.device != "cpu" {
            anyhow::bail!(
                "device `{}` is not available in this build (supported: cpu)",
                self.device
            );
        }
        let file = GgufFile::open(&self.model)
            .with_context(|| format!("loading {}", self.model.display()))?;
        let threads = self.threads.unwrap_or_else(default_threads).clamp(1, 1024);
        let backend = Arc::new(CpuBackend::new(threads));
        let model = kiln_agent::model::load(&file, backend.clone())
            .with_context(|| format!("loading {}", self.model.display()))?;
        let n_ctx = self
            .ctx
            .unwrap_or_else(|| model.info().n_ctx_train.min(4096))
            .max(1);
        Ok(Loaded {
            file,
            engine: Engine::new(backend, model),
            n_ctx,
            threads,
        })
    }
}
