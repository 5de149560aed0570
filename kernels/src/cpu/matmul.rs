//! `y = x · Wᵀ` for quantized, f16, bf16 and f32 weights, threaded over output rows.
//!
//! Activations are quantized once per call to the weight type's activation format (Q8_0, Q8_1 or Q8_K, as
//! llama.cpp does) into a scratch buffer owned by the calling thread (a thread-local reused across calls, so
//! steady-state decoding allocates nothing). Float weights are dotted against the f32 activations directly.
//!
//! Each task owns a contiguous range of output rows. Inside it, weight rows are processed in small groups and
//! every weight row is dotted against up to eight activation rows per pass, so with several activation rows
//! (prefill, speculative verification) each weight block is decoded once per eight rows instead of once per
//! row. With AVX512-VNNI and at least eight rows, the 32-value block types take the batched kernels of
//! [`gemm`](super::gemm) instead (same results, bit for bit).

use std::cell::RefCell;
use std::ops::Range;

use super::dot::{
    activation_type, dot_float_rows, dot_prepared_rows, dot_quant_rows, prepare_row, Chunk32, Simd,
};
use super::pool::ThreadPool;
use crate::quant::{quantize_row_q8_0, quantize_row_q8_1, quantize_row_q8_k, GgmlType, QuantError};

/// Weight rows per group: small enough that the group stays in L1 while every activation row passes over it.
const WEIGHT_ROWS_PER_GROUP: usize = 8;
/// Tasks per thread, so an unlucky (preempted) thread does not hold up the whole call.
const TASKS_PER_THREAD: usize = 4;

thread_local! {
    static ACTIVATION_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Computes `y[r*n_out + i] = Σ_j W[i][j]·x[r*k + j]` for `r < n_rows`, `i < n_out`, where `w` holds `n_out`
/// rows of `k` values of type `ty` (`ty.bytes_for(k)` bytes each, GGUF layout). Uses the best SIMD kernels
/// available (see [`Simd::detect`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    x: &[f32],
    n_rows: usize,
    y: &mut [f32],
) -> Result<(), QuantError> {
    matmul_with(Simd::detect(), pool, ty, w, n_out, k, x, n_rows, y)
}

/// [`matmul`] with an explicit kernel family (clamped to what the CPU supports), for tests and benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    simd: Simd,
    pool: &ThreadPool,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    x: &[f32],
    n_rows: usize,
    y: &mut [f32],
) -> Result<(), QuantError> {
    let act = activation_type(ty).ok_or(QuantError::Unsupported(ty))?;
    let row_bytes = ty.bytes_for(k).ok_or(QuantError::NotBlockAligned {
        ty,
        n: k,
        block: ty.block_size(),
    })?;
    let want_w = n_out.checked_mul(row_bytes);
    if want_w != Some(w.len()) {
        let n = n_out.saturating_mul(k);
        return Err(QuantError::WrongLength {
            ty,
            n,
            got: w.len(),
            want: want_w.unwrap_or(usize::MAX),
        });
    }
    let f32_len = |ty, n: Option<usize>, got: usize| match n {
        Some(n) if n == got => Ok(()),
        n => Err(QuantError::WrongLength {
            ty,
            n: n.unwrap_or(usize::MAX),
            got: 4 * got,
            want: n.map_or(usize::MAX, |n| 4 * n),
        }),
    };
    f32_len(GgmlType::F32, n_rows.checked_mul(k), x.len())?;
    f32_len(GgmlType::F32, n_rows.checked_mul(n_out), y.len())?;
    if n_rows == 0 || n_out == 0 {
        return Ok(());
    }
    let simd = simd.or_supported();
    if act == GgmlType::F32 {
        let dot = FloatDot {
            simd,
            ty,
            k,
            w,
            row_bytes,
            x,
        };
        run_tiles(pool, &dot, n_out, n_rows, y);
        return Ok(());
    }
    let act_bytes = act
        .bytes_for(k)
        .expect("k is a multiple of the weight block, hence of the activation block");
    // Taken out of the thread-local (not borrowed) so a nested call on this thread cannot hit a RefCell panic.
    let mut xq = ACTIVATION_SCRATCH.with(|s| s.take());
    xq.resize(n_rows * act_bytes, 0);
    let quantize = match act {
        GgmlType::Q8_0 => quantize_row_q8_0,
        GgmlType::Q8_1 => quantize_row_q8_1,
        _ => quantize_row_q8_k,
    };
    // The first row serially (it reports any length error), the rest across the pool for prefill.
    quantize(&x[..k], &mut xq[..act_bytes])?;
    if n_rows > 1 && k > 0 {
        let rows_per_task = (n_rows - 1).div_ceil(2 * pool.n_threads()).max(4);
        let q_ptr = QuantPtr(xq.as_mut_ptr());
        let q_ptr = &q_ptr;
        pool.run((n_rows - 1).div_ceil(rows_per_task), &|t| {
            let rows = 1 + t * rows_per_task..(1 + (t + 1) * rows_per_task).min(n_rows);
            // SAFETY: tasks own disjoint row ranges of `xq` (n_rows * act_bytes bytes).
            let qs = unsafe {
                std::slice::from_raw_parts_mut(
                    q_ptr.0.add(rows.start * act_bytes),
                    rows.len() * act_bytes,
                )
            };
            for (xr, qr) in x[rows.start * k..rows.end * k]
                .chunks_exact(k)
                .zip(qs.chunks_exact_mut(act_bytes))
            {
                quantize(xr, qr).expect("lengths as for the first row");
            }
        });
    }
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx512Vnni && n_rows >= super::gemm::MIN_ROWS && super::gemm::supports(ty) {
        super::gemm::matmul_batched(pool, ty, w, n_out, k, &xq, act_bytes, n_rows, y);
        ACTIVATION_SCRATCH.with(|s| s.replace(xq));
        return Ok(());
    }
    if n_rows >= 8 {
        if let Some(chunks) = super::dot::prepared_chunks(simd, ty, k) {
            let dot = PreparedDot {
                simd,
                ty,
                k,
                w,
                row_bytes,
                xq: &xq,
                act_bytes,
                chunks,
            };
            run_prepared(pool, &dot, n_out, n_rows, y);
            ACTIVATION_SCRATCH.with(|s| s.replace(xq));
            return Ok(());
        }
    }
    let dot = QuantDot {
        simd,
        ty,
        k,
        w,
        row_bytes,
        xq: &xq,
        act_bytes,
    };
    run_tiles(pool, &dot, n_out, n_rows, y);
    ACTIVATION_SCRATCH.with(|s| s.replace(xq));
    Ok(())
}

/// One weight row against `R` activation rows.
trait RowDot: Sync {
    fn dot<const R: usize>(&self, weight_row: usize, rows: [usize; R]) -> [f32; R];
}

struct QuantDot<'a> {
    simd: Simd,
    ty: GgmlType,
    k: usize,
    w: &'a [u8],
    row_bytes: usize,
    xq: &'a [u8],
    act_bytes: usize,
}

impl RowDot for QuantDot<'_> {
    #[inline(always)]
    fn dot<const R: usize>(&self, i: usize, rows: [usize; R]) -> [f32; R] {
        let w = &self.w[i * self.row_bytes..(i + 1) * self.row_bytes];
        let x = rows.map(|r| &self.xq[r * self.act_bytes..(r + 1) * self.act_bytes]);
        dot_quant_rows(self.simd, self.ty, self.k, w, x)
    }
}

/// K-quant weights against many activation rows: each weight row is decoded once per call
/// ([`prepare_row`]) into a per-thread buffer and dotted from there.
struct PreparedDot<'a> {
    simd: Simd,
    ty: GgmlType,
    k: usize,
    w: &'a [u8],
    row_bytes: usize,
    xq: &'a [u8],
    act_bytes: usize,
    chunks: usize,
}

thread_local! {
    static PREPARED_SCRATCH: RefCell<Vec<Chunk32>> = const { RefCell::new(Vec::new()) };
}

fn run_prepared(pool: &ThreadPool, dot: &PreparedDot, n_out: usize, n_rows: usize, y: &mut [f32]) {
    let rows_per_task = n_out.div_ceil(pool.n_threads() * TASKS_PER_THREAD).max(1);
    let n_tasks = n_out.div_ceil(rows_per_task);
    let out = OutPtr(y.as_mut_ptr());
    let out = &out;
    pool.run(n_tasks, &|t| {
        let rows = t * rows_per_task..((t + 1) * rows_per_task).min(n_out);
        PREPARED_SCRATCH.with(|s| {
            let mut buf = s.borrow_mut();
            buf.resize(WEIGHT_ROWS_PER_GROUP * dot.chunks, Chunk32([0; 32]));
            let mut group_start = rows.start;
            while group_start < rows.end {
                let group = group_start..(group_start + WEIGHT_ROWS_PER_GROUP).min(rows.end);
                for (g, i) in group.clone().enumerate() {
                    let w = &dot.w[i * dot.row_bytes..(i + 1) * dot.row_bytes];
                    prepare_row(
                        dot.simd,
                        dot.ty,
                        dot.k,
                        w,
                        &mut buf[g * dot.chunks..(g + 1) * dot.chunks],
                    );
                }
                let prepared = PreparedRows {
                    dot,
                    buf: &buf,
                    first: group.start,
                };
                compute_rows(&prepared, group.clone(), n_rows, |r, i, v| {
                    debug_assert!(i < n_out && r < n_rows);
                    // SAFETY: i is inside this task's row range, so no other task writes index r*n_out + i,
                    // which is in bounds of y (length n_rows*n_out, checked by matmul).
                    unsafe { *out.0.add(r * n_out + i) = v };
                });
                group_start = group.end;
            }
        });
    });
}

/// One group of prepared weight rows (`first..`), as a [`RowDot`].
struct PreparedRows<'a> {
    dot: &'a PreparedDot<'a>,
    buf: &'a [Chunk32],
    first: usize,
}

impl RowDot for PreparedRows<'_> {
    #[inline(always)]
    fn dot<const R: usize>(&self, i: usize, rows: [usize; R]) -> [f32; R] {
        let d = self.dot;
        let g = i - self.first;
        let x = rows.map(|r| &d.xq[r * d.act_bytes..(r + 1) * d.act_bytes]);
        dot_prepared_rows(
            d.simd,
            d.ty,
            d.k,
            &self.buf[g * d.chunks..(g + 1) * d.chunks],
            x,
        )
    }
}

struct FloatDot<'a> {
    simd: Simd,
    ty: GgmlType,
    k: usize,
    w: &'a [u8],
    row_bytes: usize,
    x: &'a [f32],
}

impl RowDot for FloatDot<'_> {
    #[inline(always)]
    fn dot<const R: usize>(&self, i: usize, rows: [usize; R]) -> [f32; R] {
        let w = &self.w[i * self.row_bytes..(i + 1) * self.row_bytes];
        dot_float_rows(
            self.simd,
            self.ty,
            w,
            rows.map(|r| &self.x[r * self.k..(r + 1) * self.k]),
        )
    }
}

/// The activation scratch, written by tasks at disjoint rows.
struct QuantPtr(*mut u8);
// SAFETY: tasks write disjoint rows and `pool.run` joins them before the buffer is used again.
unsafe impl Sync for QuantPtr {}

/// The output buffer, written by tasks at disjoint indices.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (each owns a distinct range of output rows) and `run` joins them all
// before the borrow of `y` ends.
unsafe impl Sync for OutPtr {}

fn run_tiles<D: RowDot>(pool: &ThreadPool, dot: &D, n_out: usize, n_rows: usize, y: &mut [f32]) {
    let rows_per_task = n_out.div_ceil(pool.n_threads() * TASKS_PER_THREAD).max(1);
    let n_tasks = n_out.div_ceil(rows_per_task);
    let out = OutPtr(y.as_mut_ptr());
    let out = &out;
    pool.run(n_tasks, &|t| {
        let rows = t * rows_per_task..((t + 1) * rows_per_task).min(n_out);
        compute_rows(dot, rows, n_rows, |r, i, v| {
            debug_assert!(i < n_out && r < n_rows);
            // SAFETY: i is inside this task's row range, so no other task writes index r*n_out + i, which is
            // in bounds of y (length n_rows*n_out, checked by matmul).
            unsafe { *out.0.add(r * n_out + i) = v };
        });
    });
}

fn compute_rows<D: RowDot>(
    dot: &D,
    weight_rows: Range<usize>,
    n_rows: usize,
    mut store: impl FnMut(usize, usize, f32),
) {
    let mut group_start = weight_rows.start;
    while group_start < weight_rows.end {
        let group = group_start..(group_start + WEIGHT_ROWS_PER_GROUP).min(weight_rows.end);
        let mut r = 0;
        while r + 8 <= n_rows {
            for i in group.clone() {
                let v = dot.dot(i, [r, r + 1, r + 2, r + 3, r + 4, r + 5, r + 6, r + 7]);
                (0..8).for_each(|j| store(r + j, i, v[j]));
            }
            r += 8;
        }
        while r + 4 <= n_rows {
            for i in group.clone() {
                let v = dot.dot(i, [r, r + 1, r + 2, r + 3]);
                (0..4).for_each(|j| store(r + j, i, v[j]));
            }
            r += 4;
        }
        for i in group.clone() {
            match n_rows - r {
                1 => store(r, i, dot.dot(i, [r])[0]),
                2 => {
                    let v = dot.dot(i, [r, r + 1]);
                    (0..2).for_each(|j| store(r + j, i, v[j]));
                }
                3 => {
                    let v = dot.dot(i, [r, r + 1, r + 2]);
                    (0..3).for_each(|j| store(r + j, i, v[j]));
                }
                _ => {}
            }
        }
        group_start = group.end;
    }
}
