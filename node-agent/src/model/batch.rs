//! Batched decoding across sequences: one forward pass over one new token of each of several sequences.
//! The row-wise work (embedding, norms, projections, FFN, output head) runs over all rows at once, so
//! the weights are read once per step instead of once per sequence; what depends on a sequence's own
//! history (attention over its KV cache, the recurrent conv and delta-rule state) runs per row against
//! that row's cache. The backend ops read their inputs from offset 0, so a row is copied into a
//! one-row buffer for those ops and its result copied back: a few KB per row and layer, next to the
//! megabytes of weights the batched matmuls save.

use super::{wrong_cache, Cache, LayerCache, ModelError, RecurrentState, Result};
use kiln_kernels::backend::{AttentionParams, Backend, DeltaNetParams};

/// One row of a batched decode pass: the next token of one sequence, at cache entry (and RoPE
/// position) `pos`, extending `cache`.
pub struct BatchRow<'a, B: Backend> {
    pub cache: &'a mut Cache<B>,
    pub token: u32,
    pub pos: usize,
}

/// Whose caches a forward pass extends.
pub(crate) enum Seqs<'a, 'b, B: Backend> {
    /// One sequence; its rows sit at consecutive entries from `start`.
    One {
        cache: &'a mut Cache<B>,
        start: usize,
    },
    /// One row per sequence (batched decoding).
    Rows(&'a mut [BatchRow<'b, B>]),
}

/// Which cache one layer reads and extends: layer `il`'s view of [`Seqs`].
pub(crate) enum LayerTarget<'a, 'b, B: Backend> {
    /// One sequence's layer cache; its rows sit at consecutive attention entries from the given start.
    One(&'a mut LayerCache<B>, usize),
    /// Layer `.1` of every row's own cache (batched decoding, one row per sequence).
    Rows(&'a mut [BatchRow<'b, B>], usize),
}

impl<'a, 'b, B: Backend> Seqs<'a, 'b, B> {
    /// Layer `il`'s target.
    pub(crate) fn layer(&mut self, il: usize) -> Result<LayerTarget<'_, 'b, B>> {
        Ok(match self {
            Seqs::One { cache, start } => {
                LayerTarget::One(cache.layers.get_mut(il).ok_or_else(wrong_cache)?, *start)
            }
            Seqs::Rows(rows) => LayerTarget::Rows(rows, il),
        })
    }
}

/// Attention of one layer for `n` rows of (already RoPE'd) q, k, v into `out`: against one sequence's
/// KV cache, or per row against each row's own (see [`attention_rows`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<B: Backend>(
    be: &B,
    target: LayerTarget<'_, '_, B>,
    q: &B::Tensor,
    k: &B::Tensor,
    v: &B::Tensor,
    n: usize,
    p: AttentionParams,
    rs: &mut RowScratch<B>,
    out: &mut B::Tensor,
) -> Result<()> {
    match target {
        LayerTarget::One(LayerCache::Attention(kv), start) => {
            Ok(be.attention(q, k, v, kv, start, n, p, out)?)
        }
        LayerTarget::One(LayerCache::Recurrent(_), _) => Err(wrong_cache()),
        LayerTarget::Rows(rows, il) => attention_rows(be, rows, il, q, k, v, p, rs, out),
    }
}

/// The checks every batched pass makes before touching any cache, so a refused batch changes nothing:
/// 1..=`max_batch` rows, each position inside its cache's context, caches made for this model. Gives
/// the pass's inputs: the rows' tokens and their positions.
pub(crate) fn check_batch<B: Backend>(
    rows: &[BatchRow<'_, B>],
    n_layers: usize,
    max_batch: usize,
) -> Result<(Vec<u32>, Vec<u32>)> {
    if rows.is_empty() || rows.len() > max_batch {
        return Err(ModelError::Invalid(format!(
            "a batched pass takes 1..={max_batch} rows, got {}",
            rows.len()
        )));
    }
    for (r, row) in rows.iter().enumerate() {
        super::check_forward(row.cache, n_layers, &[row.token], row.pos, max_batch)
            .map_err(|e| ModelError::Invalid(format!("batch row {r}: {e}")))?;
    }
    Ok((
        rows.iter().map(|r| r.token).collect(),
        rows.iter().map(|r| r.pos as u32).collect(),
    ))
}

/// The logits of a batched pass (rows × n_vocab, row-major) split into one vector per row.
pub(crate) fn split_rows(all: Vec<f32>, n_vocab: usize) -> Vec<Vec<f32>> {
    all.chunks_exact(n_vocab).map(<[f32]>::to_vec).collect()
}

/// One-row buffers for the per-row ops of a batched pass, each `width` values (the widest row any of
/// them holds).
pub(crate) struct RowScratch<B: Backend> {
    width: usize,
    a: B::Tensor,
    b: B::Tensor,
    c: B::Tensor,
    d: B::Tensor,
    e: B::Tensor,
    out: B::Tensor,
}

impl<B: Backend> RowScratch<B> {
    pub(crate) fn new(be: &B, width: usize) -> Result<Self> {
        Ok(RowScratch {
            width,
            a: be.tensor(width)?,
            b: be.tensor(width)?,
            c: be.tensor(width)?,
            d: be.tensor(width)?,
            e: be.tensor(width)?,
            out: be.tensor(width)?,
        })
    }

    fn check(&self, widths: &[usize]) -> Result<()> {
        match widths.iter().find(|&&w| w > self.width) {
            Some(w) => Err(ModelError::Invalid(format!(
                "a row of {w} values does not fit the {}-value row buffer",
                self.width
            ))),
            None => Ok(()),
        }
    }
}

/// Layer `il` of a batch row's cache as an attention cache.
fn kv_of<'c, B: Backend>(row: &'c mut BatchRow<'_, B>, il: usize) -> Result<&'c mut B::KvCache> {
    match row.cache.layers.get_mut(il) {
        Some(LayerCache::Attention(kv)) => Ok(kv),
        _ => Err(wrong_cache()),
    }
}

/// Layer `il` of a batch row's cache as a recurrent state.
fn state_of<'c, B: Backend>(
    row: &'c mut BatchRow<'_, B>,
    il: usize,
) -> Result<&'c mut RecurrentState<B>> {
    match row.cache.layers.get_mut(il) {
        Some(LayerCache::Recurrent(st)) => Ok(st),
        _ => Err(wrong_cache()),
    }
}

/// Attention of layer `il` for every row: row r's (already RoPE'd) q, k, v rows are stored into and
/// attend over row r's own KV cache at its own position; the result goes to row r of `out`.
#[allow(clippy::too_many_arguments)]
fn attention_rows<B: Backend>(
    be: &B,
    rows: &mut [BatchRow<'_, B>],
    il: usize,
    q: &B::Tensor,
    k: &B::Tensor,
    v: &B::Tensor,
    p: AttentionParams,
    rs: &mut RowScratch<B>,
    out: &mut B::Tensor,
) -> Result<()> {
    let (qw, kvw) = (p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim);
    rs.check(&[qw, kvw])?;
    for (r, row) in rows.iter_mut().enumerate() {
        be.copy(q, r * qw, &mut rs.a, 0, qw)?;
        be.copy(k, r * kvw, &mut rs.b, 0, kvw)?;
        be.copy(v, r * kvw, &mut rs.c, 0, kvw)?;
        let pos = row.pos;
        be.attention(&rs.a, &rs.b, &rs.c, kv_of(row, il)?, pos, 1, p, &mut rs.out)?;
        be.copy(&rs.out, 0, out, r * qw, qw)?;
    }
    Ok(())
}

/// The causal conv1d + SiLU of recurrent layer `il` for every row (`x`, `out`: rows of `channels`),
/// each row advancing its own conv state.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv1d_silu_rows<B: Backend>(
    be: &B,
    rows: &mut [BatchRow<'_, B>],
    il: usize,
    x: &B::Tensor,
    weight: &B::Weight,
    channels: usize,
    rs: &mut RowScratch<B>,
    out: &mut B::Tensor,
) -> Result<()> {
    rs.check(&[channels])?;
    for (r, row) in rows.iter_mut().enumerate() {
        be.copy(x, r * channels, &mut rs.a, 0, channels)?;
        let st = state_of(row, il)?;
        be.conv1d_silu(&rs.a, weight, &mut st.conv, 1, &mut rs.out)?;
        be.copy(&rs.out, 0, out, r * channels, channels)?;
    }
    Ok(())
}

/// The gated delta rule of recurrent layer `il` for every row, one token each, against that row's own
/// state (see [`Backend::gated_delta_net`] for the shapes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_delta_net_rows<B: Backend>(
    be: &B,
    rows: &mut [BatchRow<'_, B>],
    il: usize,
    q: &B::Tensor,
    k: &B::Tensor,
    v: &B::Tensor,
    g: &B::Tensor,
    beta: &B::Tensor,
    p: DeltaNetParams,
    rs: &mut RowScratch<B>,
    out: &mut B::Tensor,
) -> Result<()> {
    let (kw, vw, hw) = (
        p.n_k_heads * p.head_k_dim,
        p.n_v_heads * p.head_v_dim,
        p.n_v_heads,
    );
    rs.check(&[kw, vw, hw])?;
    // One token per call: the chunked form is for multi-token passes.
    let p = DeltaNetParams { chunk: None, ..p };
    for (r, row) in rows.iter_mut().enumerate() {
        be.copy(q, r * kw, &mut rs.a, 0, kw)?;
        be.copy(k, r * kw, &mut rs.b, 0, kw)?;
        be.copy(v, r * vw, &mut rs.c, 0, vw)?;
        be.copy(g, r * hw, &mut rs.d, 0, hw)?;
        be.copy(beta, r * hw, &mut rs.e, 0, hw)?;
        let st = state_of(row, il)?;
        be.gated_delta_net(
            &rs.a,
            &rs.b,
            &rs.c,
            &rs.d,
            &rs.e,
            &mut st.ssm,
            1,
            p,
            &mut rs.out,
        )?;
        be.copy(&rs.out, 0, out, r * vw, vw)?;
    }
    Ok(())
}
