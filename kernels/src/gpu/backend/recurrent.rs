//! The Gated DeltaNet's causal conv launches (kernels/gpu/recurrent.cu): alone (`conv1d_silu`), or with
//! the q/k/v split and norms after it as one launch for a few rows (`conv_split_l2`).

use super::{check_len, grid, shape_err, u32_arg, GateArgs, GpuBackend, GpuTensor, GpuWeight};
use crate::backend::{conv_split_qkv_l2_by_parts, QkvSplit, Result};
use crate::gpu::runtime::{LaunchConfig, Runtime};
use crate::quant::GgmlType;

/// The most rows `conv_split_l2` takes (its CONV_BATCH: a row's inputs are registers).
const FUSED_MAX_ROWS: usize = 8;

impl<R: Runtime> GpuBackend<R> {
    /// The conv's taps a channel (the weight's columns), after checking the weight, the input of `rows`
    /// rows and the state against each other.
    fn conv_shape(
        &self,
        op: &'static str,
        x: &GpuTensor<R>,
        weight: &GpuWeight<R>,
        state: &GpuTensor<R>,
        rows: usize,
    ) -> Result<usize> {
        let (channels, kernel) = (weight.rows, weight.cols);
        if !(2..=8).contains(&kernel) {
            return Err(shape_err(
                op,
                format!("kernel of {kernel} taps (2..=8 supported)"),
            ));
        }
        if weight.ty != GgmlType::F32 {
            return Err(shape_err(
                op,
                format!("weight type {} (F32 expected)", weight.ty),
            ));
        }
        check_len(op, "input", x.len, rows * channels)?;
        if state.len != channels * (kernel - 1) {
            return Err(shape_err(
                op,
                format!(
                    "state of {} values, expected {}",
                    state.len,
                    channels * (kernel - 1)
                ),
            ));
        }
        Ok(kernel)
    }

    /// The causal conv, optionally keeping the state after every row (speculative rollback).
    pub(super) fn conv1d(
        &self,
        x: &GpuTensor<R>,
        weight: &GpuWeight<R>,
        state: &mut GpuTensor<R>,
        rows: usize,
        out: &mut GpuTensor<R>,
        snapshots: Option<&mut GpuTensor<R>>,
    ) -> Result<()> {
        let op = "conv1d_silu";
        let kernel = self.conv_shape(op, x, weight, state, rows)?;
        let channels = weight.rows;
        check_len(op, "output", out.len, rows * channels)?;
        if rows == 0 {
            return Ok(());
        }
        let snap = self.snapshot_ptr(op, snapshots, rows * state.len)?;
        let (xp, wp, sp, op_) = (
            self.ptr(&x.buf),
            self.ptr(&weight.data),
            self.ptr(&state.buf),
            self.ptr(&out.buf),
        );
        let (r, c, k) = (
            u32_arg(op, rows)?,
            u32_arg(op, channels)?,
            u32_arg(op, kernel)?,
        );
        launch!(
            self,
            "conv1d_silu",
            grid(channels, 128),
            &xp,
            &wp,
            &sp,
            &r,
            &c,
            &k,
            &op_,
            &snap
        )
    }

    /// [`Backend::conv_split_qkv_l2`](crate::backend::Backend::conv_split_qkv_l2): one `conv_split_l2`
    /// launch where it applies (a block of `head_k` threads a head, a few rows), else the conv and the
    /// split as two.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_split(
        &self,
        x: &GpuTensor<R>,
        weight: &GpuWeight<R>,
        state: &mut GpuTensor<R>,
        rows: usize,
        snapshots: Option<&mut GpuTensor<R>>,
        conv_out: &mut GpuTensor<R>,
        split: QkvSplit<'_, Self>,
    ) -> Result<()> {
        let op = "conv_split_l2";
        let QkvSplit {
            n_k_heads,
            head_k,
            v_dim,
            ..
        } = split;
        let fused = self.fuse
            && rows <= FUSED_MAX_ROWS
            && (32..=1024).contains(&head_k)
            && head_k.is_multiple_of(32);
        if !fused || rows == 0 {
            return conv_split_qkv_l2_by_parts(
                self, x, weight, state, rows, snapshots, conv_out, split,
            );
        }
        let kernel = self.conv_shape(op, x, weight, state, rows)?;
        let [q, k, v] = split.out;
        let channels = split_widths(op, (n_k_heads, head_k, v_dim), rows, [q, k, v])?.1;
        if weight.rows != channels {
            return Err(shape_err(
                op,
                format!("{} conv channels, the split takes {channels}", weight.rows),
            ));
        }
        // Left unwritten here, but checked as the two launches would: the same calls fail either way.
        check_len(op, "conv output", conv_out.len, rows * channels)?;
        let snap = self.snapshot_ptr(op, snapshots, rows * state.len)?;
        let has_gates = split.gates.is_some();
        let g = match split.gates {
            Some(g) => self.gate_args(g.alpha, g.beta, g.dt_bias, g.a, rows)?,
            None => GateArgs::default(),
        };
        // A block a run of head_k channels ([q heads | k heads | v]), then the gates' block when given.
        let blocks = channels.div_ceil(head_k) + usize::from(has_gates);
        let cfg = LaunchConfig {
            grid_dim: (u32_arg(op, blocks)?, 1, 1),
            block_dim: (u32_arg(op, head_k)?, 1, 1),
            shared_mem_bytes: 0,
        };
        let (xp, wp, sp) = (
            self.ptr(&x.buf),
            self.ptr(&weight.data),
            self.ptr(&state.buf),
        );
        let (qp, kp, vp) = (self.ptr(&q.buf), self.ptr(&k.buf), self.ptr(&v.buf));
        let (r, taps, nk, hk, vd) = (
            u32_arg(op, rows)?,
            u32_arg(op, kernel)?,
            u32_arg(op, n_k_heads)?,
            u32_arg(op, head_k)?,
            u32_arg(op, v_dim)?,
        );
        launch!(
            self, op, cfg, &xp, &wp, &sp, &r, &taps, &snap, &nk, &hk, &vd, &split.eps, &qp, &kp,
            &vp, &g.alpha, &g.beta, &g.dt_bias, &g.a, &g.n
        )
    }
}

/// The widths of a Gated DeltaNet's q/k/v split, (q or k, the whole row) = (n_k_heads · head_k,
/// 2 · that + v_dim) for `(n_k_heads, head_k, v_dim)`, after checking that q, k and v hold `rows` rows.
pub(super) fn split_widths<R: Runtime>(
    op: &'static str,
    (n_k_heads, head_k, v_dim): (usize, usize, usize),
    rows: usize,
    [q, k, v]: [&GpuTensor<R>; 3],
) -> Result<(usize, usize)> {
    let kd = n_k_heads
        .checked_mul(head_k)
        .ok_or_else(|| shape_err(op, "size overflows"))?;
    let row = kd
        .checked_mul(2)
        .and_then(|w| w.checked_add(v_dim))
        .ok_or_else(|| shape_err(op, "size overflows"))?;
    check_len(op, "q", q.len, rows * kd)?;
    check_len(op, "k", k.len, rows * kd)?;
    check_len(op, "v", v.len, rows * v_dim)?;
    Ok((kd, row))
}
