//! The CUDA runtime under the GPU backend ([`CudaBackend`]): the driver, NVRTC and cuBLAS, all loaded at
//! run time by `cudarc`, so a binary built here runs unchanged on machines without them.

mod device;

pub use device::{compile_kernels, driver_present, nvrtc_present, ptx_entries, CudaDevice};

use super::backend::{GpuBackend, GpuKvCache, GpuTensor, GpuWeight};
use super::runtime::{dev_err, GemmF16, LaunchConfig, Runtime};
use crate::backend::{shape_err, BackendError, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::sys::{self as drv_sys, CUfunction};
use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{result as drv, CudaSlice, DevicePtr, DriverError};
use std::ffi::c_void;

/// [`crate::backend::Backend`] on an NVIDIA GPU.
pub type CudaBackend = GpuBackend<CudaRuntime>;
pub type CudaTensor = GpuTensor<CudaRuntime>;
pub type CudaWeight = GpuWeight<CudaRuntime>;
pub type CudaKvCache = GpuKvCache<CudaRuntime>;

impl CudaBackend {
    /// The backend on CUDA device `ordinal`, its kernels compiled for it (or taken from the cache).
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(GpuBackend::with_runtime(
            CudaRuntime::open(ordinal)?,
            ordinal,
        ))
    }
}

/// One CUDA device: its context and stream, Kiln's kernels, and cuBLAS when the library is present.
pub struct CudaRuntime {
    dev: CudaDevice,
    sm_count: usize,
    blas: Option<CudaBlas>,
    /// Launches with programmatic stream serialization (sm_90+; `KILN_CUDA_PDL=0` turns it off): a
    /// kernel launches while the previous one finishes and waits for it on the device
    /// (`grid_dependency_entry` in kernels/gpu/compat.h).
    pdl: bool,
}

impl CudaRuntime {
    pub fn open(ordinal: usize) -> Result<Self> {
        let dev = CudaDevice::open(ordinal)?;
        let sm_count = dev
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| dev_err::<Self>("SM count", e))?
            .max(1) as usize;
        // SAFETY: only probes for the library with dlopen. `KILN_CUDA_BLAS=0` leaves cuBLAS out (prefill
        // then runs on Kiln's own products and split attention), for comparisons.
        let blas_wanted = crate::gpu::switched_on("KILN_CUDA_BLAS");
        let blas = if blas_wanted && unsafe { cudarc::cublas::sys::is_culib_present() } {
            CudaBlas::new(dev.stream.clone()).ok()
        } else {
            None
        };
        let pdl = dev.compute_capability.0 >= 9 && crate::gpu::switched_on("KILN_CUDA_PDL");
        Ok(CudaRuntime {
            dev,
            sm_count,
            blas,
            pdl,
        })
    }

    /// The compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.dev.compute_capability
    }
}

/// A kernel of the loaded module: the driver's handle, copied per launch (no reference counting on the
/// per-token path). The module lives as long as the runtime's [`CudaDevice`].
#[derive(Clone, Copy)]
pub struct CudaKernel(CUfunction);

// SAFETY: a handle into a module that stays loaded while the runtime exists; the driver allows its use
// from any thread with the context current (launch binds it).
unsafe impl Send for CudaKernel {}
unsafe impl Sync for CudaKernel {}

fn alloc_err(bytes: usize, e: DriverError) -> BackendError {
    if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        BackendError::OutOfMemory {
            device: "cuda".into(),
            bytes: bytes as u64,
        }
    } else {
        dev_err::<CudaRuntime>("allocating", e)
    }
}

fn blas_int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape_err("matmul", format!("{v} exceeds cuBLAS's int")))
}

impl Runtime for CudaRuntime {
    type Mem = CudaSlice<u8>;
    type Func = CudaKernel;
    const VENDOR: &'static str = "cuda";

    fn alloc_zeroed(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        self.dev
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| alloc_err(bytes, e))
    }

    fn alloc(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: every caller writes the whole buffer before anything reads it (DevBuf::upload).
        unsafe { self.dev.stream.alloc::<u8>(bytes.max(1)) }.map_err(|e| alloc_err(bytes, e))
    }

    fn addr(&self, mem: &CudaSlice<u8>) -> u64 {
        let (p, _guard) = mem.device_ptr(&self.dev.stream);
        p
    }

    fn htod(&self, src: &[u8], dst: &mut CudaSlice<u8>, offset: usize) -> Result<()> {
        let mut view = dst.slice_mut(offset..offset + src.len());
        self.dev
            .stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| dev_err::<Self>("copying to the device", e))
    }

    fn dtoh(&self, src: &CudaSlice<u8>, offset: usize, dst: &mut [u8]) -> Result<()> {
        let view = src.slice(offset..offset + dst.len());
        self.dev
            .stream
            .memcpy_dtoh(&view, dst)
            .map_err(|e| dev_err::<Self>("copying from the device", e))
    }

    fn dtod(
        &self,
        src: &CudaSlice<u8>,
        src_offset: usize,
        dst: &mut CudaSlice<u8>,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let s = src.slice(src_offset..src_offset + bytes);
        let mut d = dst.slice_mut(dst_offset..dst_offset + bytes);
        self.dev
            .stream
            .memcpy_dtod(&s, &mut d)
            .map_err(|e| dev_err::<Self>("copying on the device", e))
    }

    fn func(&self, name: &str) -> Result<CudaKernel> {
        Ok(CudaKernel(self.dev.func(name)?.cu_function()))
    }

    unsafe fn launch(
        &self,
        func: &CudaKernel,
        cfg: LaunchConfig,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        // The context must be current on the calling thread (the server decodes on its own thread).
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(|e| dev_err::<Self>("binding the context", e))?;
        if self.pdl {
            let mut attr = drv_sys::CUlaunchAttribute {
                id: drv_sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value: drv_sys::CUlaunchAttributeValue {
                    programmaticStreamSerializationAllowed: 1,
                },
            };
            let config = drv_sys::CUlaunchConfig {
                gridDimX: cfg.grid_dim.0,
                gridDimY: cfg.grid_dim.1,
                gridDimZ: cfg.grid_dim.2,
                blockDimX: cfg.block_dim.0,
                blockDimY: cfg.block_dim.1,
                blockDimZ: cfg.block_dim.2,
                sharedMemBytes: cfg.shared_mem_bytes,
                hStream: self.dev.stream.cu_stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            return drv_sys::cuLaunchKernelEx(
                &config,
                func.0,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
            .result()
            .map_err(|e| dev_err::<Self>("launching a kernel", e));
        }
        drv::launch_kernel(
            func.0,
            cfg.grid_dim,
            cfg.block_dim,
            cfg.shared_mem_bytes,
            self.dev.stream.cu_stream(),
            args,
        )
        .map_err(|e| dev_err::<Self>("launching a kernel", e))
    }

    fn synchronize(&self) -> Result<()> {
        self.dev
            .stream
            .synchronize()
            .map_err(|e| dev_err::<Self>("synchronize", e))
    }

    fn memory_info(&self) -> Result<(usize, usize)> {
        self.dev
            .ctx
            .mem_get_info()
            .map_err(|e| dev_err::<Self>("memory info", e))
    }

    fn multiprocessors(&self) -> usize {
        self.sm_count
    }

    fn device_name(&self) -> &str {
        &self.dev.name
    }

    fn has_blas(&self) -> bool {
        self.blas.is_some()
    }

    unsafe fn gemm_f16(&self, g: &GemmF16) -> Result<()> {
        let blas = self
            .blas
            .as_ref()
            .ok_or_else(|| dev_err::<Self>("matmul", "cuBLAS is not loaded"))?;
        let op_a = if g.trans_a {
            blas_sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas_sys::cublasOperation_t::CUBLAS_OP_N
        };
        let (m, n, k) = (blas_int(g.m)?, blas_int(g.n)?, blas_int(g.k)?);
        let (lda, ldb, ldc) = (blas_int(g.lda)?, blas_int(g.ldb)?, blas_int(g.ldc)?);
        let beta = 0.0f32;
        let f16 = blas_sys::cudaDataType_t::CUDA_R_16F;
        let f32 = blas_sys::cudaDataType_t::CUDA_R_32F;
        let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        let (a, b, c) = (
            g.a as *const c_void,
            g.b as *const c_void,
            g.c as *mut c_void,
        );
        let (alpha, beta) = (
            (&g.alpha as *const f32).cast(),
            (&beta as *const f32).cast(),
        );
        let op_n = blas_sys::cublasOperation_t::CUBLAS_OP_N;
        match g.strides {
            None => blas::gemm_ex(
                *blas.handle(),
                op_a,
                op_n,
                m,
                n,
                k,
                alpha,
                a,
                f16,
                lda,
                b,
                f16,
                ldb,
                beta,
                c,
                f32,
                ldc,
                compute,
                algo,
            )
            .map_err(|e| dev_err::<Self>("cublasGemmEx", format!("{e:?}"))),
            Some([sa, sb, sc]) => blas::gemm_strided_batched_ex(
                *blas.handle(),
                op_a,
                op_n,
                m,
                n,
                k,
                alpha,
                a,
                f16,
                lda,
                sa as i64,
                b,
                f16,
                ldb,
                sb as i64,
                beta,
                c,
                f32,
                ldc,
                sc as i64,
                blas_int(g.batch)?,
                compute,
                algo,
            )
            .map_err(|e| dev_err::<Self>("cublasGemmStridedBatchedEx", format!("{e:?}"))),
        }
    }
}
