//! The ROCm runtime under the GPU backend ([`HipBackend`], cargo feature `rocm`): the HIP runtime through
//! `hip-sys` (linked: the ROCm image carries libamdhip64), Kiln's kernels compiled for the device's exact
//! `gfx` target by hipRTC ([`super::hiprtc`]) and cached on disk like the CUDA backend's PTX.
//!
//! Differences from CUDA worth knowing: no BLAS yet (prefill products and attention take the kernels'
//! own paths, as the CUDA backend does without cuBLAS); a host-to-device copy waits for its stream
//! (HIP may read pageable host memory after the call returns); and only 32-lane GPUs (RDNA, the
//! RX 7900 XTX's gfx1100 among them): the launches are sized for 32-lane warps, so CDNA's 64-lane
//! wavefronts (gfx90a, gfx942) are refused with a message until they are sized for both.

use super::backend::{GpuBackend, GpuKvCache, GpuTensor, GpuWeight};
use super::runtime::{dev_err, GemmF16, LaunchConfig, Runtime};
use crate::backend::{BackendError, Result};
use hip_sys::hiprt as hip;
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::RwLock;

/// [`crate::backend::Backend`] on an AMD GPU.
pub type HipBackend = GpuBackend<HipRuntime>;
pub type HipTensor = GpuTensor<HipRuntime>;
pub type HipWeight = GpuWeight<HipRuntime>;
pub type HipKvCache = GpuKvCache<HipRuntime>;

impl HipBackend {
    /// The backend on ROCm device `ordinal`, its kernels compiled for it (or taken from the cache).
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(GpuBackend::with_runtime(
            HipRuntime::open(ordinal)?,
            ordinal,
        ))
    }
}

fn check(what: &str, e: hip::hipError_t) -> Result<()> {
    if e == hip::hipError_t::hipSuccess {
        return Ok(());
    }
    // SAFETY: HIP returns a static string for every error code.
    let msg = unsafe { CStr::from_ptr(hip::hipGetErrorString(e)) }.to_string_lossy();
    Err(dev_err::<HipRuntime>(what, format!("{msg} ({e:?})")))
}

/// How many AMD GPUs the HIP runtime sees (0 where there is none, or no driver).
pub fn device_count() -> usize {
    let mut n = 0;
    // SAFETY: writes one int.
    let e = unsafe { hip::hipGetDeviceCount(&mut n) };
    if e == hip::hipError_t::hipSuccess {
        n.max(0) as usize
    } else {
        0
    }
}

/// Device memory from `hipMalloc`, freed on drop.
pub struct HipMem {
    ptr: *mut c_void,
}

// SAFETY: a device address, usable from any thread of the process.
unsafe impl Send for HipMem {}
unsafe impl Sync for HipMem {}

impl Drop for HipMem {
    fn drop(&mut self) {
        // SAFETY: allocated by hipMalloc and freed once; hipFree waits for work that may use it.
        unsafe { hip::hipFree(self.ptr) };
    }
}

/// A kernel of the loaded module.
#[derive(Clone, Copy)]
pub struct HipFunction(hip::hipFunction_t);

// SAFETY: a handle into the loaded module, valid on every thread while the module is loaded.
unsafe impl Send for HipFunction {}
unsafe impl Sync for HipFunction {}

/// One AMD GPU: its stream and Kiln's kernels.
pub struct HipRuntime {
    device: i32,
    stream: hip::hipStream_t,
    module: hip::hipModule_t,
    /// Kernels looked up by name on first use.
    funcs: RwLock<HashMap<String, HipFunction>>,
    name: String,
    /// The `gfx` target with its features, as hipRTC takes it (`gfx1100`, `gfx90a:sramecc+:xnack-`).
    pub arch: String,
    compute_units: usize,
}

// SAFETY: HIP's stream and module handles may be used from any thread; every call selects the device.
unsafe impl Send for HipRuntime {}
unsafe impl Sync for HipRuntime {}

impl HipRuntime {
    pub fn open(ordinal: usize) -> Result<Self> {
        let n = device_count();
        if n == 0 {
            return Err(BackendError::Device(
                "rocm: no AMD GPU is visible to the HIP runtime (no device, or no amdgpu driver)"
                    .into(),
            ));
        }
        if ordinal >= n {
            return Err(BackendError::Device(format!(
                "rocm: device {ordinal} requested, {n} present"
            )));
        }
        let device = ordinal as i32;
        // SAFETY: plain-data out-parameters of the sizes HIP writes.
        let (name, arch, compute_units, warp_size) = unsafe {
            check("selecting the device", hip::hipSetDevice(device))?;
            let mut props: hip::hipDeviceProp_t = std::mem::zeroed();
            check(
                "device properties",
                hip::hipGetDeviceProperties(&mut props, device),
            )?;
            (
                CStr::from_ptr(props.name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                CStr::from_ptr(props.gcnArchName.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                props.multiProcessorCount.max(1) as usize,
                props.warpSize,
            )
        };
        if warp_size != 32 {
            // The backend sizes its launches for 32-lane warps (rows per block, split counts).
            return Err(BackendError::Device(format!(
                "rocm: {name} ({arch}) runs {warp_size}-lane wavefronts; the ROCm backend supports \
                 32-lane GPUs (RDNA: gfx10xx, gfx11xx, gfx12xx) so far"
            )));
        }
        let src = super::single_source();
        let code = super::cached_build(&src, &format!("{}.co", arch.replace(':', "_")), || {
            super::hiprtc::compile_source(&src, &arch)
        })?;
        let mut module: hip::hipModule_t = std::ptr::null_mut();
        let mut stream: hip::hipStream_t = std::ptr::null_mut();
        // SAFETY: `code` is a complete code object for this device; the handles are written by HIP.
        unsafe {
            check(
                "loading Kiln's kernels",
                hip::hipModuleLoadData(&mut module, code.as_ptr().cast()),
            )?;
            check("creating a stream", hip::hipStreamCreate(&mut stream))?;
        }
        Ok(HipRuntime {
            device,
            stream,
            module,
            funcs: RwLock::new(HashMap::new()),
            name,
            arch,
            compute_units,
        })
    }

    /// Makes this device current on the calling thread (HIP's current device is per thread).
    fn bind(&self) -> Result<()> {
        // SAFETY: selects a device that exists (checked at open).
        check("selecting the device", unsafe {
            hip::hipSetDevice(self.device)
        })
    }

    fn malloc(&self, bytes: usize) -> Result<HipMem> {
        self.bind()?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: writes one pointer.
        let e = unsafe { hip::hipMalloc(&mut ptr, bytes.max(1)) };
        if e == hip::hipError_t::hipErrorOutOfMemory {
            return Err(BackendError::OutOfMemory {
                device: "rocm".into(),
                bytes: bytes as u64,
            });
        }
        check("allocating", e)?;
        Ok(HipMem { ptr })
    }
}

impl Drop for HipRuntime {
    fn drop(&mut self) {
        // SAFETY: the handles were created at open and are released once, after queued work.
        unsafe {
            hip::hipStreamSynchronize(self.stream);
            hip::hipStreamDestroy(self.stream);
            hip::hipModuleUnload(self.module);
        }
    }
}

impl Runtime for HipRuntime {
    type Mem = HipMem;
    type Func = HipFunction;
    const VENDOR: &'static str = "rocm";

    fn alloc_zeroed(&self, bytes: usize) -> Result<HipMem> {
        let mem = self.malloc(bytes)?;
        // SAFETY: clears the whole allocation, in stream order.
        check("clearing", unsafe {
            hip::hipMemsetAsync(mem.ptr, 0, bytes.max(1), self.stream)
        })?;
        Ok(mem)
    }

    fn alloc(&self, bytes: usize) -> Result<HipMem> {
        self.malloc(bytes)
    }

    fn addr(&self, mem: &HipMem) -> u64 {
        mem.ptr as u64
    }

    fn htod(&self, src: &[u8], dst: &mut HipMem, offset: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked that offset + src.len() lies inside `dst`; the copy is waited for
        // before `src` goes back to the caller.
        unsafe {
            let to = (dst.ptr as *mut u8).add(offset) as *mut c_void;
            check(
                "copying to the device",
                hip::hipMemcpyHtoDAsync(to, src.as_ptr() as *mut c_void, src.len(), self.stream),
            )?;
            check(
                "copying to the device",
                hip::hipStreamSynchronize(self.stream),
            )
        }
    }

    fn dtoh(&self, src: &HipMem, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked the range; `dst` is read only after a synchronize.
        unsafe {
            let from = (src.ptr as *mut u8).add(offset) as *mut c_void;
            check(
                "copying from the device",
                hip::hipMemcpyDtoHAsync(dst.as_mut_ptr().cast(), from, dst.len(), self.stream),
            )
        }
    }

    fn dtod(
        &self,
        src: &HipMem,
        src_offset: usize,
        dst: &mut HipMem,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked both ranges.
        unsafe {
            let from = (src.ptr as *mut u8).add(src_offset) as *mut c_void;
            let to = (dst.ptr as *mut u8).add(dst_offset) as *mut c_void;
            check(
                "copying on the device",
                hip::hipMemcpyDtoDAsync(to, from, bytes, self.stream),
            )
        }
    }

    fn func(&self, name: &str) -> Result<HipFunction> {
        if let Some(&f) = self
            .funcs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(f);
        }
        let c_name = CString::new(name).map_err(|e| dev_err::<Self>("kernel name", e))?;
        let mut f: hip::hipFunction_t = std::ptr::null_mut();
        // SAFETY: looks a NUL-terminated name up in the loaded module.
        check(&format!("kernel {name}"), unsafe {
            hip::hipModuleGetFunction(&mut f, self.module, c_name.as_ptr())
        })?;
        let f = HipFunction(f);
        self.funcs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), f);
        Ok(f)
    }

    unsafe fn launch(
        &self,
        func: &HipFunction,
        cfg: LaunchConfig,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.bind()?;
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        check(
            "launching a kernel",
            hip::hipModuleLaunchKernel(
                func.0,
                g.0,
                g.1,
                g.2,
                b.0,
                b.1,
                b.2,
                cfg.shared_mem_bytes,
                self.stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            ),
        )
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: waits on the stream created at open.
        check("synchronize", unsafe {
            hip::hipStreamSynchronize(self.stream)
        })
    }

    fn memory_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two sizes.
        check("memory info", unsafe {
            hip::hipMemGetInfo(&mut free, &mut total)
        })?;
        Ok((free, total))
    }

    fn multiprocessors(&self) -> usize {
        self.compute_units
    }

    fn device_name(&self) -> &str {
        &self.name
    }

    fn has_blas(&self) -> bool {
        false
    }

    unsafe fn gemm_f16(&self, _: &GemmF16) -> Result<()> {
        Err(dev_err::<Self>("matmul", "no BLAS on the ROCm backend yet"))
    }
}
