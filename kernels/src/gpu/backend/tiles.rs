//! The tiled layout of Q4_K and Q5_K weights for the tensor-core products (kernels/gpu/matvec.cu,
//! `qk_frags_tile`), written once when a weight is loaded. Each 16-row group keeps its byte range, but
//! holds one tile a super-block: the 16 rows' 16-byte heads, (Q5_K) their 32 bytes of fifth bits each,
//! then 2,048 bytes of nibbles, every 512-byte run being a warp's 16 bytes a lane in lane order (lane
//! 4g + t: a half of chunk t of row g or g + 8). A thread's nibbles then arrive in whole 16-byte loads and
//! each load instruction reads 512 consecutive bytes, where GGUF's row order gave 8 rows an instruction:
//! the 27B's Q4_K products ran 14-22% faster on an H100 with the same arithmetic, bit for bit
//! (bench/README.md, session 16). `qk_tile_offset` in kernels/gpu/quant.h defines the layout.

use super::{u32_arg, GpuBackend};
use crate::backend::Result;
use crate::gpu::runtime::{DevBuf, LaunchConfig, Runtime};
use crate::quant::GgmlType;

/// Rows a tile spans (the mma's M).
const TILE_ROWS: usize = 16;

/// The most bytes staged on the device at once while tiling (whole groups; at least one).
const STAGING_BYTES: usize = 64 << 20;

/// Whether weights of `ty` with `rows` rows can be tiled: Q4_K or Q5_K in whole 16-row groups.
pub(super) fn tileable(ty: GgmlType, rows: usize) -> bool {
    matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K) && rows > 0 && rows.is_multiple_of(TILE_ROWS)
}

impl<R: Runtime> GpuBackend<R> {
    /// The matrix whose rows are `parts` one after another (`rows` rows of a [`tileable`] `ty` in all,
    /// GGUF's layout) in device memory, tiled: staged a few groups at a time and tiled by the `tile_qk`
    /// kernel, so loading costs one extra pass over device memory instead of one over host memory.
    pub(super) fn upload_tiled(
        &self,
        ty: GgmlType,
        parts: &[&[u8]],
        rows: usize,
    ) -> Result<DevBuf<R, u8>> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let group_bytes = total / rows * TILE_ROWS;
        let row_bytes = u32_arg("load_weight", total / rows)?;
        let five = (ty == GgmlType::Q5_K) as u32;
        let data = self.alloc_zeros::<u8>(total)?;
        let chunk = (STAGING_BYTES / group_bytes).max(1) * group_bytes;
        let mut staging = self.alloc_zeros::<u8>(chunk.min(total))?;
        for start in (0..total).step_by(chunk) {
            let end = (start + chunk).min(total);
            // The parts' bytes that fall in start..end, at their offsets in the staging buffer (the
            // stream orders these copies after the previous chunk's tiling).
            let mut at = 0;
            for p in parts {
                let (lo, hi) = (start.max(at), end.min(at + p.len()));
                if lo < hi {
                    staging.write(&self.rt, lo - start, &p[lo - at..hi - at])?;
                }
                at += p.len();
            }
            let n_pieces = ((end - start) / 8) as u64;
            let (src, dst) = (self.ptr(&staging), self.ptr(&data) + start as u64);
            let cfg = LaunchConfig {
                grid_dim: (n_pieces.div_ceil(256).min(1 << 16) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self, "tile_qk", cfg, &src, &dst, &n_pieces, &row_bytes, &five)?;
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_groups_of_k_quants_are_tileable() {
        assert!(tileable(GgmlType::Q4_K, 32));
        assert!(tileable(GgmlType::Q5_K, 16));
        assert!(!tileable(GgmlType::Q4_K, 40));
        assert!(!tileable(GgmlType::Q4_K, 0));
        assert!(!tileable(GgmlType::Q6_K, 32));
        assert!(!tileable(GgmlType::Q8_0, 32));
    }
}
