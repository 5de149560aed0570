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
use kiln_kernels::backend::{Backend, KvType};
use kiln_kernels::cpu::CpuBackend;
use kiln_kernels::gpu::cuda::CudaBackend;
use std::path::PathBuf;
use std::sync::Arc;

/// Options every subcommand that runs a model shares.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file.
    #[arg(long, short = 'm', env = "KILN_MODEL")]
    pub model: PathBuf,
    /// Compute device: `cpu`, or `cuda:N` (NVIDIA GPU N; `cuda` is `cuda:0`).
    #[arg(long, default_value = "cpu", env = "KILN_DEVICE")]
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

pub struct Loaded<B: Backend = CpuBackend> {
    pub file: GgufFile,
    pub engine: Engine<B>,
    pub n_ctx: usize,
    pub threads: usize,
}

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

pub fn parse_device(s: &str) -> Result<Device> {
    match s.split_once(':') {
        None if s == "cpu" => Ok(Device::Cpu),
        None if s == "cuda" => Ok(Device::Cuda(0)),
        Some(("cuda", n)) => n
            .parse()
            .map(Device::Cuda)
            .map_err(|_| anyhow::anyhow!("bad CUDA device index in `{s}` (expected cuda:N)")),
        _ => anyhow::bail!("unknown device `{s}` (cpu, cuda, cuda:N)"),
    }
}

/// A subcommand body that runs on whichever backend `--device` names.
pub trait OnBackend {
    fn run<B: Backend + 'static>(self, ld: Loaded<B>) -> Result<()>;
}

impl ModelArgs {
    /// Loads the model on the device `--device` names and runs `job` with it.
    pub fn run_on(&self, job: impl OnBackend) -> Result<()> {
        match parse_device(&self.device)? {
            Device::Cpu => job.run(self.load()?),
            Device::Cuda(i) => {
                let backend = CudaBackend::new(i).context("opening the CUDA device")?;
                job.run(self.load_on(Arc::new(backend))?)
            }
        }
    }

    /// Loads the model on the CPU (`--device` must say cpu).
    pub fn load(&self) -> Result<Loaded> {
        if parse_device(&self.device)? != Device::Cpu {
            anyhow::bail!(
                "device `{}` is not available for this command yet (supported: cpu)",
                self.device
            );
        }
        let threads = self.threads.unwrap_or_else(default_threads).clamp(1, 1024);
        self.load_on(Arc::new(CpuBackend::new(threads)))
    }

    pub fn load_on<B: Backend + 'static>(&self, backend: Arc<B>) -> Result<Loaded<B>> {
        let file = GgufFile::open(&self.model)
            .with_context(|| format!("loading {}", self.model.display()))?;
        let threads = self.threads.unwrap_or_else(default_threads).clamp(1, 1024);
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
