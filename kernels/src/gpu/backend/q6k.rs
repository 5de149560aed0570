//! Kiln's device layout of Q6_K weights (kernels/gpu/quant.h, `q6k_body`), written as a weight is
//! uploaded. GGUF's 210-byte super-blocks are only 2-byte aligned, so a thread's 32-byte runs of low
//! nibbles and high bits came in 9 word loads and 8 funnel shifts each, and the 27B's Q6_K FFN down
//! projections were a decode step's slowest products a byte. Here a row of `nb` super-blocks is their
//! 208-byte bodies (ql, qh, the 16 scales) back to back, then their `nb` f16 scales `d`, then zeros to a
//! multiple of 16 bytes: every body starts 16-byte aligned and a run comes in two 16-byte loads. The
//! bytes are GGUF's, moved; the arithmetic reading them is unchanged.

use super::{shape_err, GpuBackend};
use crate::backend::Result;
use crate::gpu::runtime::{DevBuf, Runtime};
use crate::quant::GgmlType;

/// A GGUF Q6_K super-block: ql[128], qh[64], 16 scales, then d (f16).
const BLOCK_BYTES: usize = 210;
/// The part of it before d.
const BODY_BYTES: usize = 208;
/// Values a super-block holds.
const BLOCK_VALUES: usize = 256;
/// Host bytes packed at a time while uploading (whole rows; at least one).
const STAGING_BYTES: usize = 64 << 20;

/// Bytes of a row of `cols` values of `ty` in device memory (`None`: not whole blocks).
pub(super) fn device_row_bytes(ty: GgmlType, cols: usize) -> Option<usize> {
    let bytes = ty.bytes_for(cols)?;
    Some(if ty == GgmlType::Q6_K {
        bytes.div_ceil(16) * 16
    } else {
        bytes
    })
}

/// Whole rows of `nb` Q6_K super-blocks (`src`, GGUF's bytes) into `dst`, rows of `to` bytes in the
/// device layout.
fn pack_rows(src: &[u8], nb: usize, to: usize, dst: &mut [u8]) {
    for (s, d) in src
        .chunks_exact(nb * BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(to))
    {
        let (bodies, rest) = d.split_at_mut(nb * BODY_BYTES);
        let (scales, pad) = rest.split_at_mut(2 * nb);
        for (b, block) in s.chunks_exact(BLOCK_BYTES).enumerate() {
            bodies[b * BODY_BYTES..(b + 1) * BODY_BYTES].copy_from_slice(&block[..BODY_BYTES]);
            scales[2 * b..2 * b + 2].copy_from_slice(&block[BODY_BYTES..]);
        }
        pad.fill(0);
    }
}

impl<R: Runtime> GpuBackend<R> {
    /// The Q6_K matrix whose rows are `parts` one after another (`cols` values a row, GGUF's layout,
    /// lengths checked by the caller) in device memory, in the device layout: packed on the host a few
    /// rows at a time, so no copy of a whole matrix (the 27B's LM head is 1 GB) is ever held.
    pub(super) fn upload_q6_k(&self, parts: &[&[u8]], cols: usize) -> Result<DevBuf<R, u8>> {
        let (Some(from), Some(to)) = (
            GgmlType::Q6_K.bytes_for(cols),
            device_row_bytes(GgmlType::Q6_K, cols),
        ) else {
            return Err(shape_err(
                "load_weight",
                format!("Q6_K rows of {cols} values are not whole super-blocks"),
            ));
        };
        let nb = cols / BLOCK_VALUES;
        let rows: usize = parts.iter().map(|p| p.len() / from).sum();
        let mut data = self.alloc_zeros::<u8>(rows * to)?;
        let per_chunk = (STAGING_BYTES / to).max(1);
        let mut packed = vec![0u8; per_chunk.min(rows) * to];
        let mut at = 0;
        for p in parts {
            for chunk in p.chunks(per_chunk * from) {
                let n = chunk.len() / from;
                pack_rows(chunk, nb, to, &mut packed[..n * to]);
                data.write(&self.rt, at, &packed[..n * to])?;
                at += n * to;
            }
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_padded_to_16_bytes_for_q6_k_only() {
        assert_eq!(device_row_bytes(GgmlType::Q6_K, 5120), Some(4208)); // 20 blocks: 4200 bytes
        assert_eq!(device_row_bytes(GgmlType::Q6_K, 17408), Some(14288)); // 68 blocks: 14280
        assert_eq!(device_row_bytes(GgmlType::Q6_K, 2048), Some(1680)); // 8 blocks: already whole
        assert_eq!(device_row_bytes(GgmlType::Q4_K, 5120), Some(2880));
        assert_eq!(device_row_bytes(GgmlType::Q6_K, 100), None);
    }

    #[test]
    fn bodies_then_scales_then_zeros() {
        // Two rows of three super-blocks, every byte naming its row, block and offset.
        let (cols, nb) = (3 * BLOCK_VALUES, 3);
        let byte = |r: usize, b: usize, o: usize| (r * 97 + b * 31 + o) as u8;
        let src: Vec<u8> = (0..2)
            .flat_map(|r| (0..nb).flat_map(move |b| (0..BLOCK_BYTES).map(move |o| byte(r, b, o))))
            .collect();
        let to = device_row_bytes(GgmlType::Q6_K, cols).unwrap();
        assert_eq!(to, 640); // 630 bytes of blocks and 10 of zeros
        let mut dst = vec![0xAAu8; 2 * to];
        pack_rows(&src, nb, to, &mut dst);
        for r in 0..2 {
            let row = &dst[r * to..(r + 1) * to];
            for b in 0..nb {
                for o in 0..BODY_BYTES {
                    assert_eq!(
                        row[b * BODY_BYTES + o],
                        byte(r, b, o),
                        "row {r} block {b} byte {o}"
                    );
                }
                assert_eq!(row[nb * BODY_BYTES + 2 * b], byte(r, b, 208));
                assert_eq!(row[nb * BODY_BYTES + 2 * b + 1], byte(r, b, 209));
            }
            assert!(row[nb * BLOCK_BYTES..].iter().all(|&z| z == 0));
        }
    }
}
