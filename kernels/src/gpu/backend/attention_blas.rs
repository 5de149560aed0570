//! Prefill attention through cuBLAS (tensor cores): per KV head, the cached keys and values are expanded
//! to f16 once, the scores of the head group's query rows come from one batched product, a kernel turns
//! them into causal softmax probabilities (`attn_softmax_rows`), and a second batched product writes the
//! output. The split-K kernel (attention.cu) walks every key once per query row on the CUDA cores; for a
//! prompt chunk of hundreds of rows this does the same work as two matrix products.
//!
//! Decode and verify batches (at most `INVARIANT_ROWS` rows) never come here: their keys must be summed
//! in the same order whatever the batch (exact speculative decoding), which the split kernel guarantees.

use super::{u32_arg, GpuBackend, GpuKvCache, INVARIANT_ROWS};
use crate::backend::{AttentionParams, Result};
use crate::gpu::runtime::{GemmF16, LaunchConfig, Runtime};

/// Bytes of scores (f32) and probabilities (f16) held at once for one head group; longer contexts take
/// the query rows in smaller runs so the scratch stays bounded.
const SCORE_BYTES_MAX: usize = 256 << 20;

/// One operand of a strided batched product: device address, leading dimension, batch stride (elements).
struct Operand {
    ptr: u64,
    ld: usize,
    stride: usize,
}

impl<R: Runtime> GpuBackend<R> {
    /// Whether this attention call goes through cuBLAS: a prefill chunk (more rows than a verify batch),
    /// plain causal attention (no sliding window, no soft-capping), heads of whole 32-value blocks, and
    /// not turned off with `KILN_ATTN_BLAS=0`.
    pub(super) fn attention_by_blas(&self, rows: usize, p: &AttentionParams) -> bool {
        self.attn_blas
            && self.rt.has_blas()
            && rows > INVARIANT_ROWS
            && p.window.is_none()
            && p.softcap.is_none()
            && p.head_dim.is_multiple_of(32)
    }

    /// out (rows × n_heads × d, f32) = causal attention of the f32 queries at `qp` over cache positions
    /// 0..start + rows (already stored).
    pub(super) fn attention_blas(
        &self,
        qp: u64,
        kv: &GpuKvCache<R>,
        start: usize,
        rows: usize,
        p: &AttentionParams,
        out: u64,
    ) -> Result<()> {
        let op = "attention";
        let (d, nh, nkv) = (p.head_dim, p.n_heads, p.n_kv_heads);
        let g = nh / nkv;
        let n_keys = start + rows;
        let sub = (SCORE_BYTES_MAX / (g * n_keys * 6)).clamp(1, rows);
        let mut s = self.lock_scratch();
        let kvh = self.ensure(&mut s.w_f16, 2 * n_keys * d)?;
        let (kh, vh) = (kvh, kvh + (n_keys * d * 2) as u64);
        let qh = self.ensure(&mut s.x_f16, rows * nh * d)?;
        s.x_f16_of = None;
        let sp = self.ensure(&mut s.att_acc, g * sub * n_keys)?;
        let pp = self.ensure(&mut s.att_p, g * sub * n_keys)?;
        let n = (rows * nh * d) as u64;
        launch!(
            self,
            "f32_to_f16",
            super::grid((rows * nh * d).min(1 << 26), 256),
            &qp,
            &n,
            &qh
        )?;
        let kt = kv.ty.ggml() as i32;
        let head_bytes = kv.row_bytes / nkv;
        let (keys32, d32, rb32) = (
            u32_arg(op, n_keys)?,
            u32_arg(op, d)?,
            u32_arg(op, kv.row_bytes)?,
        );
        let expand = super::grid(n_keys * d / 32, 256);
        for h in 0..nkv {
            let off = (h * head_bytes) as u64;
            let (kc, vc) = (self.ptr(&kv.k) + off, self.ptr(&kv.v) + off);
            launch!(
                self,
                "dequant_f16",
                expand,
                &kt,
                &kc,
                &keys32,
                &d32,
                &rb32,
                &kh,
                &0u32
            )?;
            launch!(
                self,
                "dequant_f16",
                expand,
                &kt,
                &vc,
                &keys32,
                &d32,
                &rb32,
                &vh,
                &0u32
            )?;
            for r0 in (0..rows).step_by(sub) {
                let nr = (rows - r0).min(sub);
                // The keys the run's last row sees, and its query (and output) offset in values.
                let nk = start + r0 + nr;
                let first = ((r0 * nh + h * g) * d) as u64;
                // Scores, column-major nk × nr per head: Kₕ (d × nk, transposed) · Q_g (d × nr).
                self.gemm_batched(
                    true,
                    (nk, nr, d),
                    p.scale,
                    Operand {
                        ptr: kh,
                        ld: d,
                        stride: 0,
                    },
                    Operand {
                        ptr: qh + first * 2,
                        ld: nh * d,
                        stride: d,
                    },
                    Operand {
                        ptr: sp,
                        ld: nk,
                        stride: nr * nk,
                    },
                    g,
                )?;
                let cfg = LaunchConfig {
                    grid_dim: (u32_arg(op, g * nr)?, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let (nr32, nk32, pos32) =
                    (u32_arg(op, nr)?, u32_arg(op, nk)?, u32_arg(op, start + r0)?);
                launch!(
                    self,
                    "attn_softmax_rows",
                    cfg,
                    &sp,
                    &nr32,
                    &nk32,
                    &pos32,
                    &pp
                )?;
                // Output, column-major d × nr per head (f32): Vₕ (d × nk) · P (nk × nr).
                self.gemm_batched(
                    false,
                    (d, nr, nk),
                    1.0,
                    Operand {
                        ptr: vh,
                        ld: d,
                        stride: 0,
                    },
                    Operand {
                        ptr: pp,
                        ld: nk,
                        stride: nr * nk,
                    },
                    Operand {
                        ptr: out + first * 4,
                        ld: nh * d,
                        stride: d,
                    },
                    g,
                )?;
            }
        }
        Ok(())
    }

    /// C = alpha · op(A) · B for `batch` products (A, B f16; C f32; f32 accumulation), column-major as
    /// cuBLAS sees it; `trans_a` transposes A.
    #[allow(clippy::too_many_arguments)]
    fn gemm_batched(
        &self,
        trans_a: bool,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: Operand,
        b: Operand,
        c: Operand,
        batch: usize,
    ) -> Result<()> {
        let gemm = GemmF16 {
            trans_a,
            m,
            n,
            k,
            alpha,
            a: a.ptr,
            lda: a.ld,
            b: b.ptr,
            ldb: b.ld,
            c: c.ptr,
            ldc: c.ld,
            batch,
            strides: Some([a.stride, b.stride, c.stride]),
        };
        // SAFETY: the operands point into live scratch/output buffers sized by the caller for these
        // shapes (ensure() and the attention call's length checks).
        self.timed("cublas_attention", || unsafe { self.rt.gemm_f16(&gemm) })
    }
}
