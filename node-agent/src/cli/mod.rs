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
use kiln_agent::device::Device;
use kiln_agent::engine::Engine;
use kiln_agent::gguf::GgufFile;
use kiln_kernels::backend::{Backend, KvType};
use kiln_kernels::cpu::CpuBackend;
use std::path::PathBuf;
use std::sync::Arc;

/// Options every subcommand that runs a model shares.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file.
    #[arg(long, short = 'm', env = "KILN_MODEL")]
    pub model: PathBuf,
    /// Compute device: `auto` (the first NVIDIA GPU, else the first AMD GPU in a ROCm build, else the
    /// CPU), `cpu`, `cuda:N` (NVIDIA GPU N; `cuda` is `cuda:0`), `rocm:N` (AMD GPU N; needs a build with
    /// `--features rocm`).
    #[arg(long, default_value = "auto", env = "KILN_DEVICE", value_parser = parse_device)]
    pub device: Device,
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

/// Speculative decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Spec {
    /// Plain decoding, one token per forward pass.
    None,
    /// Draft with the model's MTP head and verify the drafts in one pass.
    Mtp,
}

#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// Speculative decoding: `mtp` drafts with the model's MTP head (qwen35).
    #[arg(long, value_enum, default_value = "none")]
    pub spec: Spec,
    /// Most tokens the MTP head drafts per round (the verify pass runs this many + 1).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub spec_draft_n_max: u16,
}

impl SpecArgs {
    /// The draft max when speculation is on.
    pub fn draft_max(&self) -> Option<usize> {
        (self.spec == Spec::Mtp).then_some(self.spec_draft_n_max as usize)
    }
}

pub fn parse_kv_type(s: &str) -> std::result::Result<KvType, String> {
    KvType::parse(s).ok_or_else(|| format!("unknown KV type `{s}` (f32, f16, q8_0, q4_0)"))
}

pub fn parse_device(s: &str) -> std::result::Result<Device, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
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

/// A subcommand body that runs on whichever backend `--device` names.
pub trait OnBackend {
    fn run<B: Backend + 'static>(self, ld: Loaded<B>) -> Result<()>;
}

impl ModelArgs {
    /// Loads the model on the device `--device` names and runs `job` with it.
    pub fn run_on(&self, job: impl OnBackend) -> Result<()> {
        struct LoadThenRun<'a, J>(&'a ModelArgs, J);
        impl<J: OnBackend> kiln_agent::device::OnBackend for LoadThenRun<'_, J> {
            type Output = ();
            fn run<B: Backend + 'static>(self, backend: Arc<B>, _: Device) -> Result<()> {
                self.1.run(self.0.load_on(backend)?)
            }
        }
        let threads = self.threads.unwrap_or_else(default_threads);
        kiln_agent::device::run_on(self.device, threads, LoadThenRun(self, job))
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
