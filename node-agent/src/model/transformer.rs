//! The dense decoder-only transformer that llama, qwen2, qwen3 and gemma3 are variations of. The
//! architecture files fill a [`TransformerSpec`]; this file loads the tensors and runs the forward pass.

use super::batch::{self, BatchRow, RowScratch, Seqs};
use super::gate_up::GateUp;
use super::{
    Cache, LayerCache, Logits, Model, ModelError, ModelInfo, Output, PassOptions, Readout, Result,
};
use crate::gguf::{GgufFile, TensorInfo};
use kiln_kernels::backend::{
    Activation, AttentionParams, Backend, HostBytes, KvType, RopeParams, RopeStyle, WeightSource,
};
use std::sync::{Arc, Mutex};

/// Caps on dimensions read from the file: far above any real model, low enough that products of them
/// cannot overflow or size absurd buffers.
pub const MAX_DIM: u64 = 1 << 20;
pub const MAX_LAYERS: u64 = 4096;

/// Sliding-window attention on some layers (Gemma 3: five local layers, then one global).
#[derive(Clone, Debug)]
pub struct SlidingWindow {
    pub window: usize,
    /// Layer `il` is global when `il % pattern == pattern - 1`, local otherwise.
    pub pattern: usize,
    /// RoPE base of the local layers.
    pub rope_base: f32,
}

#[derive(Clone, Debug)]
pub struct TransformerSpec {
    pub arch: String,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_freq_scale: f32,
    pub n_rot: usize,
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// q, k, v projections carry biases (qwen2).
    pub qkv_bias: bool,
    /// RMSNorm per head on q and k before RoPE (qwen3, gemma3).
    pub qk_norm: bool,
    /// RMSNorm after attention and after the FFN, before each residual add (gemma).
    pub post_norms: bool,
    /// Multiplies the token embeddings (gemma: √n_embd).
    pub embed_scale: Option<f32>,
    /// Multiplies q·k (llama.cpp folds gemma's into q first; same value).
    pub attn_scale: f32,
    pub sliding_window: Option<SlidingWindow>,
    pub final_logit_softcap: Option<f32>,
}

impl TransformerSpec {
    /// Reads the hyperparameters every dense architecture stores under `<arch>.*`.
    pub fn read_common(file: &GgufFile, arch: &str) -> Result<Self> {
        let m = &file.metadata;
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = m.get_dim(&key("embedding_length"), MAX_DIM)?;
        let n_head = m.get_dim(&key("attention.head_count"), MAX_DIM)?;
        let n_head_kv = m
            .opt_dim(&key("attention.head_count_kv"), MAX_DIM)?
            .unwrap_or(n_head);
        let head_dim = m
            .opt_dim(&key("attention.key_length"), MAX_DIM)?
            .unwrap_or(n_embd / n_head);
        if let Some(v) = m.opt_dim(&key("attention.value_length"), MAX_DIM)? {
            if v != head_dim {
                return Err(ModelError::Invalid(format!(
                    "value_length {v} differs from key_length {head_dim}; not supported"
                )));
            }
        }
        if n_head % n_head_kv != 0 {
            return Err(ModelError::Invalid(format!(
                "{n_head} attention heads are not a multiple of {n_head_kv} KV heads"
            )));
        }
        let n_rot = m
            .opt_dim(&key("rope.dimension_count"), MAX_DIM)?
            .unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 || n_rot > 512 {
            return Err(ModelError::Invalid(format!(
                "rope dimension {n_rot} does not fit head size {head_dim}"
            )));
        }
        let freq_scale = match m.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / m.get_f32(&key("rope.scaling.factor"))?,
            Some(other) => {
                return Err(ModelError::Invalid(format!(
                    "rope scaling `{other}` is not supported yet"
                )))
            }
        };
        Ok(TransformerSpec {
            arch: arch.to_string(),
            n_embd,
            n_layer: m.get_dim(&key("block_count"), MAX_LAYERS)?,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: m.get_dim(&key("feed_forward_length"), MAX_DIM)?,
            n_ctx_train: m.get_dim(&key("context_length"), 1 << 24)?,
            rms_eps: m.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: m.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
            rope_freq_scale: freq_scale,
            n_rot,
            rope_style: RopeStyle::Neox,
            activation: Activation::SwiGlu,
            qkv_bias: false,
            qk_norm: false,
            post_norms: false,
            embed_scale: None,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            sliding_window: None,
            final_logit_softcap: None,
        })
    }

    fn is_local(&self, il: usize) -> bool {
        self.sliding_window
            .as_ref()
            .is_some_and(|w| il % w.pattern != w.pattern - 1)
    }
}

struct Layer<B: Backend> {
    attn_norm: B::Weight,
    wq: B::Weight,
    wk: B::Weight,
    wv: B::Weight,
    wo: B::Weight,
    bias: Option<[B::Weight; 3]>,
    qk_norm: Option<[B::Weight; 2]>,
    post_attn_norm: Option<B::Weight>,
    ffn_norm: B::Weight,
    gate_up: GateUp<B>,
    w_down: B::Weight,
    post_ffn_norm: Option<B::Weight>,
}

/// Activation buffers for one forward pass of up to `rows` tokens.
struct Scratch<B: Backend> {
    rows: usize,
    x: B::Tensor,
    h: B::Tensor,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    att: B::Tensor,
    o: B::Tensor,
    gate: B::Tensor,
    up: B::Tensor,
    tmp: B::Tensor,
    logits: B::Tensor,
    /// One-row buffers for the per-sequence attention of a batched decode pass.
    row: RowScratch<B>,
}

pub struct Transformer<B: Backend> {
    spec: TransformerSpec,
    info: ModelInfo,
    backend: Arc<B>,
    tok_embd: B::Weight,
    /// `None`: the output head is tied to the token embeddings.
    output: Option<B::Weight>,
    output_norm: B::Weight,
    layers: Vec<Layer<B>>,
    /// Forward passes of one model are serialised by the engine; the scratch is reused across them.
    scratch: Mutex<Option<Scratch<B>>>,
}

/// Most tokens one forward pass takes (llama.cpp's default micro-batch).
pub(crate) const MAX_BATCH: usize = 512;

pub(crate) struct Loader<'a, B: Backend> {
    pub(crate) file: &'a GgufFile,
    pub(crate) backend: &'a B,
}

impl<B: Backend> Loader<'_, B> {
    /// Loads `name`, checking it is `rows × cols` (a vector when `rows == 1`).
    pub(crate) fn load(&self, name: &str, rows: usize, cols: usize) -> Result<B::Weight> {
        Ok(self.backend.load_weight(self.source(name, rows, cols)?)?)
    }

    /// Loads `parts` (name, rows), each `rows × cols` and all of one type, as one stacked weight where
    /// the backend supports it (`None`: it does not, or the types differ; load them one by one).
    pub(crate) fn load_stacked(
        &self,
        parts: &[(&str, usize)],
        cols: usize,
    ) -> Result<Option<B::Weight>> {
        let sources = parts
            .iter()
            .map(|&(name, rows)| self.source(name, rows, cols))
            .collect::<Result<Vec<_>>>()?;
        if sources.windows(2).any(|w| w[0].ty != w[1].ty) {
            return Ok(None);
        }
        Ok(self.backend.load_stacked(sources)?)
    }

    /// The checked, zero-copy view of tensor `name` as a `rows × cols` weight.
    fn source(&self, name: &str, rows: usize, cols: usize) -> Result<WeightSource> {
        let t = self.file.require_tensor(name)?;
        self.check(t, rows, cols)?;
        let start = t.offset as usize;
        let map: Arc<dyn AsRef<[u8]> + Send + Sync> = self.file.map().clone();
        let bytes = HostBytes::new(map, start..start + t.n_bytes as usize).ok_or_else(|| {
            ModelError::BadTensor {
                name: name.into(),
                reason: "data outside the file".into(),
            }
        })?;
        Ok(WeightSource {
            name: name.to_string(),
            ty: t.ty,
            rows,
            cols,
            bytes,
        })
    }

    pub(crate) fn opt(&self, name: &str, rows: usize, cols: usize) -> Result<Option<B::Weight>> {
        match self.file.tensor(name) {
            Some(_) => self.load(name, rows, cols).map(Some),
            None => Ok(None),
        }
    }

    fn check(&self, t: &TensorInfo, rows: usize, cols: usize) -> Result<()> {
        let (r, c) = t.rows_cols();
        if (r, c) != (rows, cols) || t.dims.len() > 2 {
            return Err(ModelError::BadTensor {
                name: t.name.clone(),
                reason: format!("shape {:?}, expected [{cols}, {rows}]", t.dims),
            });
        }
        if !t.ty.is_supported() {
            return Err(ModelError::BadTensor {
                name: t.name.clone(),
                reason: format!("type {} is not supported", t.ty),
            });
        }
        Ok(())
    }
}

impl<B: Backend> Transformer<B> {
    pub fn load(file: &GgufFile, backend: Arc<B>, spec: TransformerSpec) -> Result<Self> {
        let ld = Loader {
            file,
            backend: &*backend,
        };
        let tok = file.require_tensor("token_embd.weight")?;
        let n_vocab = tok.rows_cols().0;
        if n_vocab == 0 || n_vocab as u64 > 1 << 24 {
            return Err(ModelError::Invalid(format!("vocabulary of {n_vocab}")));
        }
        let (d, hd) = (spec.n_embd, spec.head_dim);
        let (q_dim, kv_dim) = (spec.n_head * hd, spec.n_head_kv * hd);
        let tok_embd = ld.load("token_embd.weight", n_vocab, d)?;
        let output = ld.opt("output.weight", n_vocab, d)?;
        let output_norm = ld.load("output_norm.weight", 1, d)?;
        let mut layers = Vec::with_capacity(spec.n_layer);
        for il in 0..spec.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            let b = |s: &str| format!("blk.{il}.{s}.bias");
            layers.push(Layer {
                attn_norm: ld.load(&n("attn_norm"), 1, d)?,
                wq: ld.load(&n("attn_q"), q_dim, d)?,
                wk: ld.load(&n("attn_k"), kv_dim, d)?,
                wv: ld.load(&n("attn_v"), kv_dim, d)?,
                wo: ld.load(&n("attn_output"), d, q_dim)?,
                bias: if spec.qkv_bias {
                    Some([
                        ld.load(&b("attn_q"), 1, q_dim)?,
                        ld.load(&b("attn_k"), 1, kv_dim)?,
                        ld.load(&b("attn_v"), 1, kv_dim)?,
                    ])
                } else {
                    None
                },
                qk_norm: if spec.qk_norm {
                    Some([
                        ld.load(&n("attn_q_norm"), 1, hd)?,
                        ld.load(&n("attn_k_norm"), 1, hd)?,
                    ])
                } else {
                    None
                },
                post_attn_norm: if spec.post_norms {
                    Some(ld.load(&n("post_attention_norm"), 1, d)?)
                } else {
                    None
                },
                ffn_norm: ld.load(&n("ffn_norm"), 1, d)?,
                gate_up: GateUp::load(&ld, &n("ffn_gate"), &n("ffn_up"), spec.n_ff, d)?,
                w_down: ld.load(&n("ffn_down"), d, spec.n_ff)?,
                post_ffn_norm: if spec.post_norms {
                    Some(ld.load(&n("post_ffw_norm"), 1, d)?)
                } else {
                    None
                },
            });
        }
        let info = ModelInfo {
            arch: spec.arch.clone(),
            n_vocab,
            n_embd: d,
            n_layer: spec.n_layer,
            n_ctx_train: spec.n_ctx_train,
        };
        Ok(Transformer {
            spec,
            info,
            backend,
            tok_embd,
            output,
            output_norm,
            layers,
            scratch: Mutex::new(None),
        })
    }

    fn with_scratch<T>(
        &self,
        rows: usize,
        f: impl FnOnce(&mut Scratch<B>) -> Result<T>,
    ) -> Result<T> {
        super::with_scratch(
            &self.scratch,
            rows,
            MAX_BATCH,
            |sc| sc.rows,
            |r| self.scratch(r),
            f,
        )
    }

    fn scratch(&self, rows: usize) -> Result<Scratch<B>> {
        let s = &self.spec;
        let be = &*self.backend;
        let (d, q_dim, kv_dim) = (s.n_embd, s.n_head * s.head_dim, s.n_head_kv * s.head_dim);
        let widest = d.max(q_dim).max(s.n_ff);
        Ok(Scratch {
            rows,
            x: be.tensor(rows * d)?,
            h: be.tensor(rows * d)?,
            // q, k, o and tmp trade places (std::mem::swap) after in-place-style ops, so they share
            // one size: the widest row any of them holds.
            q: be.tensor(rows * widest)?,
            k: be.tensor(rows * widest)?,
            v: be.tensor(rows * kv_dim)?,
            att: be.tensor(rows * q_dim)?,
            o: be.tensor(rows * widest)?,
            gate: be.tensor(rows * GateUp::<B>::GATE_BUF_WIDTH * s.n_ff)?,
            up: be.tensor(rows * s.n_ff)?,
            tmp: be.tensor(rows * widest)?,
            logits: be.tensor(rows * self.info.n_vocab)?,
            row: RowScratch::new(be, q_dim.max(kv_dim))?,
        })
    }

    fn run(
        &self,
        sc: &mut Scratch<B>,
        mut seqs: Seqs<'_, '_, B>,
        tokens: &[u32],
        positions: &[u32],
        want: Logits,
        readout: Readout,
    ) -> Result<Output> {
        let s = &self.spec;
        let be = &*self.backend;
        let n = tokens.len();
        let (d, hd) = (s.n_embd, s.head_dim);

        be.embed(&self.tok_embd, tokens, &mut sc.x)?;
        if let Some(scale) = s.embed_scale {
            be.scale(&mut sc.x, scale, n * d)?;
        }
        for (il, layer) in self.layers.iter().enumerate() {
            be.rms_norm(&sc.x, Some(&layer.attn_norm), n, d, s.rms_eps, &mut sc.h)?;
            be.matmul_group(
                &mut [
                    (&layer.wq, &mut sc.q),
                    (&layer.wk, &mut sc.k),
                    (&layer.wv, &mut sc.v),
                ],
                &sc.h,
                n,
            )?;
            if let Some([bq, bk, bv]) = &layer.bias {
                be.add_bias(&mut sc.q, bq, n, s.n_head * hd)?;
                be.add_bias(&mut sc.k, bk, n, s.n_head_kv * hd)?;
                be.add_bias(&mut sc.v, bv, n, s.n_head_kv * hd)?;
            }
            if let Some([qn, kn]) = &layer.qk_norm {
                be.rms_norm(&sc.q, Some(qn), n * s.n_head, hd, s.rms_eps, &mut sc.tmp)?;
                std::mem::swap(&mut sc.q, &mut sc.tmp);
                be.rms_norm(&sc.k, Some(kn), n * s.n_head_kv, hd, s.rms_eps, &mut sc.tmp)?;
                std::mem::swap(&mut sc.k, &mut sc.tmp);
            }
            let local = s.is_local(il);
            let rope = |heads| RopeParams {
                n_heads: heads,
                head_dim: hd,
                n_rot: s.n_rot,
                theta_base: match (&s.sliding_window, local) {
                    (Some(w), true) => w.rope_base,
                    _ => s.rope_base,
                },
                freq_scale: if local { 1.0 } else { s.rope_freq_scale },
                style: s.rope_style,
            };
            be.rope(&mut sc.q, positions, rope(s.n_head))?;
            be.rope(&mut sc.k, positions, rope(s.n_head_kv))?;
            let params = AttentionParams {
                n_heads: s.n_head,
                n_kv_heads: s.n_head_kv,
                head_dim: hd,
                scale: s.attn_scale,
                window: if local {
                    s.sliding_window.as_ref().map(|w| w.window)
                } else {
                    None
                },
                softcap: None,
            };
            batch::attention(
                be,
                seqs.layer(il)?,
                &sc.q,
                &sc.k,
                &sc.v,
                n,
                params,
                &mut sc.row,
                &mut sc.att,
            )?;
            be.matmul(&layer.wo, &sc.att, n, &mut sc.o)?;
            if let Some(norm) = &layer.post_attn_norm {
                be.rms_norm(&sc.o, Some(norm), n, d, s.rms_eps, &mut sc.tmp)?;
                std::mem::swap(&mut sc.o, &mut sc.tmp);
            }
            be.add_assign(&mut sc.x, &sc.o, n * d)?;

            be.rms_norm(&sc.x, Some(&layer.ffn_norm), n, d, s.rms_eps, &mut sc.h)?;
            layer.gate_up.apply(
                be,
                s.activation,
                &sc.h,
                n,
                s.n_ff,
                [&mut sc.gate, &mut sc.up],
                &mut sc.tmp,
            )?;
            be.matmul(&layer.w_down, &sc.tmp, n, &mut sc.o)?;
            if let Some(norm) = &layer.post_ffn_norm {
                be.rms_norm(&sc.o, Some(norm), n, d, s.rms_eps, &mut sc.tmp)?;
                std::mem::swap(&mut sc.o, &mut sc.tmp);
            }
            be.add_assign(&mut sc.x, &sc.o, n * d)?;
        }

        // Only the rows that need logits go through the (large) output head.
        let (first, rows) = match want {
            Logits::Last => (n - 1, 1),
            Logits::All => (0, n),
        };
        be.copy(&sc.x, first * d, &mut sc.o, 0, rows * d)?;
        be.rms_norm(
            &sc.o,
            Some(&self.output_norm),
            rows,
            d,
            s.rms_eps,
            &mut sc.h,
        )?;
        let head = self.output.as_ref().unwrap_or(&self.tok_embd);
        let nv = self.info.n_vocab;
        be.matmul(head, &sc.h, rows, &mut sc.logits)?;
        let Some(cap) = s.final_logit_softcap else {
            return Output::read(be, &sc.logits, rows, nv, readout);
        };
        // The soft cap is applied on the host, so the rows come back whole and are picked from here.
        let mut out = vec![0f32; rows * nv];
        be.read(&sc.logits, 0, &mut out)?;
        out.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        Ok(Output::from_logits(out, nv, readout))
    }
}

impl<B: Backend> Model<B> for Transformer<B> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_cache(&self, n_ctx: usize, kv_type: KvType) -> Result<Cache<B>> {
        let s = &self.spec;
        let layers = (0..s.n_layer)
            .map(|_| {
                self.backend
                    .kv_cache(n_ctx, s.n_head_kv, s.head_dim, kv_type)
                    .map(LayerCache::Attention)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Cache {
            layers,
            n_ctx,
            kv_type,
        })
    }

    fn forward(
        &self,
        cache: &mut Cache<B>,
        tokens: &[u32],
        start: usize,
        logits: Logits,
    ) -> Result<Vec<f32>> {
        self.forward_with(cache, tokens, start, PassOptions::plain(logits))?
            .into_logits()
    }

    fn forward_with(
        &self,
        cache: &mut Cache<B>,
        tokens: &[u32],
        start: usize,
        opts: PassOptions<'_, B>,
    ) -> Result<Output> {
        opts.check_plain(&self.info.arch)?;
        super::check_forward(cache, self.layers.len(), tokens, start, MAX_BATCH)?;
        let positions: Vec<u32> = (start..start + tokens.len()).map(|p| p as u32).collect();
        let (want, readout) = (opts.logits, opts.readout);
        self.with_scratch(tokens.len(), |sc| {
            self.run(
                sc,
                Seqs::One { cache, start },
                tokens,
                &positions,
                want,
                readout,
            )
        })
    }

    fn forward_batch(&self, rows: &mut [BatchRow<'_, B>]) -> Result<Vec<Vec<f32>>> {
        let (tokens, positions) = batch::check_batch(rows, self.layers.len(), MAX_BATCH)?;
        let all = self.with_scratch(rows.len(), |sc| {
            let (want, readout) = (Logits::All, Readout::Logits);
            self.run(sc, Seqs::Rows(rows), &tokens, &positions, want, readout)
        })?;
        Ok(batch::split_rows(all.into_logits()?, self.info.n_vocab))
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }
}
