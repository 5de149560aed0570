//! The residual stream's RMSNorm launches (kernels/gpu/norm.cu): a block per row, or for a few long rows
//! (decode and verify) a block per slice of a row whose blocks meet at a barrier (`rms_norm_split`).

use super::{norm_threads, u32_arg, GpuBackend, GpuWeight};
use crate::backend::Result;
use crate::gpu::runtime::{LaunchConfig, Runtime};

/// The most rows the split form takes: every block of them must be resident at once (8 rows of the 27B's
/// 5,120 values are 160 blocks of 128 threads), and it is the verify batch's limit.
const SPLIT_MAX_ROWS: usize = 8;
/// Rows shorter than this keep one block (few values a thread there, so no barrier to pay for).
const SPLIT_MIN_DIM: usize = 2048;
/// A split block's threads and the values of a row it takes (NORM_SPLIT_THREADS, NORM_SPLIT_SLICE).
const SPLIT_THREADS: u32 = 128;
const SPLIT_SLICE: usize = 2 * SPLIT_THREADS as usize;

/// A norm's addresses: the rows `x` (updated to x + y when `y` is not null), the optional weight (null:
/// none) and the output.
pub(super) struct NormArgs {
    pub x: u64,
    pub y: u64,
    pub weight: u64,
    pub out: u64,
}

impl<R: Runtime> GpuBackend<R> {
    /// The weight's address for a norm over `dim` values (0: no weight).
    pub(super) fn norm_weight(
        &self,
        op: &'static str,
        weight: Option<&GpuWeight<R>>,
        dim: usize,
    ) -> Result<u64> {
        match weight {
            Some(w) => self.dense(w, op, dim),
            None => Ok(0),
        }
    }

    /// `rows` norms of `dim` values (the lengths checked by the caller), quantized for the next product
    /// where that applies ([`GpuBackend::producing`]).
    pub(super) fn launch_norm(
        &self,
        op: &'static str,
        a: NormArgs,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let d = u32_arg(op, dim)?;
        let r = u32_arg(op, rows)?;
        let NormArgs { x, y, weight, out } = a;
        let split = self.norm_split && rows <= SPLIT_MAX_ROWS && dim >= SPLIT_MIN_DIM;
        let (name, cfg, partials, sync) = if split {
            let slices = dim.div_ceil(SPLIT_SLICE);
            let mut s = self.lock_scratch();
            let cfg = LaunchConfig {
                grid_dim: (u32_arg(op, slices)?, r, 1),
                block_dim: (SPLIT_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            (
                "rms_norm_split",
                cfg,
                self.ensure(&mut s.norm_partials, rows * slices)?,
                // Fixed size: allocated (zeroed) once, and every launch leaves the counts at zero.
                self.ensure(&mut s.norm_sync, 2 * SPLIT_MAX_ROWS)?,
            )
        } else {
            let cfg = LaunchConfig {
                grid_dim: (r, 1, 1),
                block_dim: (norm_threads(dim), 1, 1),
                shared_mem_bytes: 0,
            };
            ("rms_norm", cfg, 0u64, 0u64)
        };
        self.producing(out, rows, dim, |yq, yd| {
            launch!(self, name, cfg, &x, &y, &weight, &d, &eps, &out, &yq, &yd, &partials, &sync)
        })
    }
}
