//! Memory sources: what the server reads every few seconds to see how much device memory is free.
//! `sysfs` (amdgpu's counters), `nvml` (NVIDIA), and `fake:FILE` for tests, which turns the CPU backend
//! into a device with the memory a test writes into a file.

use super::{probe, GpuInfo, ProbeOptions, Vendor};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub trait MemorySource: Send + Sync {
    /// `sysfs:/`, `nvml`, `fake:/tmp/mem`: for logs.
    fn describe(&self) -> String;
    /// The GPUs with their current memory and telemetry. The first is the one the engine uses.
    fn sample(&self) -> Result<Vec<GpuInfo>>;
}

/// AMD GPUs from sysfs, limited to the cards the process uses (by PCI address, which does not change
/// when cards are renumbered).
pub struct SysfsSource {
    pub root: PathBuf,
    pub pci_buses: Vec<String>,
}

impl MemorySource for SysfsSource {
    fn describe(&self) -> String {
        format!("sysfs:{}", self.root.display())
    }
    fn sample(&self) -> Result<Vec<GpuInfo>> {
        let gpus: Vec<GpuInfo> = probe::probe_amd(&self.root)
            .into_iter()
            .filter(|g| {
                self.pci_buses.is_empty()
                    || g.pci_bus
                        .as_ref()
                        .is_some_and(|b| self.pci_buses.contains(b))
            })
            .collect();
        if gpus.is_empty() {
            bail!("no AMD GPU under {}", self.root.display());
        }
        Ok(gpus)
    }
}

pub struct NvmlSource;

impl MemorySource for NvmlSource {
    fn describe(&self) -> String {
        "nvml".into()
    }
    fn sample(&self) -> Result<Vec<GpuInfo>> {
        let gpus = super::nvidia::probe_nvidia();
        if gpus.is_empty() {
            bail!("NVML reports no GPU");
        }
        Ok(gpus)
    }
}

/// A device whose memory a test controls. The file holds one line per GPU, `USED TOTAL` in bytes
/// (`#` starts a comment); USED is what *other* processes use. Like a real device, the fake adds the
/// agent's own resident bytes (set by the server as it allocates) to GPU 0, so a downsize frees
/// memory here as it would on a GPU.
pub struct FakeSource {
    pub path: PathBuf,
    pub resident: Arc<AtomicU64>,
}

/// Parses the fake memory file: `(used, total)` per GPU.
pub fn parse_fake(text: &str) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(u), Some(t), None) = (it.next(), it.next(), it.next()) else {
            bail!(
                "line {}: expected `USED TOTAL` in bytes, got `{line}`",
                n + 1
            );
        };
        let used: u64 = u
            .parse()
            .with_context(|| format!("line {}: used bytes `{u}`", n + 1))?;
        let total: u64 = t
            .parse()
            .with_context(|| format!("line {}: total bytes `{t}`", n + 1))?;
        if used > total {
            bail!("line {}: used {used} exceeds total {total}", n + 1);
        }
        out.push((used, total));
    }
    if out.is_empty() {
        bail!("no `USED TOTAL` line");
    }
    Ok(out)
}

impl MemorySource for FakeSource {
    fn describe(&self) -> String {
        format!("fake:{}", self.path.display())
    }
    fn sample(&self) -> Result<Vec<GpuInfo>> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let lines = parse_fake(&text).with_context(|| format!("in {}", self.path.display()))?;
        let resident = self.resident.load(Ordering::SeqCst);
        Ok(lines
            .into_iter()
            .enumerate()
            .map(|(i, (used, total))| GpuInfo {
                index: i,
                vendor: Vendor::Fake,
                name: "fake device".into(),
                arch: "fake".into(),
                device_id: None,
                pci_bus: None,
                uuid: Some(format!("fake-{i}")),
                card: None,
                integrated: false,
                vram_total_bytes: total,
                vram_used_bytes: if i == 0 {
                    used.saturating_add(resident).min(total)
                } else {
                    used
                },
                busy_ratio: None,
                temperature_celsius: None,
                power_watts: None,
            })
            .collect())
    }
}

/// `--memory-source`: `auto` (sysfs if it shows an AMD GPU, else NVML if it shows one, else none),
/// `sysfs`, `nvml`, `fake:FILE`, `none`. `resident` is the agent's own footprint (used by the fake).
pub fn from_spec(
    spec: &str,
    opts: &ProbeOptions,
    resident: Arc<AtomicU64>,
) -> Result<Option<Box<dyn MemorySource>>> {
    let sysfs = || -> Box<dyn MemorySource> {
        Box::new(SysfsSource {
            root: opts.sysfs_root.clone(),
            pci_buses: Vec::new(),
        })
    };
    Ok(match spec {
        "none" => None,
        "auto" => {
            if !probe::probe_amd(&opts.sysfs_root).is_empty() {
                Some(sysfs())
            } else if opts.nvml && !super::nvidia::probe_nvidia().is_empty() {
                Some(Box::new(NvmlSource))
            } else {
                None
            }
        }
        "sysfs" => {
            let s = sysfs();
            s.sample().context("--memory-source sysfs")?;
            Some(s)
        }
        "nvml" => {
            NvmlSource.sample().context("--memory-source nvml")?;
            Some(Box::new(NvmlSource))
        }
        _ => match spec.strip_prefix("fake:") {
            Some(path) if !path.is_empty() => {
                let s = FakeSource {
                    path: PathBuf::from(path),
                    resident,
                };
                s.sample().context("--memory-source fake")?;
                Some(Box::new(s))
            }
            _ => bail!("unknown memory source `{spec}` (auto, sysfs, nvml, fake:FILE, none)"),
        },
    })
}
