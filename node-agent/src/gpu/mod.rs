//! The GPU node layer: which GPUs this node (or pod) has, how to set up their runtime, and how much
//! memory they have free.
//!
//! - `probe`: AMD GPUs from amdgpu sysfs and the KFD topology (no ROCm library needed).
//! - `amd_ids`: PCI device ids → marketing name and gfx target, for when KFD is not mounted.
//! - `nvidia`: NVIDIA GPUs through NVML, loaded at run time.
//! - `hsa`: the ROCm environment (HSA_OVERRIDE_GFX_VERSION, visible devices, recipe extras).
//! - `vram`: memory sources (sysfs, NVML, a fake file for tests) the server watches while it runs.

pub mod amd_ids;
pub mod hsa;
pub mod nvidia;
pub mod probe;
pub mod vram;

#[cfg(test)]
mod tests;

use serde::Serialize;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Amd,
    Nvidia,
    /// A device described by a test's fake memory file.
    Fake,
}

impl Vendor {
    pub fn as_str(&self) -> &'static str {
        match self {
            Vendor::Amd => "amd",
            Vendor::Nvidia => "nvidia",
            Vendor::Fake => "fake",
        }
    }
}

/// One GPU as the node sees it. Telemetry fields are `None` where the driver does not report them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuInfo {
    /// Position among the GPUs of this vendor that the process can see (the runtime's device index).
    pub index: usize,
    pub vendor: Vendor,
    pub name: String,
    /// `gfx1100`, `gfx942`, `sm_90`, … (`unknown` when neither KFD nor the id table knows the card).
    pub arch: String,
    /// PCI device id (AMD), e.g. 0x744c.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<u32>,
    /// PCI address, e.g. `0000:03:00.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_bus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The DRM card directory (`card0`) this GPU was read from (AMD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
    /// An APU: its "VRAM" is a carve-out of system memory.
    pub integrated: bool,
    pub vram_total_bytes: u64,
    pub vram_used_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_celsius: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_watts: Option<f64>,
}

impl GpuInfo {
    pub fn vram_free_bytes(&self) -> u64 {
        self.vram_total_bytes.saturating_sub(self.vram_used_bytes)
    }
}

/// Where to look for GPUs. Tests point `sysfs_root` at a fake tree and turn NVML off.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// The directory that holds `sys/` (`/` on a real node).
    pub sysfs_root: PathBuf,
    pub nvml: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            sysfs_root: PathBuf::from("/"),
            nvml: true,
        }
    }
}

/// Every GPU of every vendor this process can see: AMD first, then NVIDIA. A vendor whose driver or
/// library is missing contributes none; that is not an error.
pub fn probe_all(opts: &ProbeOptions) -> Vec<GpuInfo> {
    let mut gpus = probe::probe_amd(&opts.sysfs_root);
    if opts.nvml {
        gpus.extend(nvidia::probe_nvidia());
    }
    gpus
}
