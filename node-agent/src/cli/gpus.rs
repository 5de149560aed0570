//! `kiln-agent gpus`: the GPUs this node (or pod) has, as JSON; with `--env`, the ROCm environment Kiln
//! would set for them and why.

use anyhow::Result;
use clap::Args;
use kiln_agent::gpu::{self, hsa, ProbeOptions};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GpusArgs {
    /// Print the environment Kiln would set (HSA_OVERRIDE_GFX_VERSION, ROCR_VISIBLE_DEVICES, recipe
    /// extras) and why, instead of the GPU list.
    #[arg(long)]
    pub env: bool,
    /// The directory holding `sys/` and `dev/` (a fake tree in tests).
    #[arg(long, default_value = "/", env = "KILN_SYSFS_ROOT")]
    pub root: PathBuf,
    /// Do not look for NVIDIA GPUs (NVML).
    #[arg(long)]
    pub no_nvml: bool,
    /// Leave out the recipe's extra variables (HSA_ENABLE_SDMA=0).
    #[arg(long)]
    pub no_recipe_extras: bool,
}

impl GpusArgs {
    pub fn probe_options(&self) -> ProbeOptions {
        ProbeOptions {
            sysfs_root: self.root.clone(),
            nvml: !self.no_nvml,
        }
    }
}

/// The environment plan for the GPUs under `opts`, given the current process environment.
pub fn env_plan(opts: &ProbeOptions, extras: bool) -> (Vec<gpu::GpuInfo>, hsa::EnvPlan) {
    let gpus = gpu::probe_all(opts);
    let given = hsa::given_gpus(&gpus, &opts.sysfs_root, &opts.sysfs_root);
    let env = std::env::vars().collect();
    let extras = if extras { hsa::RECIPE_EXTRAS } else { &[] };
    let plan = hsa::plan_env(&given, &env, extras);
    (gpus, plan)
}

pub fn run(a: GpusArgs) -> Result<()> {
    let opts = a.probe_options();
    let out = if a.env {
        serde_json::to_value(env_plan(&opts, !a.no_recipe_extras).1)?
    } else {
        serde_json::json!({ "gpus": gpu::probe_all(&opts) })
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
