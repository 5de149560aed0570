//! Causal (optionally sliding-window) attention over a KV cache on the CPU, one task per query row and
//! head. K and V rows are stored in the cache's type (f32, f16, q8_0, q4_0) and expanded per head as
//! they are read, so the cache costs what its type says.
//!
//! Each (row, head) is one pass over the keys with an online softmax, the way ggml's CPU flash-attention
//! kernel (llama.cpp's default) computes it, including its precision choices: q is converted to the K
//! cache's dot type (f16 for an f16 cache), and with an f16 V cache the weighted sum of V accumulates in
//! f16. Following them keeps greedy outputs equal to llama.cpp's wherever the model is not at a
//! numerical tie.

use super::attention_f16;
use super::backend::CpuKvCache;
use super::dot::dot_f32;
use super::pool::ThreadPool;
use crate::backend::{shape_err, AttentionParams, KvType, Result};
use crate::quant::{dequantize_row, quantize_row};
use half::f16;
use half::slice::HalfFloatSliceExt;

fn store_row(ty: KvType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    match ty {
        KvType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        KvType::F16 => {
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if super::dot::Simd::detect() >= super::dot::Simd::Avx2 {
                // SAFETY: F16C is present; `dst` holds 2 bytes per value of `src`.
                done = unsafe { store_f16_avx2(src, dst) };
            }
            for (d, s) in dst[2 * done..].chunks_exact_mut(2).zip(&src[done..]) {
                d.copy_from_slice(&f16::from_f32(*s).to_le_bytes());
            }
        }
        KvType::Q8_0 | KvType::Q4_0 => quantize_row(ty.ggml(), src, dst)?,
    }
    Ok(())
}

/// f32 → f16 (nearest even, as `f16::from_f32`) eight values at a time; returns how many it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn store_f16_avx2(src: &[f32], dst: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len() / 2) / 8 * 8;
    for i in (0..n).step_by(8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
        _mm_storeu_si128(dst.as_mut_ptr().add(2 * i).cast(), h);
    }
    n
}

/// Expands `out.len()` values of a cached row starting at value `first` (a block boundary).
fn load_values(kv: &CpuKvCache, row: &[u8], first: usize, out: &mut [f32]) {
    let ty = kv.ty.ggml();
    let start = ty.bytes_for(first).unwrap_or(0);
    let len = ty.bytes_for(out.len()).unwrap_or(0);
    // Lengths were validated when the cache was made; a failure here would be a Kiln bug, and the
    // values stay zero rather than panicking in a worker thread.
    let _ = dequantize_row(ty, &row[start..start + len], out);
}

/// Replaces `x` by its q8_0 quantize-dequantize image (head sizes are multiples of 32).
fn q8_0_round_trip(x: &mut [f32]) {
    let ty = crate::quant::GgmlType::Q8_0;
    let mut blocks = vec![0u8; ty.bytes_for(x.len()).unwrap_or(0)];
    if quantize_row(ty, x, &mut blocks).is_ok() {
        let _ = dequantize_row(ty, &blocks, x);
    }
}

/// The f16 values of one head in a cached row of an f16 cache.
fn f16_head(row: &[u8], first: usize, n: usize) -> &[f16] {
    // Rows start at multiples of 2 bytes inside an 8-byte-aligned buffer (see `AlignedBytes`).
    bytemuck_f16(&row[first * 2..(first + n) * 2])
}

fn bytemuck_f16(b: &[u8]) -> &[f16] {
    bytemuck::cast_slice(b)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    pool: &ThreadPool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kv: &mut CpuKvCache,
    start: usize,
    rows: usize,
    p: AttentionParams,
    out: &mut [f32],
) -> Result<()> {
    let hd = p.head_dim;
    if p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) || p.n_kv_heads * hd != kv.width
    {
        return Err(shape_err(
            "attention",
            format!(
                "{} heads / {} kv heads × {hd} do not match the cache width {}",
                p.n_heads, p.n_kv_heads, kv.width
            ),
        ));
    }
    let q_width = p.n_heads * hd;
    if start + rows > kv.n_ctx {
        return Err(shape_err(
            "attention",
            format!(
                "positions {start}..{} exceed the context of {}",
                start + rows,
                kv.n_ctx
            ),
        ));
    }
    if q.len() < rows * q_width
        || k.len() < rows * kv.width
        || v.len() < rows * kv.width
        || out.len() < rows * q_width
    {
        return Err(shape_err("attention", "buffers too small for the rows"));
    }
    for i in 0..rows {
        let at = (start + i) * kv.row_bytes;
        store_row(
            kv.ty,
            &k[i * kv.width..(i + 1) * kv.width],
            &mut kv.k.as_bytes_mut()[at..at + kv.row_bytes],
        )?;
        store_row(
            kv.ty,
            &v[i * kv.width..(i + 1) * kv.width],
            &mut kv.v.as_bytes_mut()[at..at + kv.row_bytes],
        )?;
    }

    let group = p.n_heads / p.n_kv_heads;
    let kv_ref: &CpuKvCache = kv;
    let out_ptr = SendPtr(out.as_mut_ptr());
    let is_f16 = kv_ref.ty == KvType::F16;
    let task = |t: usize| {
        let (i, h) = (t / p.n_heads, t % p.n_heads);
        let pos = start + i;
        let first = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let kvh = h / group;
        SCRATCH.with(|scratch| {
            let (qh, row, acc, acc16) = &mut *scratch.borrow_mut();
            qh.clear();
            qh.extend_from_slice(&q[i * q_width + h * hd..i * q_width + (h + 1) * hd]);
            row.clear();
            row.resize(hd, 0.0);
            acc.clear();
            acc.resize(hd, 0.0);
            acc16.clear();
            acc16.resize(hd, f16::ZERO);
            match kv_ref.ty {
                KvType::F32 => {}
                KvType::F16 => {
                    // q rounded to f16 (the K cache's dot type), through the accumulator's buffer.
                    acc16.convert_from_f32_slice(qh);
                    acc16.convert_to_f32_slice(qh);
                    acc16.fill(f16::ZERO);
                }
                // A quantized K cache is dotted against q quantized to q8_0, as ggml does.
                KvType::Q8_0 | KvType::Q4_0 => q8_0_round_trip(qh),
            }
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            for j in first..=pos {
                let at = j * kv_ref.row_bytes..(j + 1) * kv_ref.row_bytes;
                let krow = &kv_ref.k.as_bytes()[at.clone()];
                let dot = if is_f16 {
                    attention_f16::kq_dot(f16_head(krow, kvh * hd, hd), qh)
                } else {
                    load_values(kv_ref, krow, kvh * hd, row);
                    dot_f32(qh, row)
                };
                let mut s = dot * p.scale;
                if let Some(cap) = p.softcap {
                    s = (s / cap).tanh() * cap;
                }
                // Online softmax: rescale what was accumulated when a new maximum appears.
                let (mut rescale, mut weight) = (1.0f32, 1.0f32);
                if s > max {
                    rescale = (max - s).exp();
                    max = s;
                } else {
                    weight = (s - max).exp();
                }
                let vrow = &kv_ref.v.as_bytes()[at];
                if is_f16 {
                    if rescale != 1.0 {
                        attention_f16::scale(acc16, rescale);
                    }
                    attention_f16::mad(acc16, f16_head(vrow, kvh * hd, hd), weight);
                } else {
                    if rescale != 1.0 {
                        acc.iter_mut().for_each(|a| *a *= rescale);
                    }
                    load_values(kv_ref, vrow, kvh * hd, row);
                    for (a, &x) in acc.iter_mut().zip(row.iter()) {
                        *a += x * weight;
                    }
                }
                sum = sum * rescale + weight;
            }
            if is_f16 {
                acc16.convert_to_f32_slice(acc);
            }
            let inv = 1.0 / sum;
            // SAFETY: task t writes only its own (row, head) slice of `out`; slices of distinct tasks are
            // disjoint and `out` outlives the pool run.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add(i * q_width + h * hd), hd)
            };
            for (d, a) in dst.iter_mut().zip(acc.iter()) {
                *d = a * inv;
            }
        });
    };
    pool.run(rows * p.n_heads, &task);
    Ok(())
}

type Scratch = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f16>);

thread_local! {
    /// Per-thread buffers of an attention task (q of the head, an expanded K/V row, the accumulators), so
    /// the tens of thousands of tasks of a prefill allocate nothing.
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new(), Vec::new()))
    };
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to hand disjoint output slices to pool tasks (see `attend`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
