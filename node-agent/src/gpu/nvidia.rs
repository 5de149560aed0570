//! NVIDIA GPUs through NVML (`nvml-wrapper` dlopens libnvidia-ml at run time): the binary has no link
//! dependency on the driver, and a node without the library simply has no NVIDIA GPUs.

use super::{GpuInfo, Vendor};
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::Nvml;
use std::ffi::OsStr;
use std::sync::OnceLock;

/// NVML, initialised once per process (init talks to the driver; it is not free). `None`: no library
/// or no driver.
pub fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| {
        // Driver installs ship libnvidia-ml.so.1; the unversioned name exists only with dev packages.
        let mut last = None;
        for lib in ["libnvidia-ml.so.1", "libnvidia-ml.so"] {
            match Nvml::builder().lib_path(OsStr::new(lib)).init() {
                Ok(n) => return Some(n),
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::debug!("NVML unavailable (no NVIDIA GPUs): {e}");
        }
        None
    })
    .as_ref()
}

/// Every NVIDIA GPU NVML reports (it honours CUDA_VISIBLE_DEVICES only for CUDA, not for NVML: the
/// index here is NVML's). A device that fails to answer is skipped with a warning.
pub fn probe_nvidia() -> Vec<GpuInfo> {
    let Some(nvml) = nvml() else {
        return Vec::new();
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("NVML: cannot count devices: {e}");
            return Vec::new();
        }
    };
    let mut gpus = Vec::new();
    for i in 0..count {
        let dev = match nvml.device_by_index(i) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("NVML: device {i}: {e}");
                continue;
            }
        };
        let mem = match dev.memory_info() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("NVML: device {i} memory: {e}");
                continue;
            }
        };
        gpus.push(GpuInfo {
            index: i as usize,
            vendor: Vendor::Nvidia,
            name: dev.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
            arch: dev
                .cuda_compute_capability()
                .map(|c| format!("sm_{}{}", c.major, c.minor))
                .unwrap_or_else(|_| "unknown".into()),
            device_id: None,
            pci_bus: dev.pci_info().ok().map(|p| p.bus_id.to_lowercase()),
            uuid: dev.uuid().ok(),
            card: None,
            integrated: false,
            vram_total_bytes: mem.total,
            vram_used_bytes: mem.used,
            busy_ratio: dev
                .utilization_rates()
                .ok()
                .map(|u| u.gpu.min(100) as f64 / 100.0),
            temperature_celsius: dev
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .map(|t| t as f64),
            power_watts: dev.power_usage().ok().map(|mw| mw as f64 / 1000.0),
        });
    }
    gpus
}
