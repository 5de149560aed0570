//! The CPU implementation of [`Backend`]: weights are zero-copy views of the mapped model file,
//! activations are `Vec<f32>`, and the heavy ops run on a [`ThreadPool`].

use super::attention::attend;
use super::matmul::matmul;
use super::ops;
use super::pool::ThreadPool;
use super::recurrent;
use crate::backend::*;
use crate::quant::{dequantize_row, GgmlType};

pub struct CpuBackend {
    pool: ThreadPool,
}

/// Runs `f` on chunks of `0..n` of at least `min_chunk` items, two per thread, across the pool; a single
/// chunk (decoding: one row) runs inline. Every item is processed exactly as a serial loop would, so
/// results do not depend on the split.
fn par_chunks(
    pool: &ThreadPool,
    n: usize,
    min_chunk: usize,
    f: &(dyn Fn(std::ops::Range<usize>) + Sync),
) {
    let n_chunks = (n / min_chunk.max(1)).clamp(1, 2 * pool.n_threads());
    let per = n.div_ceil(n_chunks).max(1);
    pool.run(n.div_ceil(per), &|t| f(t * per..((t + 1) * per).min(n)));
}

/// A mutable buffer shared by `par_chunks` tasks that write disjoint ranges of it.
struct SharedMut(*mut f32, usize);
// SAFETY: only handed to tasks that write disjoint ranges (see `slice`), joined before the borrow ends.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    fn new(v: &mut [f32]) -> Self {
        SharedMut(v.as_mut_ptr(), v.len())
    }

    /// # Safety
    /// No two live slices may overlap.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, r: std::ops::Range<usize>) -> &mut [f32] {
        assert!(r.start <= r.end && r.end <= self.1);
        std::slice::from_raw_parts_mut(self.0.add(r.start), r.end - r.start)
    }
}

/// Rows per task at least (a task costs a few microseconds of wake-up and sync).
const MIN_ROWS_PER_TASK: usize = 4;
/// Elements per task at least, for element-wise ops.
const MIN_ELEMS_PER_TASK: usize = 16 * 1024;

pub struct CpuWeight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    bytes: HostBytes,
    /// Vectors (norm weights, biases) are used on every token: keep them dequantized once.
    dense: Option<Vec<f32>>,
}

impl CpuWeight {
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

pub struct CpuKvCache {
    pub(crate) ty: KvType,
    pub(crate) n_ctx: usize,
    /// Values per cached position: n_kv_heads × head_dim.
    pub(crate) width: usize,
    pub(crate) row_bytes: usize,
    pub(crate) k: AlignedBytes,
    pub(crate) v: AlignedBytes,
}

/// A zeroed byte buffer with 8-byte alignment, so f16 (and f32) views of it are always aligned.
pub(crate) struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    fn zeroed(len: usize) -> Result<Self> {
        let n = len.div_ceil(8);
        let mut words = Vec::new();
        words
            .try_reserve_exact(n)
            .map_err(|_| BackendError::OutOfMemory {
                device: "host".into(),
                bytes: len as u64,
            })?;
        words.resize(n, 0);
        Ok(AlignedBytes { words, len })
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}

impl CpuBackend {
    pub fn new(n_threads: usize) -> Self {
        CpuBackend {
            pool: ThreadPool::new(n_threads.max(1)),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    /// conv1d_silu, optionally keeping the state after every token (see the trait).
    fn conv(
        &self,
        x: &[f32],
        weight: &CpuWeight,
        state: &mut [f32],
        rows: usize,
        out: &mut [f32],
        snapshots: Option<&mut [f32]>,
    ) -> Result<()> {
        let (channels, kernel) = (weight.rows, weight.cols);
        if kernel < 2 {
            return Err(shape_err("conv1d_silu", format!("kernel of {kernel} taps")));
        }
        if weight.ty != GgmlType::F32 {
            return Err(shape_err(
                "conv1d_silu",
                format!("weight type {} (F32 expected)", weight.ty),
            ));
        }
        check_len("conv1d_silu", "input", x.len(), rows * channels)?;
        check_len("conv1d_silu", "output", out.len(), rows * channels)?;
        if state.len() != channels * (kernel - 1) {
            return Err(shape_err(
                "conv1d_silu",
                format!(
                    "state of {} values, expected {}",
                    state.len(),
                    channels * (kernel - 1)
                ),
            ));
        }
        let w: &[f32] = bytemuck::try_cast_slice(weight.bytes())
            .map_err(|_| shape_err("conv1d_silu", "weight is not 4-byte aligned"))?;
        recurrent::conv1d_silu(
            &self.pool,
            &x[..rows * channels],
            w,
            state,
            rows,
            channels,
            kernel,
            &mut out[..rows * channels],
            snapshots,
        );
        Ok(())
    }

    /// gated_delta_net, optionally keeping the state after every token (see the trait).
    #[allow(clippy::too_many_arguments)]
    fn delta_rule(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
        beta: &[f32],
        state: &mut [f32],
        rows: usize,
        p: DeltaNetParams,
        out: &mut [f32],
        snapshots: Option<&mut [f32]>,
    ) -> Result<()> {
        let op = "gated_delta_net";
        if p.n_k_heads == 0 || !p.n_v_heads.is_multiple_of(p.n_k_heads) {
            return Err(shape_err(
                op,
                format!("{} V-heads over {} K-heads", p.n_v_heads, p.n_k_heads),
            ));
        }
        let (qk_w, v_w) = (p.n_k_heads * p.head_k_dim, p.n_v_heads * p.head_v_dim);
        check_len(op, "q", q.len(), rows * qk_w)?;
        check_len(op, "k", k.len(), rows * qk_w)?;
        check_len(op, "v", v.len(), rows * v_w)?;
        check_len(op, "g", g.len(), rows * p.n_v_heads)?;
        check_len(op, "beta", beta.len(), rows * p.n_v_heads)?;
        check_len(op, "output", out.len(), rows * v_w)?;
        let need = p.n_v_heads * p.head_v_dim * p.head_k_dim;
        if state.len() != need {
            return Err(shape_err(
                op,
                format!("state of {} values, expected {need}", state.len()),
            ));
        }
        recurrent::gated_delta_net(
            &self.pool, q, k, v, g, beta, state, rows, &p, out, snapshots,
        );
        Ok(())
    }
}

impl Backend for CpuBackend {
    type Tensor = Vec<f32>;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.pool.n_threads())
    }

    fn load_weight(&self, src: WeightSource) -> Result<CpuWeight> {
        let need = src
            .rows
            .checked_mul(src.ty.bytes_for(src.cols).ok_or_else(|| {
                shape_err(
                    "load_weight",
                    format!("{}: row of {} is not block-aligned", src.name, src.cols),
                )
            })?)
            .ok_or_else(|| shape_err("load_weight", "size overflows"))?;
        if src.bytes.as_slice().len() != need {
            return Err(shape_err(
                "load_weight",
                format!(
                    "{}: {} bytes, expected {need}",
                    src.name,
                    src.bytes.as_slice().len()
                ),
            ));
        }
        let dense = if src.rows == 1 {
            let mut v = vec![0f32; src.cols];
            dequantize_row(src.ty, src.bytes.as_slice(), &mut v)?;
            Some(v)
        } else {
            None
        };
        Ok(CpuWeight {
            ty: src.ty,
            rows: src.rows,
            cols: src.cols,
            bytes: src.bytes,
            dense,
        })
    }

    fn weight_bytes(&self, w: &CpuWeight) -> usize {
        w.bytes.as_slice().len()
    }

    fn tensor(&self, len: usize) -> Result<Vec<f32>> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| BackendError::OutOfMemory {
                device: "host".into(),
                bytes: (len as u64) * 4,
            })?;
        v.resize(len, 0.0);
        Ok(v)
    }

    fn tensor_len(&self, t: &Vec<f32>) -> usize {
        t.len()
    }

    fn write(&self, t: &mut Vec<f32>, offset: usize, data: &[f32]) -> Result<()> {
        check_len("write", "tensor", t.len(), offset + data.len())?;
        t[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn read(&self, t: &Vec<f32>, offset: usize, out: &mut [f32]) -> Result<()> {
        check_len("read", "tensor", t.len(), offset + out.len())?;
        out.copy_from_slice(&t[offset..offset + out.len()]);
        Ok(())
    }

    fn copy(
        &self,
        src: &Vec<f32>,
        src_off: usize,
        dst: &mut Vec<f32>,
        dst_off: usize,
        n: usize,
    ) -> Result<()> {
        check_copy("copy", (src.len(), src_off), (dst.len(), dst_off), n)?;
        dst[dst_off..dst_off + n].copy_from_slice(&src[src_off..src_off + n]);
        Ok(())
    }

    fn embed(&self, table: &CpuWeight, tokens: &[u32], out: &mut Vec<f32>) -> Result<()> {
        let dim = table.cols;
        check_len("embed", "output", out.len(), tokens.len() * dim)?;
        let row_bytes = table.ty.bytes_for(dim).unwrap_or(0);
        for (i, &tok) in tokens.iter().enumerate() {
            let tok = tok as usize;
            if tok >= table.rows {
                return Err(shape_err(
                    "embed",
                    format!("token id {tok} is outside the {}-row table", table.rows),
                ));
            }
            let src = &table.bytes()[tok * row_bytes..(tok + 1) * row_bytes];
            dequantize_row(table.ty, src, &mut out[i * dim..(i + 1) * dim])?;
        }
        Ok(())
    }

    fn matmul(&self, w: &CpuWeight, x: &Vec<f32>, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        check_len("matmul", "input", x.len(), rows * w.cols)?;
        check_len("matmul", "output", out.len(), rows * w.rows)?;
        matmul(
            &self.pool,
            w.ty,
            w.bytes(),
            w.rows,
            w.cols,
            &x[..rows * w.cols],
            rows,
            &mut out[..rows * w.rows],
        )?;
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        weight: Option<&CpuWeight>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("rms_norm", "input", x.len(), rows * dim)?;
        check_len("rms_norm", "output", out.len(), rows * dim)?;
        let w = match weight {
            Some(w) => {
                let d = w
                    .dense
                    .as_deref()
                    .ok_or_else(|| shape_err("rms_norm", "weight is not a vector"))?;
                check_len("rms_norm", "weight", d.len(), dim)?;
                Some(&d[..dim])
            }
            None => None,
        };
        let shared = SharedMut::new(&mut out[..rows * dim]);
        par_chunks(&self.pool, rows, MIN_ROWS_PER_TASK, &|rs| {
            let mut r = rs.start;
            while r + 4 <= rs.end {
                // SAFETY: each row belongs to exactly one chunk.
                let o = unsafe { shared.slice(r * dim..(r + 4) * dim) };
                ops::rms_norm4(&x[r * dim..(r + 4) * dim], dim, w, eps, o);
                r += 4;
            }
            for r in r..rs.end {
                // SAFETY: as above.
                let o = unsafe { shared.slice(r * dim..(r + 1) * dim) };
                ops::rms_norm(&x[r * dim..(r + 1) * dim], w, eps, o);
            }
        });
        Ok(())
    }

    fn add_bias(&self, x: &mut Vec<f32>, bias: &CpuWeight, rows: usize, dim: usize) -> Result<()> {
        check_len("add_bias", "input", x.len(), rows * dim)?;
        let b = bias
            .dense
            .as_deref()
            .ok_or_else(|| shape_err("add_bias", "bias is not a vector"))?;
        check_len("add_bias", "bias", b.len(), dim)?;
        for row in x[..rows * dim].chunks_exact_mut(dim) {
            ops::add_assign(row, &b[..dim]);
        }
        Ok(())
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>, n: usize) -> Result<()> {
        check_len("add_assign", "x", x.len(), n)?;
        check_len("add_assign", "y", y.len(), n)?;
        ops::add_assign(&mut x[..n], &y[..n]);
        Ok(())
    }

    fn add_rms_norm(
        &self,
        x: &Vec<f32>,
        y: &Vec<f32>,
        weight: Option<&CpuWeight>,
        rows: usize,
        dim: usize,
        eps: f32,
        sum: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let n = rows * dim;
        check_len("add_rms_norm", "x", x.len(), n)?;
        check_len("add_rms_norm", "y", y.len(), n)?;
        check_len("add_rms_norm", "sum", sum.len(), n)?;
        // One pass for the sum (the default copies x first).
        for ((s, a), b) in sum[..n].iter_mut().zip(&x[..n]).zip(&y[..n]) {
            *s = a + b;
        }
        self.rms_norm(sum, weight, rows, dim, eps, out)
    }

    fn scale(&self, x: &mut Vec<f32>, s: f32, n: usize) -> Result<()> {
        check_len("scale", "x", x.len(), n)?;
        x[..n].iter_mut().for_each(|v| *v *= s);
        Ok(())
    }

    fn gated_activation(
        &self,
        act: Activation,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        n: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("gated_activation", "gate", gate.len(), n)?;
        check_len("gated_activation", "up", up.len(), n)?;
        check_len("gated_activation", "output", out.len(), n)?;
        let shared = SharedMut::new(&mut out[..n]);
        par_chunks(&self.pool, n, MIN_ELEMS_PER_TASK, &|r| {
            // SAFETY: the chunks are disjoint.
            let o = unsafe { shared.slice(r.clone()) };
            match act {
                Activation::SwiGlu => ops::swiglu(&gate[r.clone()], &up[r], o),
                Activation::GeGlu => ops::geglu(&gate[r.clone()], &up[r], o),
            }
        });
        Ok(())
    }

    fn gated_activation_stacked(
        &self,
        act: Activation,
        x: &Vec<f32>,
        rows: usize,
        n: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let total = rows
            .checked_mul(n)
            .ok_or_else(|| shape_err("gated_activation_stacked", "size overflows"))?;
        check_len("gated_activation_stacked", "input", x.len(), 2 * total)?;
        check_len("gated_activation_stacked", "output", out.len(), total)?;
        for (r, o) in out[..total].chunks_exact_mut(n.max(1)).enumerate() {
            let (gate, up) = x[2 * n * r..2 * n * (r + 1)].split_at(n);
            match act {
                Activation::SwiGlu => ops::swiglu(gate, up, o),
                Activation::GeGlu => ops::geglu(gate, up, o),
            }
        }
        Ok(())
    }

    fn rope(&self, x: &mut Vec<f32>, positions: &[u32], p: RopeParams) -> Result<()> {
        let width = p.n_heads * p.head_dim;
        check_len("rope", "input", x.len(), positions.len() * width)?;
        if p.n_rot > p.head_dim || !p.n_rot.is_multiple_of(2) {
            return Err(shape_err(
                "rope",
                format!("n_rot {} with head_dim {}", p.n_rot, p.head_dim),
            ));
        }
        let shared = SharedMut::new(&mut x[..positions.len() * width]);
        par_chunks(&self.pool, positions.len(), MIN_ROWS_PER_TASK, &|rs| {
            for i in rs {
                // SAFETY: each row belongs to exactly one chunk.
                ops::rope_row(
                    unsafe { shared.slice(i * width..(i + 1) * width) },
                    positions[i],
                    &p,
                );
            }
        });
        Ok(())
    }

    fn kv_cache(
        &self,
        n_ctx: usize,
        n_kv_heads: usize,
        head_dim: usize,
        ty: KvType,
    ) -> Result<CpuKvCache> {
        let (width, row_bytes, bytes) = kv_layout(n_ctx, n_kv_heads, head_dim, ty)?;
        Ok(CpuKvCache {
            ty,
            n_ctx,
            width,
            row_bytes,
            k: AlignedBytes::zeroed(bytes)?,
            v: AlignedBytes::zeroed(bytes)?,
        })
    }

    fn kv_cache_bytes(&self, kv: &CpuKvCache) -> usize {
        kv.k.len + kv.v.len
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        kv: &mut CpuKvCache,
        start: usize,
        rows: usize,
        p: AttentionParams,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        attend(&self.pool, q, k, v, kv, start, rows, p, out)
    }

    fn copy_rows(
        &self,
        src: &Vec<f32>,
        src_off: usize,
        src_stride: usize,
        dst: &mut Vec<f32>,
        dst_off: usize,
        dst_stride: usize,
        width: usize,
        rows: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        check_len(
            "copy_rows",
            "source",
            src.len(),
            src_off + (rows - 1) * src_stride + width,
        )?;
        check_len(
            "copy_rows",
            "destination",
            dst.len(),
            dst_off + (rows - 1) * dst_stride + width,
        )?;
        for r in 0..rows {
            let (a, b) = (src_off + r * src_stride, dst_off + r * dst_stride);
            dst[b..b + width].copy_from_slice(&src[a..a + width]);
        }
        Ok(())
    }

    fn sigmoid_mul(
        &self,
        x: &mut Vec<f32>,
        gate: &Vec<f32>,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let n = rows * dim;
        check_len("sigmoid_mul", "x", x.len(), n)?;
        check_len("sigmoid_mul", "gate", gate.len(), n)?;
        for (x, &g) in x[..n].iter_mut().zip(&gate[..n]) {
            *x *= ops::sigmoid(g);
        }
        Ok(())
    }

    fn rms_norm_gated(
        &self,
        x: &Vec<f32>,
        weight: &CpuWeight,
        z: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("rms_norm_gated", "input", x.len(), rows * dim)?;
        check_len("rms_norm_gated", "gate", z.len(), rows * dim)?;
        check_len("rms_norm_gated", "output", out.len(), rows * dim)?;
        let w = dense(weight, "rms_norm_gated", dim)?;
        for r in 0..rows {
            let o = &mut out[r * dim..(r + 1) * dim];
            ops::rms_norm(&x[r * dim..(r + 1) * dim], Some(w), eps, o);
            for (o, &z) in o.iter_mut().zip(&z[r * dim..(r + 1) * dim]) {
                *o *= ops::silu(z);
            }
        }
        Ok(())
    }

    fn l2_norm(&self, x: &mut Vec<f32>, rows: usize, dim: usize, eps: f32) -> Result<()> {
        check_len("l2_norm", "x", x.len(), rows * dim)?;
        if dim == 0 {
            return Ok(());
        }
        for row in x[..rows * dim].chunks_exact_mut(dim) {
            recurrent::l2_norm_row(row, eps);
        }
        Ok(())
    }

    fn conv1d_silu(
        &self,
        x: &Vec<f32>,
        weight: &CpuWeight,
        state: &mut Vec<f32>,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.conv(x, weight, state, rows, out, None)
    }

    fn conv1d_silu_snapshots(
        &self,
        x: &Vec<f32>,
        weight: &CpuWeight,
        state: &mut Vec<f32>,
        rows: usize,
        out: &mut Vec<f32>,
        snapshots: &mut Vec<f32>,
    ) -> Result<()> {
        check_len(
            "conv1d_silu_snapshots",
            "snapshots",
            snapshots.len(),
            rows * state.len(),
        )?;
        self.conv(x, weight, state, rows, out, Some(snapshots.as_mut_slice()))
    }

    fn delta_net_gates(
        &self,
        alpha: &mut Vec<f32>,
        beta: &mut Vec<f32>,
        dt_bias: &CpuWeight,
        a: &CpuWeight,
        rows: usize,
    ) -> Result<()> {
        let n = dt_bias.cols;
        let dt = dense(dt_bias, "delta_net_gates", n)?;
        let a = dense(a, "delta_net_gates", n)?;
        check_len("delta_net_gates", "alpha", alpha.len(), rows * n)?;
        check_len("delta_net_gates", "beta", beta.len(), rows * n)?;
        for r in 0..rows {
            for h in 0..n {
                let i = r * n + h;
                alpha[i] = ops::softplus(alpha[i] + dt[h]) * a[h];
                beta[i] = ops::sigmoid(beta[i]);
            }
        }
        Ok(())
    }

    fn gated_delta_net(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        g: &Vec<f32>,
        beta: &Vec<f32>,
        state: &mut Vec<f32>,
        rows: usize,
        p: DeltaNetParams,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.delta_rule(q, k, v, g, beta, state, rows, p, out, None)
    }

    fn gated_delta_net_snapshots(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        g: &Vec<f32>,
        beta: &Vec<f32>,
        state: &mut Vec<f32>,
        rows: usize,
        p: DeltaNetParams,
        out: &mut Vec<f32>,
        snapshots: &mut Vec<f32>,
    ) -> Result<()> {
        check_len(
            "gated_delta_net_snapshots",
            "snapshots",
            snapshots.len(),
            rows * state.len(),
        )?;
        self.delta_rule(
            q,
            k,
            v,
            g,
            beta,
            state,
            rows,
            p,
            out,
            Some(snapshots.as_mut_slice()),
        )
    }
}

/// The dequantized values of a vector weight, checked to hold at least `dim`.
fn dense<'a>(w: &'a CpuWeight, op: &'static str, dim: usize) -> Result<&'a [f32]> {
    let d = w
        .dense
        .as_deref()
        .ok_or_else(|| shape_err(op, "weight is not a vector"))?;
    check_len(op, "weight", d.len(), dim)?;
    Ok(&d[..dim])
}
