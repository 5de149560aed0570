//! What the GPU backend needs of a vendor's runtime: device memory, copies and kernel launches ordered on
//! one stream, and (optionally) an f16 matrix product from the vendor's BLAS. Everything else — which
//! kernel runs with which arguments, scratch sizing, the ops themselves — is written once in
//! [`super::backend`], so the CUDA and ROCm backends differ only here.

use crate::backend::{BackendError, Result};
use std::ffi::c_void;
use std::marker::PhantomData;

/// A launch's geometry (threads per block, blocks, dynamic shared memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid_dim: (u32, u32, u32),
    pub block_dim: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

/// C = alpha · op(A) · B, `batch` times (A, B f16; C f32; f32 accumulation), column-major as BLAS sees
/// it; `trans_a` transposes A. `strides`: the element distances between consecutive products' A, B
/// and C (None: one product through the plain GEMM entry point).
#[derive(Clone, Copy, Debug)]
pub struct GemmF16 {
    pub trans_a: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: u64,
    pub lda: usize,
    pub b: u64,
    pub ldb: usize,
    pub c: u64,
    pub ldc: usize,
    pub batch: usize,
    pub strides: Option<[usize; 3]>,
}

/// A vendor's GPU runtime for one device and one stream.
pub trait Runtime: Send + Sync + Sized + 'static {
    /// An owned device allocation, freed when dropped.
    type Mem: Send + Sync;
    /// A loaded kernel (a cheap handle).
    type Func: Clone + Send + Sync;

    /// Names the vendor in errors and in the backend's name ("cuda", "rocm").
    const VENDOR: &'static str;

    /// `bytes` of device memory, zeroed in stream order (at least one byte is allocated).
    fn alloc_zeroed(&self, bytes: usize) -> Result<Self::Mem>;
    /// `bytes` of device memory to be overwritten before it is read (at least one byte).
    fn alloc(&self, bytes: usize) -> Result<Self::Mem>;
    /// The allocation's device address.
    fn addr(&self, mem: &Self::Mem) -> u64;
    /// Queues a copy of `src` to `dst` from byte `offset`; `src` may be reused when this returns.
    /// (Callers check the range.)
    fn htod(&self, src: &[u8], dst: &mut Self::Mem, offset: usize) -> Result<()>;
    /// Queues a copy of `dst.len()` bytes of `src` from byte `offset` into `dst`; valid after
    /// [`Runtime::synchronize`].
    fn dtoh(&self, src: &Self::Mem, offset: usize, dst: &mut [u8]) -> Result<()>;
    /// Queues a copy of `bytes` bytes between allocations (byte offsets).
    fn dtod(
        &self,
        src: &Self::Mem,
        src_offset: usize,
        dst: &mut Self::Mem,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()>;
    /// The kernel named `name` in Kiln's module.
    fn func(&self, name: &str) -> Result<Self::Func>;
    /// Queues a launch.
    ///
    /// # Safety
    /// `args` must point at values of exactly the kernel's parameter types, in order, and every device
    /// address among them must point into live allocations the kernel may touch.
    unsafe fn launch(
        &self,
        func: &Self::Func,
        cfg: LaunchConfig,
        args: &mut [*mut c_void],
    ) -> Result<()>;
    /// Waits for everything queued.
    fn synchronize(&self) -> Result<()>;
    /// (free, total) device memory in bytes.
    fn memory_info(&self) -> Result<(usize, usize)>;
    /// Streaming multiprocessors (NVIDIA) or compute units (AMD).
    fn multiprocessors(&self) -> usize;
    /// The device's marketing name.
    fn device_name(&self) -> &str;
    /// Whether [`Runtime::gemm_f16`] is available (the vendor's BLAS library was found).
    fn has_blas(&self) -> bool;
    /// Queues `g` on the vendor's BLAS.
    ///
    /// # Safety
    /// Every operand must point into live allocations large enough for its shape and strides.
    unsafe fn gemm_f16(&self, g: &GemmF16) -> Result<()>;
}

/// An error of the device named by vendor.
pub(crate) fn dev_err<R: Runtime>(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Device(format!("{}: {what}: {e}", R::VENDOR))
}

/// Values a device buffer may hold: plain numbers whose all-zero bytes are zero.
pub trait DevValue: bytemuck::Pod + Send + Sync {}
impl DevValue for f32 {}
impl DevValue for u8 {}
impl DevValue for u16 {}
impl DevValue for u32 {}
impl DevValue for u64 {}

/// `len` values of `T` in device memory.
pub struct DevBuf<R: Runtime, T: DevValue> {
    mem: R::Mem,
    len: usize,
    _values: PhantomData<T>,
}

impl<R: Runtime, T: DevValue> DevBuf<R, T> {
    /// `len` zeros.
    pub fn zeros(rt: &R, len: usize) -> Result<Self> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| BackendError::Device("a buffer size overflows".into()))?;
        Ok(DevBuf {
            mem: rt.alloc_zeroed(bytes)?,
            len,
            _values: PhantomData,
        })
    }

    /// A copy of `data`.
    pub fn upload(rt: &R, data: &[T]) -> Result<Self> {
        let mut buf = DevBuf {
            mem: rt.alloc(std::mem::size_of_val(data))?,
            len: data.len(),
            _values: PhantomData,
        };
        buf.write(rt, 0, data)?;
        Ok(buf)
    }

    /// Queues a copy of `data` to values `at..` (which must exist).
    pub fn write(&mut self, rt: &R, at: usize, data: &[T]) -> Result<()> {
        self.check(at, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        rt.htod(
            bytemuck::cast_slice(data),
            &mut self.mem,
            at * size_of::<T>(),
        )
    }

    /// Queues a copy of values `at..at + out.len()` into `out` (valid after a synchronize).
    pub fn read(&self, rt: &R, at: usize, out: &mut [T]) -> Result<()> {
        self.check(at, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        rt.dtoh(
            &self.mem,
            at * size_of::<T>(),
            bytemuck::cast_slice_mut(out),
        )
    }

    /// Queues a copy of `n` values of `src` from `src_at` to values `at..` of this buffer.
    pub fn copy_from(
        &mut self,
        rt: &R,
        at: usize,
        src: &Self,
        src_at: usize,
        n: usize,
    ) -> Result<()> {
        self.check(at, n)?;
        src.check(src_at, n)?;
        if n == 0 {
            return Ok(());
        }
        let t = size_of::<T>();
        rt.dtod(&src.mem, src_at * t, &mut self.mem, at * t, n * t)
    }

    fn check(&self, at: usize, n: usize) -> Result<()> {
        if at.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(BackendError::Device(format!(
                "values {at}..{at}+{n} outside a device buffer of {}",
                self.len
            )));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of value 0.
    pub fn addr(&self, rt: &R) -> u64 {
        rt.addr(&self.mem)
    }

    /// The device address of value `i` (callers check `i` against the length).
    pub fn addr_of(&self, rt: &R, i: usize) -> u64 {
        self.addr(rt) + (i * size_of::<T>()) as u64
    }
}
