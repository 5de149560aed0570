//! Sampling on the GPU backend (kernels/gpu/sampling.cu): a row's argmax or its k largest values found
//! where the logits are, so a step reads back an id or k candidates instead of the whole row.

use super::{u32_arg, GpuBackend, GpuTensor};
use crate::backend::{argmax, check_len, read_rows, shape_err, top_k, Backend, Result};
use crate::gpu::runtime::{dev_err, DevBuf, DevValue, LaunchConfig, Runtime};

/// Threads of a `top_k_rows` block (`SAMPLE_THREADS` in sampling.cu): one block per row.
const SAMPLE_THREADS: u32 = 1024;
/// Threads of an `argmax_split` block and the values of a row each block takes: four loads in flight a
/// thread for four rounds, so a 248K-value row of logits spreads over ~60 SMs.
const ARGMAX_THREADS: u32 = 256;
const ARGMAX_CHUNK: usize = 16 * ARGMAX_THREADS as usize;
/// The largest k `top_k_rows` takes on the device (a sampler's top-k is tens); beyond, the row is read.
const TOP_K_MAX: usize = 4096;

impl<R: Runtime> GpuBackend<R> {
    pub(super) fn argmax_rows_on_device(
        &self,
        x: &GpuTensor<R>,
        rows: usize,
        n: usize,
    ) -> Result<Vec<u32>> {
        let op = "argmax_rows";
        if n == 0 {
            return Err(shape_err(op, "rows of 0 values"));
        }
        check_len(op, "input", x.len, rows.saturating_mul(n))?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        if !self.device_sampling {
            let values = read_rows(self, op, x, rows, n)?;
            return Ok(values.chunks_exact(n).map(argmax).collect());
        }
        let splits = n.div_ceil(ARGMAX_CHUNK);
        let mut s = self.lock_scratch();
        let ip = self.ensure(&mut s.sample_ids, rows)?;
        let kp = self.ensure(&mut s.argmax_keys, rows * splits)?;
        let (xp, n32, chunk32, splits32) = (
            self.ptr(&x.buf),
            u32_arg(op, n)?,
            ARGMAX_CHUNK as u32,
            u32_arg(op, splits)?,
        );
        let split = LaunchConfig {
            grid_dim: (splits32, u32_arg(op, rows)?, 1),
            block_dim: (ARGMAX_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, "argmax_split", split, &xp, &n32, &chunk32, &kp)?;
        let last = LaunchConfig {
            block_dim: (ARGMAX_THREADS, 1, 1),
            ..row_blocks(op, rows)?
        };
        launch!(self, op, last, &kp, &splits32, &ip)?;
        let mut out = vec![0u32; rows];
        read_back(self, op, s.sample_ids.as_ref(), &mut out)?;
        self.synchronize()?;
        Ok(out)
    }

    pub(super) fn top_k_rows_on_device(
        &self,
        x: &GpuTensor<R>,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        let op = "top_k_rows";
        if n == 0 {
            return Err(shape_err(op, "rows of 0 values"));
        }
        check_len(op, "input", x.len, rows.saturating_mul(n))?;
        let k = k.min(n);
        if rows == 0 || k == 0 {
            return Ok(vec![Vec::new(); rows]);
        }
        if k > TOP_K_MAX || !self.device_sampling {
            let values = read_rows(self, op, x, rows, n)?;
            return Ok(values.chunks_exact(n).map(|row| top_k(row, k)).collect());
        }
        let mut s = self.lock_scratch();
        let ip = self.ensure(&mut s.sample_ids, rows * k)?;
        let vp = self.ensure(&mut s.sample_vals, rows * k)?;
        let (xp, n32, k32) = (self.ptr(&x.buf), u32_arg(op, n)?, u32_arg(op, k)?);
        launch!(self, op, row_blocks(op, rows)?, &xp, &n32, &k32, &ip, &vp)?;
        let (mut id_host, mut val_host) = (vec![0u32; rows * k], vec![0f32; rows * k]);
        read_back(self, op, s.sample_ids.as_ref(), &mut id_host)?;
        read_back(self, op, s.sample_vals.as_ref(), &mut val_host)?;
        self.synchronize()?;
        drop(s);
        // The kernel leaves each row's k pairs unordered, but equal values in index order (it writes them
        // in runs of ascending index), so ordering them by value and then position orders them as the
        // CPU reference does.
        Ok(id_host
            .chunks_exact(k)
            .zip(val_host.chunks_exact(k))
            .map(|(ids, vals)| {
                top_k(vals, k)
                    .into_iter()
                    .map(|(j, v)| (ids[j as usize], v))
                    .collect()
            })
            .collect())
    }
}

/// Queues the copy of the first `out.len()` values of a scratch buffer the call just filled to the host
/// (the caller synchronizes before reading `out`).
fn read_back<R: Runtime, T: DevValue>(
    be: &GpuBackend<R>,
    op: &'static str,
    slot: Option<&DevBuf<R, T>>,
    out: &mut [T],
) -> Result<()> {
    slot.ok_or_else(|| dev_err::<R>(op, "scratch not allocated"))?
        .read(&be.rt, 0, out)
}

fn row_blocks(op: &'static str, rows: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (u32_arg(op, rows)?, 1, 1),
        block_dim: (SAMPLE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}
