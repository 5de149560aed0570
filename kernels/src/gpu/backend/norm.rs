//! The residual stream's RMSNorm launches (kernels/gpu/norm.cu): a block per row, or for a few long rows
//! (decode and verify) a block per slice of a row, each summing the whole row itself (`rms_norm_split`).

use super::{norm_threads, u32_arg, GpuBackend, GpuWeight};
use crate::backend::Result;
use crate::gpu::runtime::{LaunchConfig, Runtime};

/// The most rows the split form takes (the verify batch's limit): each of a row's blocks reads the whole
/// row, which pays for a few rows, not for a prompt.
const SPLIT_MAX_ROWS: usize = 8;
/// Rows shorter than this keep one block (few values a thread there: splitting them buys nothing).
const SPLIT_MIN_DIM: usize = 2048;
/// A split block's threads, a value of the row each (NORM_SPLIT_THREADS).
const SPLIT_THREADS: u32 = 256;

/// A norm's addresses: the rows `x`, the residual `y` (null: none) and where x + y goes (`sum`, not x:
/// the split form's blocks read whole rows of x while others store), the optional weight (null: none)
/// and the output.
pub(super) struct NormArgs {
    pub x: u64,
    pub y: u64,
    pub sum: u64,
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
        let NormArgs {
            x,
            y,
            sum,
            weight,
            out,
        } = a;
        // The split form's float4 loads need rows of whole 16-byte units.
        let split = self.norm_split
            && rows <= SPLIT_MAX_ROWS
            && dim >= SPLIT_MIN_DIM
            && dim.is_multiple_of(4);
        let (name, cfg) = if split {
            let slices = dim.div_ceil(SPLIT_THREADS as usize);
            let cfg = LaunchConfig {
                grid_dim: (u32_arg(op, slices)?, r, 1),
                block_dim: (SPLIT_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            ("rms_norm_split", cfg)
        } else {
            let cfg = LaunchConfig {
                grid_dim: (r, 1, 1),
                block_dim: (norm_threads(dim), 1, 1),
                shared_mem_bytes: 0,
            };
            ("rms_norm", cfg)
        };
        self.producing(out, rows, dim, |yq, yd| {
            launch!(self, name, cfg, &x, &y, &weight, &d, &eps, &sum, &out, &yq, &yd)
        })
    }
}
