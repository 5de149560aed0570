//! `kiln-agent plan`: the memory plan for a model (see `kiln_agent::plan`) as JSON.

use super::parse_kv_type;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use kiln_agent::gguf::{GgufFile, Metadata};
use kiln_agent::gpu::{self, ProbeOptions};
use kiln_agent::plan::{self, ModelFacts, PlanOptions};
use kiln_agent::synth::{Qwen35Shape, Synth};
use kiln_kernels::backend::KvType;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Spec {
    None,
    Mtp,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// GGUF model file (only its header is read).
    #[arg(long, short = 'm', required_unless_present = "synth")]
    pub model: Option<PathBuf>,
    /// Plan a synthetic model without writing it: PRESET:QUANT, e.g. qwen3.6-27b:q4_k_m.
    #[arg(long, conflicts_with = "model")]
    pub synth: Option<String>,
    /// Device memory in bytes (24GiB, 25769803776). Default: the free memory of --gpu.
    #[arg(long, value_parser = plan::parse_bytes)]
    pub vram: Option<u64>,
    /// Which GPU's free memory to plan for when --vram is not given.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Requested context per slot (default: the model's training context).
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// Smallest context the ladder may step down to.
    #[arg(long, default_value_t = plan::DEFAULT_CTX_MIN)]
    pub ctx_min: usize,
    #[arg(long, default_value = "f16", value_parser = parse_kv_type)]
    pub kv_type: KvType,
    #[arg(long, value_enum, default_value = "none")]
    pub spec: Spec,
    /// Tokens drafted per speculative round.
    #[arg(long, default_value_t = 3)]
    pub spec_draft_n_max: usize,
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Prompt tokens per forward pass (sizes the compute buffers).
    #[arg(long, default_value_t = plan::DEFAULT_UBATCH)]
    pub ubatch: usize,
    /// Recurrent-state checkpoints per slot kept on the device for prefix reuse.
    #[arg(long, default_value_t = 1)]
    pub prefix_checkpoints: usize,
    /// Device memory kept free on top of the plan.
    #[arg(long, default_value_t = plan::DEFAULT_HEADROOM, value_parser = plan::parse_bytes)]
    pub vram_headroom: u64,
    /// The directory holding `sys/` (GPU probe).
    #[arg(long, default_value = "/", env = "KILN_SYSFS_ROOT")]
    pub root: PathBuf,
}

fn facts(a: &PlanArgs) -> Result<ModelFacts> {
    if let Some(s) = &a.synth {
        let (preset, quant) = s
            .split_once(':')
            .context("--synth takes PRESET:QUANT, e.g. qwen3.6-27b:q4_k_m")?;
        let shape = Qwen35Shape::preset(preset).with_context(|| {
            format!("unknown preset `{preset}` ({})", kiln_agent::synth::PRESETS)
        })?;
        let synth = Synth::qwen35(&shape, quant, 0).map_err(anyhow::Error::msg)?;
        let meta: Metadata = synth.writer.metadata.iter().cloned().collect();
        let mut sizes = Vec::new();
        for t in &synth.writer.tensors {
            sizes.push((t.name.as_str(), t.n_bytes().context("tensor size")?));
        }
        return ModelFacts::from_header(&meta, sizes.into_iter());
    }
    let path = a.model.as_ref().context("--model is required")?;
    let file = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    ModelFacts::from_file(&file).with_context(|| format!("planning {}", path.display()))
}

pub fn run(a: PlanArgs) -> Result<()> {
    if a.parallel == 0 || a.parallel > 256 {
        bail!("--parallel must be between 1 and 256");
    }
    if a.spec == Spec::Mtp && !(1..=16).contains(&a.spec_draft_n_max) {
        bail!("--spec-draft-n-max must be between 1 and 16");
    }
    let m = facts(&a)?;
    let available = match a.vram {
        Some(v) => Some(v),
        None => {
            let gpus = gpu::probe_all(&ProbeOptions {
                sysfs_root: a.root.clone(),
                nvml: true,
            });
            match gpus.get(a.gpu) {
                Some(g) => {
                    eprintln!(
                        "planning for GPU {} ({} {}): {} free of {}",
                        a.gpu,
                        g.name,
                        g.arch,
                        plan::gb(g.vram_free_bytes()),
                        plan::gb(g.vram_total_bytes)
                    );
                    Some(g.vram_free_bytes())
                }
                None => {
                    eprintln!(
                        "no GPU {} found and no --vram: the plan is not fitted to a device",
                        a.gpu
                    );
                    None
                }
            }
        }
    };
    let opts = PlanOptions {
        ctx: a.ctx,
        ctx_min: a.ctx_min.max(1),
        kv_type: a.kv_type,
        mtp_draft_max: (a.spec == Spec::Mtp).then_some(a.spec_draft_n_max),
        parallel: a.parallel,
        ubatch: a.ubatch.clamp(1, 65536),
        prefix_checkpoints: a.prefix_checkpoints.min(1024),
        available,
        headroom: a.vram_headroom,
    };
    let p = opts.plan(&m)?;
    println!("{}", serde_json::to_string_pretty(&p)?);
    Ok(())
}
