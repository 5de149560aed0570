//! AMD GPUs from amdgpu's sysfs (`/sys/class/drm/card*/device/`) and the KFD topology
//! (`/sys/class/kfd/kfd/topology/nodes/*/properties`). Plain file reads: no ROCm library, so the probe
//! works in any container that mounts /sys. Every file is optional; a missing or garbled one leaves
//! its field empty instead of failing the probe.

use super::amd_ids;
use super::{GpuInfo, Vendor};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

pub const AMD_VENDOR_ID: u32 = 0x1002;

/// A GPU node of the KFD topology (CPU nodes have gfx_target_version 0 and are skipped).
#[derive(Debug, Clone)]
struct KfdNode {
    gfx_target_version: u64,
    domain: Option<u64>,
    location_id: Option<u64>,
    drm_render_minor: Option<u64>,
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p)?.parse().ok()
}

fn read_hex(p: &Path) -> Option<u32> {
    let s = read_trim(p)?;
    u32::from_str_radix(s.trim_start_matches("0x").trim_start_matches("0X"), 16).ok()
}

/// Entries of `dir` whose name is `prefix` followed by digits, ordered by that number.
fn numbered(dir: &Path, prefix: &str) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(prefix)?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out
}

fn kfd_nodes(root: &Path) -> Vec<KfdNode> {
    let dir = root.join("sys/class/kfd/kfd/topology/nodes");
    numbered(&dir, "")
        .into_iter()
        .filter_map(|(_, node)| {
            let text = fs::read_to_string(node.join("properties")).ok()?;
            let props: HashMap<&str, u64> = text
                .lines()
                .filter_map(|l| {
                    let mut it = l.split_whitespace();
                    Some((it.next()?, it.next()?.parse().ok()?))
                })
                .collect();
            let gfx = *props.get("gfx_target_version")?;
            (gfx != 0).then(|| KfdNode {
                gfx_target_version: gfx,
                domain: props.get("domain").copied(),
                location_id: props.get("location_id").copied(),
                drm_render_minor: props.get("drm_render_minor").copied(),
            })
        })
        .collect()
}

/// `0000:03:00.0` → (domain, KFD location_id = bus << 8 | device << 3 | function).
fn pci_location(slot: &str) -> Option<(u64, u64)> {
    let (domain, rest) = slot.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let h = |s: &str| u64::from_str_radix(s, 16).ok();
    Some((h(domain)?, h(bus)? << 8 | h(dev)? << 3 | h(func)?))
}

/// The PCI address from `device/uevent` (`PCI_SLOT_NAME=`), else the name the `device` link points to.
fn pci_slot(device: &Path) -> Option<String> {
    if let Some(u) = read_trim(&device.join("uevent")) {
        if let Some(s) = u.lines().find_map(|l| l.strip_prefix("PCI_SLOT_NAME=")) {
            return Some(s.trim().to_string());
        }
    }
    let target = fs::read_link(device).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    pci_location(&name).map(|_| name)
}

/// Temperature (°C) and power (W) from the card's hwmon: the `edge` sensor (else the first `temp*`),
/// and `power1_average` (else `power1_input`, which newer kernels report instead), in µW.
fn hwmon(device: &Path) -> (Option<f64>, Option<f64>) {
    let mut temp = None;
    let mut power = None;
    for (_, h) in numbered(&device.join("hwmon"), "hwmon") {
        let mut inputs: Vec<(u64, PathBuf)> = fs::read_dir(&h)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name
                    .strip_prefix("temp")?
                    .strip_suffix("_input")?
                    .parse()
                    .ok()?;
                Some((n, e.path()))
            })
            .collect();
        inputs.sort_by_key(|(n, _)| *n);
        let edge = inputs
            .iter()
            .find(|(n, _)| read_trim(&h.join(format!("temp{n}_label"))).as_deref() == Some("edge"));
        if temp.is_none() {
            temp = edge
                .or(inputs.first())
                .and_then(|(_, p)| read_u64(p))
                .map(|milli| milli as f64 / 1000.0);
        }
        if power.is_none() {
            power = read_u64(&h.join("power1_average"))
                .or_else(|| read_u64(&h.join("power1_input")))
                .map(|micro| micro as f64 / 1e6);
        }
    }
    (temp, power)
}

/// The render node minor (`device/drm/renderD128` → 128), which KFD reports as `drm_render_minor`.
fn render_minor(device: &Path) -> Option<u64> {
    numbered(&device.join("drm"), "renderD")
        .first()
        .map(|(n, _)| *n)
}

/// Every AMD GPU under `root` (a real node: `/`), in DRM card order.
pub fn probe_amd(root: &Path) -> Vec<GpuInfo> {
    let kfd = kfd_nodes(root);
    let mut gpus = Vec::new();
    for (n, card) in numbered(&root.join("sys/class/drm"), "card") {
        let device = card.join("device");
        if read_hex(&device.join("vendor")) != Some(AMD_VENDOR_ID) {
            continue;
        }
        let device_id = read_hex(&device.join("device"));
        let pci_bus = pci_slot(&device);
        let location = pci_bus.as_deref().and_then(pci_location);
        let minor = render_minor(&device);
        let node = kfd
            .iter()
            .find(|k| minor.is_some() && k.drm_render_minor == minor)
            .or_else(|| {
                let (dom, loc) = location?;
                kfd.iter()
                    .find(|k| k.location_id == Some(loc) && k.domain.unwrap_or(0) == dom)
            });
        let part = device_id.and_then(amd_ids::lookup);
        let arch = node
            .and_then(|k| amd_ids::gfx_from_target_version(k.gfx_target_version))
            .or_else(|| part.map(|p| p.gfx.to_string()))
            .unwrap_or_else(|| "unknown".into());
        let name = read_trim(&device.join("product_name"))
            .filter(|s| !s.is_empty())
            .or_else(|| part.map(|p| p.name.to_string()))
            .unwrap_or_else(|| format!("AMD GPU {:#06x}", device_id.unwrap_or(0)));
        let (temperature_celsius, power_watts) = hwmon(&device);
        gpus.push(GpuInfo {
            index: gpus.len(),
            vendor: Vendor::Amd,
            name,
            arch,
            device_id,
            pci_bus,
            uuid: read_trim(&device.join("unique_id")).filter(|s| !s.is_empty()),
            card: Some(format!("card{n}")),
            integrated: part.is_some_and(|p| p.integrated),
            vram_total_bytes: read_u64(&device.join("mem_info_vram_total")).unwrap_or(0),
            vram_used_bytes: read_u64(&device.join("mem_info_vram_used")).unwrap_or(0),
            busy_ratio: read_u64(&device.join("gpu_busy_percent"))
                .map(|p| (p.min(100)) as f64 / 100.0),
            temperature_celsius,
            power_watts,
        });
    }
    gpus
}
