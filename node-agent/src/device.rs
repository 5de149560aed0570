//! Where the model runs: `--device auto|cpu|cuda[:N]|rocm[:N]`, and running a job on the backend it
//! names (the engine is generic over [`Backend`], so the choice is made once, here).

use anyhow::{Context, Result};
use kiln_kernels::backend::Backend;
use kiln_kernels::cpu::CpuBackend;
use kiln_kernels::gpu::cuda::CudaBackend;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The first CUDA GPU when a driver and a device are present, else the first AMD GPU (in a build
    /// with ROCm), else the CPU.
    Auto,
    Cpu,
    /// NVIDIA GPU N.
    Cuda(usize),
    /// AMD GPU N.
    Rocm(usize),
}

impl std::str::FromStr for Device {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Device> {
        let index = |kind: &str, n: &str| -> Result<usize> {
            n.parse().map_err(|_| {
                anyhow::anyhow!("bad {kind} device index in `{s}` (expected {kind}:N)")
            })
        };
        match s.split_once(':') {
            None if s == "auto" => Ok(Device::Auto),
            None if s == "cpu" => Ok(Device::Cpu),
            None if s == "cuda" => Ok(Device::Cuda(0)),
            None if s == "rocm" => Ok(Device::Rocm(0)),
            Some(("cuda", n)) => index("cuda", n).map(Device::Cuda),
            Some(("rocm", n)) => index("rocm", n).map(Device::Rocm),
            _ => anyhow::bail!("unknown device `{s}` (auto, cpu, cuda, cuda:N, rocm, rocm:N)"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => write!(f, "auto"),
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Rocm(i) => write!(f, "rocm:{i}"),
        }
    }
}

/// Work that runs on whichever backend the device names.
pub trait OnBackend {
    type Output;
    /// `device` is the resolved device (never `Auto`).
    fn run<B: Backend + 'static>(self, backend: Arc<B>, device: Device) -> Result<Self::Output>;
}

/// Opens the backend `device` names (CPU work on `threads` threads) and runs `job` on it.
pub fn run_on<J: OnBackend>(device: Device, threads: usize, job: J) -> Result<J::Output> {
    let cpu = || Arc::new(CpuBackend::new(threads.clamp(1, 1024)));
    match device {
        Device::Cpu => job.run(cpu(), Device::Cpu),
        Device::Cuda(i) => {
            let backend = CudaBackend::new(i)
                .with_context(|| format!("opening CUDA device {i} (--device cuda:{i})"))?;
            job.run(Arc::new(backend), device)
        }
        Device::Rocm(i) => run_on_rocm(i, job),
        Device::Auto => match CudaBackend::new(0) {
            Ok(backend) => {
                tracing::info!("--device auto: running on CUDA device 0");
                job.run(Arc::new(backend), Device::Cuda(0))
            }
            Err(e) if rocm_devices() > 0 => {
                tracing::info!("--device auto: running on ROCm device 0 (no CUDA device: {e})");
                run_on_rocm(0, job)
            }
            Err(e) => {
                tracing::info!("--device auto: running on the CPU (no CUDA device: {e})");
                job.run(cpu(), Device::Cpu)
            }
        },
    }
}

/// AMD GPUs the HIP runtime sees (none in a build without ROCm).
fn rocm_devices() -> usize {
    #[cfg(feature = "rocm")]
    return kiln_kernels::gpu::hip::device_count();
    #[cfg(not(feature = "rocm"))]
    0
}

#[cfg(feature = "rocm")]
fn run_on_rocm<J: OnBackend>(i: usize, job: J) -> Result<J::Output> {
    let backend = kiln_kernels::gpu::hip::HipBackend::new(i)
        .with_context(|| format!("opening ROCm device {i} (--device rocm:{i})"))?;
    job.run(Arc::new(backend), Device::Rocm(i))
}

#[cfg(not(feature = "rocm"))]
fn run_on_rocm<J: OnBackend>(i: usize, _: J) -> Result<J::Output> {
    anyhow::bail!(
        "--device rocm:{i}: this kiln-agent was built without ROCm (the ROCm image's build has it: \
         cargo build --features rocm); use --device cpu or cuda"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (s, d) in [
            ("auto", Device::Auto),
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
            ("rocm", Device::Rocm(0)),
            ("rocm:1", Device::Rocm(1)),
        ] {
            assert_eq!(s.parse::<Device>().unwrap(), d);
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:x", "cuda:", "rocm:-1", "cpu:0", ""] {
            let e = bad.parse::<Device>().unwrap_err().to_string();
            assert!(e.contains(bad) || bad.is_empty(), "{e}");
        }
    }

    /// Without an AMD GPU (or without ROCm in the build) `--device rocm` is an error that says why.
    #[test]
    fn rocm_is_refused_with_a_reason() {
        struct Never;
        impl OnBackend for Never {
            type Output = ();
            fn run<B: Backend + 'static>(self, _: Arc<B>, _: Device) -> Result<()> {
                panic!("must not run")
            }
        }
        if rocm_devices() > 0 {
            return;
        }
        let e = format!("{:#}", run_on(Device::Rocm(0), 1, Never).unwrap_err());
        let why = if cfg!(feature = "rocm") {
            "no AMD GPU"
        } else {
            "built without ROCm"
        };
        assert!(e.contains(why), "{e}");
    }
}
