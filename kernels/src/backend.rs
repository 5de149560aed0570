//! The compute backend interface.
//!
//! A model is written once against [`Backend`]: its weights and activations live in the backend's own
//! buffers (host memory for the CPU, device memory for CUDA/HIP), and every op is launched on the
//! backend's stream. The CPU backend runs each op to completion before returning; a GPU backend only
//! enqueues work, which is why results come back through [`Backend::read`] (the synchronisation point)
//! and never through a borrowed slice.
//!
//! Activations are f32 row-major matrices: a tensor holds `rows × dim` values and ops take the row
//! count explicitly, so one buffer sized for the largest batch serves every smaller one.

use crate::quant::{GgmlType, QuantError};
use std::ops::Range;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("{op}: {reason}")]
    Shape { op: &'static str, reason: String },
    #[error("out of {device} memory allocating {bytes} bytes")]
    OutOfMemory { device: String, bytes: u64 },
    #[error("{0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;

pub(crate) fn shape_err(op: &'static str, reason: impl Into<String>) -> BackendError {
    BackendError::Shape {
        op,
        reason: reason.into(),
    }
}

/// The layout of a KV cache of `n_ctx` positions × `n_kv_heads` × `head_dim` values in type `ty`, the same
/// for every backend: (values per position, bytes per position, bytes of the K (or V) buffer).
pub(crate) fn kv_layout(
    n_ctx: usize,
    n_kv_heads: usize,
    head_dim: usize,
    ty: KvType,
) -> Result<(usize, usize, usize)> {
    let width = n_kv_heads
        .checked_mul(head_dim)
        .ok_or_else(|| shape_err("kv_cache", "size overflows"))?;
    let row_bytes = ty.row_bytes(width).ok_or_else(|| {
        shape_err(
            "kv_cache",
            format!("{width} values per position do not fit {ty:?} blocks"),
        )
    })?;
    let bytes = n_ctx
        .checked_mul(row_bytes)
        .ok_or_else(|| shape_err("kv_cache", "size overflows"))?;
    Ok((width, row_bytes, bytes))
}

/// The shape check every backend op starts with: a buffer holding fewer values than the op needs.
pub(crate) fn check_len(op: &'static str, what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(shape_err(
            op,
            format!("{what} holds {have} values, needs {need}"),
        ));
    }
    Ok(())
}

/// The ranges of one copy: `n` values from `src_off` of a `src_len`-value source to `dst_off` of a
/// `dst_len`-value destination (offsets past `usize` fail as past the end).
pub(crate) fn check_copy(
    op: &'static str,
    (src_len, src_off): (usize, usize),
    (dst_len, dst_off): (usize, usize),
    n: usize,
) -> Result<()> {
    check_len(op, "source", src_len, src_off.saturating_add(n))?;
    check_len(op, "destination", dst_len, dst_off.saturating_add(n))
}

/// Bytes owned elsewhere (a memory-mapped model file) that a weight views without copying.
#[derive(Clone)]
pub struct HostBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl HostBytes {
    /// `range` must lie inside `owner`; checked here so later accesses cannot fail.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Option<Self> {
        let len = (*owner).as_ref().len();
        (range.start <= range.end && range.end <= len).then_some(HostBytes { owner, range })
    }

    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        HostBytes {
            owner: Arc::new(v),
            range: 0..len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

/// One copy of [`Backend::copy_many`]: `n` values from `src[src_off..]` to `dst[dst_off..]`.
pub struct TensorCopy<'a, T> {
    pub src: &'a T,
    pub src_off: usize,
    pub dst: &'a mut T,
    pub dst_off: usize,
    pub n: usize,
}

/// A weight as the model file stores it: `rows` rows of `cols` values in `ty` blocks (GGUF order:
/// `cols` = ne0 is contiguous). Vectors (norm weights, biases) have `rows == 1`.
#[derive(Clone)]
pub struct WeightSource {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: HostBytes,
}

/// How rotary position embedding pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.
    Normal,
    /// Halves (i, i + n_rot/2): GPT-NeoX, Qwen, Gemma.
    Neox,
}

#[derive(Clone, Copy, Debug)]
pub struct RopeParams {
    pub n_heads: usize,
    pub head_dim: usize,
    /// Dimensions rotated at the start of each head (partial rotary when < head_dim).
    pub n_rot: usize,
    pub theta_base: f32,
    /// Linear position scaling (1.0 = none).
    pub freq_scale: f32,
    pub style: RopeStyle,
}

/// Element type of the attention KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
    Q8_0,
    Q4_0,
}

impl KvType {
    pub fn ggml(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => KvType::F32,
            "f16" => KvType::F16,
            "q8_0" => KvType::Q8_0,
            "q4_0" => KvType::Q4_0,
            _ => return None,
        })
    }

    /// Bytes of one cached row of `n` values (`n` a multiple of the block size for quantized types).
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        self.ggml().bytes_for(n)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k before the softmax.
    pub scale: f32,
    /// Sliding window: a query at position p sees keys in (p - window, p]. `None` = full causal.
    pub window: Option<usize>,
    /// Attention logit soft-capping (Gemma 2): tanh(s / cap) · cap. `None` = off.
    pub softcap: Option<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// silu(gate) · up — llama, qwen.
    SwiGlu,
    /// gelu_tanh(gate) · up — gemma.
    GeGlu,
}

/// Shapes of the gated delta rule ([`Backend::gated_delta_net`]).
#[derive(Clone, Copy, Debug)]
pub struct DeltaNetParams {
    /// Q/K heads; V-head h reads Q/K head `h % n_k_heads` (the tiled order llama.cpp's converter writes).
    pub n_k_heads: usize,
    pub n_v_heads: usize,
    pub head_k_dim: usize,
    pub head_v_dim: usize,
    /// Multiplies each output (Qwen3.5: 1/√head_k_dim, i.e. q scaled by it).
    pub scale: f32,
    /// Tokens per chunk of the chunked (prefill) form; `None` = token by token. Both compute the same
    /// recurrence; they differ only in rounding.
    pub chunk: Option<usize>,
}

/// The operations a model needs. Every method validates its shapes and returns an error instead of
/// panicking; buffers are the backend's own.
pub trait Backend: Send + Sync {
    /// An f32 activation buffer.
    type Tensor: Send;
    /// A weight (matrix or vector) held by the backend.
    type Weight: Send + Sync;
    /// One attention layer's K and V cache.
    type KvCache: Send;

    fn name(&self) -> String;

    /// Takes a weight from the model file. The CPU backend keeps a zero-copy view.
    fn load_weight(&self, src: WeightSource) -> Result<Self::Weight>;
    /// Loads `parts` (one type, one row width) as ONE weight whose rows are theirs in order, so products
    /// that read the same input take one launch and one pass over a larger matrix. `Ok(None)`: this
    /// backend keeps weights separate (the CPU's are zero-copy views of the file and must stay so); the
    /// caller then loads each part with [`load_weight`](Backend::load_weight).
    fn load_stacked(&self, parts: Vec<WeightSource>) -> Result<Option<Self::Weight>> {
        let _ = parts;
        Ok(None)
    }
    /// Bytes the weight occupies on the device.
    fn weight_bytes(&self, w: &Self::Weight) -> usize;

    /// A zeroed buffer of `len` values.
    fn tensor(&self, len: usize) -> Result<Self::Tensor>;
    fn tensor_len(&self, t: &Self::Tensor) -> usize;
    fn write(&self, t: &mut Self::Tensor, offset: usize, data: &[f32]) -> Result<()>;
    /// Copies values out (a GPU backend waits for queued work first).
    fn read(&self, t: &Self::Tensor, offset: usize, out: &mut [f32]) -> Result<()>;
    /// Copies `n` values from `src[src_off..]` to `dst[dst_off..]`.
    fn copy(
        &self,
        src: &Self::Tensor,
        src_off: usize,
        dst: &mut Self::Tensor,
        dst_off: usize,
        n: usize,
    ) -> Result<()>;

    /// Several copies, each as [`Backend::copy`] (no destination range overlaps another copy's
    /// source or destination); with a range past its tensor, an error and nothing copied. A GPU
    /// backend makes them one launch: rolling a speculative pass back copies two states of every
    /// recurrent layer, 96 copies for the 27B.
    fn copy_many(&self, copies: &mut [TensorCopy<'_, Self::Tensor>]) -> Result<()> {
        for c in copies.iter() {
            check_copy(
                "copy_many",
                (self.tensor_len(c.src), c.src_off),
                (self.tensor_len(c.dst), c.dst_off),
                c.n,
            )?;
        }
        for c in copies.iter_mut() {
            self.copy(c.src, c.src_off, c.dst, c.dst_off, c.n)?;
        }
        Ok(())
    }

    /// out[i] = row `tokens[i]` of the embedding table, dequantized.
    fn embed(&self, table: &Self::Weight, tokens: &[u32], out: &mut Self::Tensor) -> Result<()>;
    /// out[r] = W · x[r] for `rows` rows of x (W: n_out × k; x rows of k; out rows of n_out).
    fn matmul(
        &self,
        w: &Self::Weight,
        x: &Self::Tensor,
        rows: usize,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Several products of the same input, out_i = W_i · x (the projections a layer makes of one
    /// normed input). Default: one [`Backend::matmul`] each; a GPU backend makes them one launch.
    fn matmul_group(
        &self,
        parts: &mut [(&Self::Weight, &mut Self::Tensor)],
        x: &Self::Tensor,
        rows: usize,
    ) -> Result<()> {
        for (w, out) in parts.iter_mut() {
            self.matmul(w, x, rows, out)?;
        }
        Ok(())
    }
    /// Per row of `dim` values: x / rms(x) · weight (weight optional).
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        weight: Option<&Self::Weight>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// In place, per row of `dim` values: x += bias.
    fn add_bias(
        &self,
        x: &mut Self::Tensor,
        bias: &Self::Weight,
        rows: usize,
        dim: usize,
    ) -> Result<()>;
    /// x[..n] += y[..n].
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor, n: usize) -> Result<()>;
    /// The residual add and the norm after it: sum[..rows·dim] = x + y, then `rms_norm` of the sum into
    /// `out`. The sum goes to a tensor of its own, not back into x (a model keeps two residual buffers
    /// and swaps them), so a backend may read all of x while it stores sums: the GPU's norm for a few
    /// long rows has every block of a row read the whole row. Backends that fuse the two (one pass, one
    /// launch) override it.
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm(
        &self,
        x: &Self::Tensor,
        y: &Self::Tensor,
        weight: Option<&Self::Weight>,
        rows: usize,
        dim: usize,
        eps: f32,
        sum: &mut Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.copy(x, 0, sum, 0, rows * dim)?;
        self.add_assign(sum, y, rows * dim)?;
        self.rms_norm(sum, weight, rows, dim, eps, out)
    }
    /// x[..n] *= s.
    fn scale(&self, x: &mut Self::Tensor, s: f32, n: usize) -> Result<()>;
    /// out[..n] = act(gate[..n]) · up[..n].
    fn gated_activation(
        &self,
        act: Activation,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        n: usize,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// [`gated_activation`](Backend::gated_activation) over the output of one product with a stacked
    /// [gate; up] weight: row r of `x` holds `n` gate values then `n` up values; `out` gets `rows` rows of `n`.
    fn gated_activation_stacked(
        &self,
        act: Activation,
        x: &Self::Tensor,
        rows: usize,
        n: usize,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Rotates `positions.len()` rows of `n_heads × head_dim` values in place.
    fn rope(&self, x: &mut Self::Tensor, positions: &[u32], p: RopeParams) -> Result<()>;

    fn kv_cache(
        &self,
        n_ctx: usize,
        n_kv_heads: usize,
        head_dim: usize,
        ty: KvType,
    ) -> Result<Self::KvCache>;
    /// Bytes the cache occupies.
    fn kv_cache_bytes(&self, kv: &Self::KvCache) -> usize;
    /// Stores `rows` rows of k and v at positions `start..start + rows`, then computes causal attention
    /// for the `rows` query rows of q (query row i sits at position start + i) over positions
    /// `0..start + rows` of the cache. `out` gets rows of `n_heads × head_dim`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        kv: &mut Self::KvCache,
        start: usize,
        rows: usize,
        p: AttentionParams,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// 2-D copy: `rows` rows of `width` values, row r read at `src_off + r·src_stride` and written at
    /// `dst_off + r·dst_stride` (splits interleaved heads, slices fused projections).
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        src: &Self::Tensor,
        src_off: usize,
        src_stride: usize,
        dst: &mut Self::Tensor,
        dst_off: usize,
        dst_stride: usize,
        width: usize,
        rows: usize,
    ) -> Result<()>;
    /// x *= sigmoid(gate) over `rows` rows of `dim` values (the shape lets a GPU backend quantize the
    /// result for the product that follows).
    fn sigmoid_mul(
        &self,
        x: &mut Self::Tensor,
        gate: &Self::Tensor,
        rows: usize,
        dim: usize,
    ) -> Result<()>;
    /// Per row of `dim` values: RMSNorm(x)·weight ⊙ silu(z).
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_gated(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        z: &Self::Tensor,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// In place, per row of `dim` values: x / √(Σx² + eps).
    fn l2_norm(&self, x: &mut Self::Tensor, rows: usize, dim: usize, eps: f32) -> Result<()>;
    /// Rows of `[q | k | v]` (q and k `split.n_k_heads × split.head_k` values, v `split.v_dim`) split
    /// into `split.out` = [q, k, v], with each head of q and k L2-normalised ([`Backend::l2_norm`]): a
    /// Gated DeltaNet's conv output. With `split.gates`, also [`Backend::delta_net_gates`] on them
    /// (independent of the split: together only to save a GPU launch). Default: three
    /// [`Backend::copy_rows`], two norms and the gates; a GPU backend does it in one launch.
    fn split_qkv_l2(&self, qkv: &Self::Tensor, rows: usize, split: QkvSplit<'_, Self>) -> Result<()>
    where
        Self: Sized,
    {
        split_qkv_l2_by_parts(self, qkv, rows, split)
    }
    /// A Gated DeltaNet's conv and q/k/v preparation: [`Backend::conv1d_silu`] of `x` into `conv_out`
    /// (with `snapshots`, [`Backend::conv1d_silu_snapshots`]), then [`Backend::split_qkv_l2`] of it as
    /// `split` says. A GPU backend runs both as one launch for a few rows (decode, verify), and then
    /// leaves `conv_out` as it was.
    #[allow(clippy::too_many_arguments)]
    fn conv_split_qkv_l2(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        state: &mut Self::Tensor,
        rows: usize,
        snapshots: Option<&mut Self::Tensor>,
        conv_out: &mut Self::Tensor,
        split: QkvSplit<'_, Self>,
    ) -> Result<()>
    where
        Self: Sized,
    {
        conv_split_qkv_l2_by_parts(self, x, weight, state, rows, snapshots, conv_out, split)
    }
    /// A gated attention layer's query and key preparation (Qwen3.5/3.6): `qg` holds rows of
    /// `rope.n_heads` × [q | gate] (`rope.head_dim` each) and `k` rows of `n_kv_heads` heads; per head
    /// q ← RoPE(RMSNorm(q)·q_norm) into `q_out`, the gate copied into `gate_out`, and k ←
    /// RoPE(RMSNorm(k)·k_norm) into `k_out`, at `positions` (one per row). Default: two
    /// [`Backend::copy_rows`], two [`Backend::rms_norm`]s and two [`Backend::rope`]s; a GPU backend
    /// does it in one launch.
    #[allow(clippy::too_many_arguments)]
    fn gated_qk_norm_rope(
        &self,
        qg: &Self::Tensor,
        k: &Self::Tensor,
        norms: [&Self::Weight; 2],
        n_kv_heads: usize,
        eps: f32,
        positions: &[u32],
        rope: RopeParams,
        out: [&mut Self::Tensor; 3],
    ) -> Result<()>
    where
        Self: Sized,
    {
        gated_qk_norm_rope_by_parts(self, qg, k, norms, n_kv_heads, eps, positions, rope, out)
    }
    /// Causal depthwise conv1d then SiLU over `rows` tokens of `weight.rows` channels (`x`, `out`: rows
    /// × channels). `weight` holds `kernel` taps per channel, oldest first; `state` holds the
    /// previous `kernel − 1` inputs of each channel (channel-major) and is advanced past the new rows.
    fn conv1d_silu(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        state: &mut Self::Tensor,
        rows: usize,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// The gates of a Gated DeltaNet, in place over `rows` rows of `n_heads`:
    /// alpha ← softplus(alpha + dt_bias)·a (the log-decay g ≤ 0), beta ← sigmoid(beta).
    fn delta_net_gates(
        &self,
        alpha: &mut Self::Tensor,
        beta: &mut Self::Tensor,
        dt_bias: &Self::Weight,
        a: &Self::Weight,
        rows: usize,
    ) -> Result<()>;
    /// The gated delta rule over `rows` tokens, per V-head with an f32 state S (head_k_dim × head_v_dim,
    /// stored as `state[(h·dv + j)·dk + i] = S[i][j]`): S ← e^g·S; δ = β(v − Sᵀk); S ← S + k⊗δ;
    /// o = scale·Sᵀq. q, k: rows of n_k_heads × dk; v, out: rows of n_v_heads × dv; g, beta: rows of
    /// n_v_heads.
    #[allow(clippy::too_many_arguments)]
    fn gated_delta_net(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        g: &Self::Tensor,
        beta: &Self::Tensor,
        state: &mut Self::Tensor,
        rows: usize,
        p: DeltaNetParams,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// [`conv1d_silu`](Backend::conv1d_silu) that also writes the state after each of the `rows` tokens
    /// but the last (whose state is `state`) to `snapshots` (slot r at r × the state's length), so a
    /// speculative verify pass can be rolled back to any of its tokens by copying a slot, without
    /// recomputing.
    #[allow(clippy::too_many_arguments)]
    fn conv1d_silu_snapshots(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        state: &mut Self::Tensor,
        rows: usize,
        out: &mut Self::Tensor,
        snapshots: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (x, weight, state, rows, out, snapshots);
        Err(BackendError::Device(format!(
            "{}: per-token conv state snapshots are not implemented",
            self.name()
        )))
    }
    /// [`gated_delta_net`](Backend::gated_delta_net) token by token, writing the state after each of the
    /// `rows` tokens but the last (whose state is `state`) to `snapshots` (slot r at r × the state's
    /// length; `p.chunk` is ignored).
    #[allow(clippy::too_many_arguments)]
    fn gated_delta_net_snapshots(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        g: &Self::Tensor,
        beta: &Self::Tensor,
        state: &mut Self::Tensor,
        rows: usize,
        p: DeltaNetParams,
        out: &mut Self::Tensor,
        snapshots: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (q, k, v, g, beta, state, rows, p, out, snapshots);
        Err(BackendError::Device(format!(
            "{}: per-token delta-rule state snapshots are not implemented",
            self.name()
        )))
    }

    /// Per row of `x` (`rows` rows of `n` values): the index of the largest value ([`argmax`]'s order) —
    /// greedy sampling where the values are, reading back one id a row. Default: read, then [`argmax`].
    fn argmax_rows(&self, x: &Self::Tensor, rows: usize, n: usize) -> Result<Vec<u32>> {
        let values = read_rows(self, "argmax_rows", x, rows, n)?;
        Ok(values.chunks_exact(n).map(argmax).collect())
    }

    /// Per row: the `k` largest values (all of them if a row has fewer) with their indices, in
    /// [`top_k`]'s order — the candidates of top-k sampling, read back instead of the whole row.
    /// Default: read, then [`top_k`].
    fn top_k_rows(
        &self,
        x: &Self::Tensor,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        let values = read_rows(self, "top_k_rows", x, rows, n)?;
        Ok(values.chunks_exact(n).map(|row| top_k(row, k)).collect())
    }

    /// Waits for queued work (no-op on the CPU).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// `rows` rows of `n` values of `x`, read back for the sampling defaults (n ≥ 1, checked).
pub(crate) fn read_rows<B: Backend + ?Sized>(
    be: &B,
    op: &'static str,
    x: &B::Tensor,
    rows: usize,
    n: usize,
) -> Result<Vec<f32>> {
    if n == 0 {
        return Err(shape_err(op, "rows of 0 values"));
    }
    let len = rows
        .checked_mul(n)
        .ok_or_else(|| shape_err(op, "rows × n overflows"))?;
    let mut values = vec![0f32; len];
    be.read(x, 0, &mut values)?;
    Ok(values)
}

/// The sampling order: larger values first, the lower index among equal values (llama.cpp's greedy
/// tie rule), NaN after every number.
fn comes_before(a: (usize, f32), b: (usize, f32)) -> bool {
    match (a.1.is_nan(), b.1.is_nan()) {
        (false, true) => true,
        (true, false) => false,
        (true, true) => a.0 < b.0,
        (false, false) => a.1 > b.1 || (a.1 == b.1 && a.0 < b.0),
    }
}

/// The index of the first value in [`comes_before`] order (0 for an empty row).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if comes_before((i, v), (best, values[best])) {
            best = i;
        }
    }
    best as u32
}

/// The `k` first values in [`comes_before`] order with their indices (fewer if the row is shorter).
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    let by = |a: &usize, b: &usize| {
        if comes_before((*a, values[*a]), (*b, values[*b])) {
            std::cmp::Ordering::Less
        } else if a == b {
            std::cmp::Ordering::Equal
        } else {
            std::cmp::Ordering::Greater
        }
    };
    let k = k.min(values.len());
    if k < values.len() {
        order.select_nth_unstable_by(k, by);
        order.truncate(k);
    }
    order.sort_unstable_by(by);
    order.into_iter().map(|i| (i as u32, values[i])).collect()
}

/// [`Backend::gated_qk_norm_rope`] from the backend's copies, norms and RoPEs.
#[allow(clippy::too_many_arguments)]
pub fn gated_qk_norm_rope_by_parts<B: Backend>(
    be: &B,
    qg: &B::Tensor,
    k: &B::Tensor,
    [q_norm, k_norm]: [&B::Weight; 2],
    n_kv_heads: usize,
    eps: f32,
    positions: &[u32],
    rope: RopeParams,
    [q_out, gate_out, k_out]: [&mut B::Tensor; 3],
) -> Result<()> {
    let (n, hd, nh) = (positions.len(), rope.head_dim, rope.n_heads);
    // The gate's buffer holds q on its way to the norm.
    be.copy_rows(qg, 0, 2 * hd, gate_out, 0, hd, hd, n * nh)?;
    be.rms_norm(gate_out, Some(q_norm), n * nh, hd, eps, q_out)?;
    be.copy_rows(qg, hd, 2 * hd, gate_out, 0, hd, hd, n * nh)?;
    be.rms_norm(k, Some(k_norm), n * n_kv_heads, hd, eps, k_out)?;
    be.rope(q_out, positions, rope)?;
    be.rope(
        k_out,
        positions,
        RopeParams {
            n_heads: n_kv_heads,
            ..rope
        },
    )
}

/// The inputs of [`Backend::delta_net_gates`], for [`Backend::split_qkv_l2`] to apply.
pub struct DeltaNetGates<'a, B: Backend> {
    pub alpha: &'a mut B::Tensor,
    pub beta: &'a mut B::Tensor,
    pub dt_bias: &'a B::Weight,
    pub a: &'a B::Weight,
}

/// What [`Backend::split_qkv_l2`] and [`Backend::conv_split_qkv_l2`] take besides their input rows: the
/// heads of q and k, the width of v, the norms' eps, the outputs [q, k, v] and the gates.
pub struct QkvSplit<'a, B: Backend> {
    pub n_k_heads: usize,
    pub head_k: usize,
    pub v_dim: usize,
    pub eps: f32,
    pub out: [&'a mut B::Tensor; 3],
    pub gates: Option<DeltaNetGates<'a, B>>,
}

/// [`Backend::conv_split_qkv_l2`] as its two operations.
#[allow(clippy::too_many_arguments)]
pub fn conv_split_qkv_l2_by_parts<B: Backend>(
    be: &B,
    x: &B::Tensor,
    weight: &B::Weight,
    state: &mut B::Tensor,
    rows: usize,
    snapshots: Option<&mut B::Tensor>,
    conv_out: &mut B::Tensor,
    split: QkvSplit<'_, B>,
) -> Result<()> {
    match snapshots {
        Some(s) => be.conv1d_silu_snapshots(x, weight, state, rows, conv_out, s)?,
        None => be.conv1d_silu(x, weight, state, rows, conv_out)?,
    }
    be.split_qkv_l2(conv_out, rows, split)
}

/// [`Backend::split_qkv_l2`] from the backend's copies and norms (and its gates op).
pub fn split_qkv_l2_by_parts<B: Backend>(
    be: &B,
    qkv: &B::Tensor,
    rows: usize,
    split: QkvSplit<'_, B>,
) -> Result<()> {
    let QkvSplit {
        n_k_heads,
        head_k,
        v_dim,
        eps,
        out: [q, k, v],
        gates,
    } = split;
    let kd = n_k_heads * head_k;
    let cd = 2 * kd + v_dim;
    be.copy_rows(qkv, 0, cd, q, 0, kd, kd, rows)?;
    be.copy_rows(qkv, kd, cd, k, 0, kd, kd, rows)?;
    be.copy_rows(qkv, 2 * kd, cd, v, 0, v_dim, v_dim, rows)?;
    be.l2_norm(q, rows * n_k_heads, head_k, eps)?;
    be.l2_norm(k, rows * n_k_heads, head_k, eps)?;
    match gates {
        Some(g) => be.delta_net_gates(g.alpha, g.beta, g.dt_bias, g.a, rows),
        None => Ok(()),
    }
}
