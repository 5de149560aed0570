//! The CUDA device: driver context, stream and the kernel module, all loaded at run time. The driver
//! (libcuda) and NVRTC are opened with dlopen by `cudarc`, so a binary built here runs unchanged on machines
//! without them; asking for a CUDA device there is an error, not a crash.

use crate::backend::{BackendError, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::Arc;

fn dev_err(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Device(format!("cuda: {what}: {e}"))
}

pub struct CudaDevice {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    pub name: String,
    pub compute_capability: (i32, i32),
}

/// Whether a CUDA driver can be loaded on this machine (without touching it otherwise).
pub fn driver_present() -> bool {
    // SAFETY: only probes for the library with dlopen.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

impl CudaDevice {
    pub fn open(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(BackendError::Device(
                "cuda: no NVIDIA driver (libcuda.so) on this machine".into(),
            ));
        }
        let n = CudaContext::device_count().map_err(|e| dev_err("counting devices", e))?;
        if ordinal >= n.max(0) as usize {
            return Err(BackendError::Device(format!(
                "cuda: device {ordinal} requested, {n} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("creating a context", e))?;
        // One stream orders every op, so cudarc's per-buffer event tracking is pure overhead.
        // SAFETY: no buffer is ever used from another stream.
        unsafe { ctx.disable_event_tracking() };
        let name = ctx.name().map_err(|e| dev_err("device name", e))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| dev_err("compute capability", e))?;
        let ptx = compiled_kernels(cc)?;
        let names = ptx_entries(&ptx);
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| dev_err("loading kernels", e))?;
        // Functions are looked up once here; a launch afterwards finds its kernel in a map.
        let mut funcs = HashMap::new();
        for n in names {
            let f = module
                .load_function(&n)
                .map_err(|e| dev_err(&format!("kernel {n}"), e))?;
            funcs.insert(n, f);
        }
        let stream = ctx.default_stream();
        Ok(CudaDevice {
            ctx,
            stream,
            _module: module,
            funcs,
            name,
            compute_capability: cc,
        })
    }

    pub fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| BackendError::Device(format!("cuda: no kernel named {name}")))
    }
}

/// Names of the `.entry` functions in PTX text: every kernel, macro-generated ones included.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(".visible .entry ")
                .or_else(|| l.strip_prefix(".entry "))?;
            Some(rest.split(['(', ' ']).next()?.to_string())
        })
        .collect()
}

/// Whether NVRTC (libnvrtc.so), the run-time compiler of Kiln's kernels, can be loaded here.
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes for the library with dlopen.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Kiln's kernels (one translation unit, `single_source`) compiled by NVRTC to PTX for `arch`
/// (`compute_90`, ...), with the options the backend uses. Needs no GPU, only libnvrtc.so.
pub fn compile_kernels(arch: &str) -> Result<String> {
    compile_source(super::super::single_source(), arch)
}

fn compile_source(src: String, arch: &str) -> Result<String> {
    if !nvrtc_present() {
        return Err(BackendError::Device(
            "cuda: NVRTC (libnvrtc.so) is needed to compile Kiln's kernels for this GPU and was not found"
                .into(),
        ));
    }
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture={arch}"),
            "-std=c++17".into(),
            "-default-device".into(),
        ],
        ..Default::default()
    };
    Ok(cudarc::nvrtc::compile_ptx_with_opts(src, opts)
        .map_err(|e| dev_err("compiling kernels with NVRTC", format!("{e:?}")))?
        .to_src())
}

/// PTX for the device's architecture: from the on-disk cache when this exact source was compiled for it
/// before, else from NVRTC (then cached).
fn compiled_kernels(cc: (i32, i32)) -> Result<String> {
    let src = super::super::single_source();
    let arch = format!("compute_{}{}", cc.0, cc.1);
    let ptx = super::super::cached_build(&src, &format!("{arch}.ptx"), || {
        Ok(compile_source(src.clone(), &arch)?.into_bytes())
    })?;
    String::from_utf8(ptx).map_err(|e| dev_err("cached kernels", e))
}
