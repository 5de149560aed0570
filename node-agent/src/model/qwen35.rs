//! `qwen35` (Qwen3.5 / Qwen3.6): a hybrid of Gated DeltaNet (linear attention with a recurrent state) and
//! gated full attention, plus an MTP (multi-token prediction) block stored as the last `blk.*`.
//!
//! Layer i is full attention iff (i + 1) % `full_attention_interval` == 0 (or as
//! `attention.recurrent_layers` says); the others are Gated DeltaNet. Every layer is
//! x += mixer(RMSNorm(x)·attn_norm); x += FFN(RMSNorm(x)·post_attention_norm), with a SwiGLU FFN.
//!
//! What llama.cpp's converter already did to the tensors (so this file does not): norm weights are stored
//! as w + 1 (plain x·w here) except the DeltaNet output norm; `ssm_a` = −exp(A_log); the V heads are in
//! tiled order, so V-head h reads Q/K head h % n_k_heads.
//!
//! - Gated attention: `attn_q` yields, per head, head_dim query values then head_dim gate values; q and k
//!   get a per-head RMSNorm; RoPE (IMROPE, which with a text position in every component is plain NeoX
//!   RoPE) rotates the first `rope.dimension_count` dims; the output is multiplied by sigmoid(gate).
//! - Gated DeltaNet: `attn_qkv` → causal conv (kernel `ssm.conv_kernel`) + SiLU over the q|k|v channels;
//!   q, k L2-normalised per head; β = sigmoid(`ssm_beta`·x); g = softplus(`ssm_alpha`·x + dt_bias)·ssm_a;
//!   the delta rule with q scaled by 1/√d_k; RMSNorm(o)·ssm_norm ⊙ silu(`attn_gate`·x); `ssm_out`.

use super::batch::{self, BatchRow, LayerTarget, RowScratch, Seqs};
use super::gate_up::GateUp;
use super::transformer::{Loader, MAX_BATCH, MAX_DIM, MAX_LAYERS};
use super::{
    wrong_cache, Cache, DraftHead, LayerCache, Logits, Model, ModelError, ModelInfo, Output,
    PassOptions, RecurrentState, Result,
};
use crate::gguf::{GgufFile, Value};
use kiln_kernels::backend::{
    Activation, AttentionParams, Backend, DeltaNetGates, DeltaNetParams, KvType, QkvSplit,
    RopeParams, RopeStyle,
};
use std::sync::{Arc, Mutex};

/// Tokens per chunk of the chunked delta rule used for prefill.
pub const DELTA_NET_CHUNK: usize = 64;

#[derive(Clone, Debug)]
pub struct Hparams {
    pub n_embd: usize,
    /// Main-model layers (block_count − nextn_predict_layers).
    pub n_layer: usize,
    /// MTP blocks stored after the main layers.
    pub n_nextn: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub n_rot: usize,
    pub conv_kernel: usize,
    pub n_k_heads: usize,
    pub n_v_heads: usize,
    pub head_k_dim: usize,
    pub head_v_dim: usize,
    /// Per main layer: Gated DeltaNet (true) or full attention (false).
    pub recurrent: Vec<bool>,
}

impl Hparams {
    pub fn read(file: &GgufFile) -> Result<Self> {
        let m = &file.metadata;
        let key = |k: &str| format!("qwen35.{k}");
        let n_embd = m.get_dim(&key("embedding_length"), MAX_DIM)?;
        let block_count = m.get_dim(&key("block_count"), MAX_LAYERS)?;
        let n_nextn = m
            .opt_dim(&key("nextn_predict_layers"), MAX_LAYERS)?
            .unwrap_or(0);
        if n_nextn >= block_count {
            return Err(ModelError::Invalid(format!(
                "{n_nextn} MTP layers of {block_count} blocks"
            )));
        }
        let n_layer = block_count - n_nextn;
        let n_head = m.get_dim(&key("attention.head_count"), MAX_DIM)?;
        let n_head_kv = m.get_dim(&key("attention.head_count_kv"), MAX_DIM)?;
        let head_dim = m.get_dim(&key("attention.key_length"), MAX_DIM)?;
        let v_len = m
            .opt_dim(&key("attention.value_length"), MAX_DIM)?
            .unwrap_or(head_dim);
        if v_len != head_dim || n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(ModelError::Invalid(format!(
                "attention: {n_head} heads, {n_head_kv} KV heads, key {head_dim}, value {v_len}"
            )));
        }
        let n_rot = m.get_dim(&key("rope.dimension_count"), MAX_DIM)?;
        if n_rot > head_dim || n_rot % 2 != 0 || n_rot > 512 {
            return Err(ModelError::Invalid(format!(
                "rope dimension {n_rot} with head size {head_dim}"
            )));
        }
        let conv_kernel = m.get_dim(&key("ssm.conv_kernel"), 64)?;
        let d_state = m.get_dim(&key("ssm.state_size"), 4096)?;
        let n_k_heads = m.get_dim(&key("ssm.group_count"), MAX_DIM)?;
        let n_v_heads = m.get_dim(&key("ssm.time_step_rank"), MAX_DIM)?;
        let d_inner = m.get_dim(&key("ssm.inner_size"), MAX_DIM)?;
        if conv_kernel < 2
            || n_k_heads == 0
            || n_v_heads == 0
            || n_v_heads % n_k_heads != 0
            || d_inner % n_v_heads != 0
        {
            return Err(ModelError::Invalid(format!(
                "delta net: conv {conv_kernel}, {n_k_heads} K-heads, {n_v_heads} V-heads, inner {d_inner}"
            )));
        }
        let recurrent = match m.opt_array(&key("attention.recurrent_layers"))? {
            Some(a) => {
                let v: Vec<bool> = a
                    .iter()
                    .map(|v| match v {
                        Value::Bool(b) => Ok(*b),
                        _ => Err(ModelError::Invalid(
                            "attention.recurrent_layers is not a bool array".into(),
                        )),
                    })
                    .collect::<Result<_>>()?;
                if v.len() < n_layer {
                    return Err(ModelError::Invalid(format!(
                        "attention.recurrent_layers has {} entries for {n_layer} layers",
                        v.len()
                    )));
                }
                v[..n_layer].to_vec()
            }
            None => {
                let interval = m
                    .opt_dim(&key("full_attention_interval"), MAX_LAYERS)?
                    .unwrap_or(4)
                    .max(1);
                (0..n_layer).map(|i| (i + 1) % interval != 0).collect()
            }
        };
        Ok(Hparams {
            n_embd,
            n_layer,
            n_nextn,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: m.get_dim(&key("feed_forward_length"), MAX_DIM)?,
            n_ctx_train: m.get_dim(&key("context_length"), 1 << 24)?,
            rms_eps: m.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: m.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
            n_rot,
            conv_kernel,
            n_k_heads,
            n_v_heads,
            head_k_dim: d_state,
            head_v_dim: d_inner / n_v_heads,
            recurrent,
        })
    }

    fn key_dim(&self) -> usize {
        self.n_k_heads * self.head_k_dim
    }
    fn value_dim(&self) -> usize {
        self.n_v_heads * self.head_v_dim
    }
    /// Channels of the DeltaNet convolution: q | k | v.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
    fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// Gated full attention.
pub struct AttnWeights<B: Backend> {
    /// Per head: head_dim query values, then head_dim gate values.
    pub wq: B::Weight,
    pub wk: B::Weight,
    pub wv: B::Weight,
    pub wo: B::Weight,
    pub q_norm: B::Weight,
    pub k_norm: B::Weight,
}

/// Gated DeltaNet.
pub struct DeltaNetWeights<B: Backend> {
    pub wqkv: B::Weight,
    /// z, the output gate.
    pub wgate: B::Weight,
    pub conv: B::Weight,
    pub dt_bias: B::Weight,
    pub a: B::Weight,
    pub beta: B::Weight,
    pub alpha: B::Weight,
    pub norm: B::Weight,
    pub out: B::Weight,
}

pub enum Mixer<B: Backend> {
    Attention(AttnWeights<B>),
    DeltaNet(DeltaNetWeights<B>),
}

pub struct Ffn<B: Backend> {
    pub gate_up: GateUp<B>,
    pub down: B::Weight,
}

pub struct Layer<B: Backend> {
    pub attn_norm: B::Weight,
    pub post_norm: B::Weight,
    pub mixer: Mixer<B>,
    pub ffn: Ffn<B>,
}

/// The MTP block (`blk.<n_layer>`), the draft head of speculative decoding ([`DraftHead`]): for the
/// main model's final-normed hidden h_t and the next token x_{t+1} it computes
/// eh_proj(concat(enorm(embed(x_{t+1})), hnorm(h_t))), one gated-attention block with its own KV cache
/// (entry t at RoPE position t + 1), then shared_head_norm (or output_norm) and the shared output head.
/// The normed output is the h of the next, chained, draft step. The main forward pass does not run it.
pub struct MtpBlock<B: Backend> {
    pub layer: Layer<B>,
    pub eh_proj: B::Weight,
    pub enorm: B::Weight,
    pub hnorm: B::Weight,
    pub shared_head_norm: Option<B::Weight>,
    pub embed_tokens: Option<B::Weight>,
    pub shared_head_head: Option<B::Weight>,
}

struct Scratch<B: Backend> {
    rows: usize,
    /// The residual stream, and the buffer its next sum goes to (`add_rms_norm` writes x + y to a tensor
    /// other than x; [`Qwen35::add_norm`] swaps the two).
    x: B::Tensor,
    x_next: B::Tensor,
    h: B::Tensor,
    o: B::Tensor,
    /// attn_q output (q|gate interleaved) or attn_qkv output.
    wide: B::Tensor,
    /// Conv output.
    conv: B::Tensor,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    /// Attention gate or DeltaNet z.
    gate: B::Tensor,
    /// Mixer output before the output projection.
    att: B::Tensor,
    tmp: B::Tensor,
    alpha: B::Tensor,
    beta: B::Tensor,
    ff_gate: B::Tensor,
    ff_up: B::Tensor,
    logits: B::Tensor,
    /// MTP input: enorm(embed) | hnorm(h), 2 × n_embd per row.
    cat: B::Tensor,
    /// One-row buffers for the per-sequence ops of a batched decode pass.
    row: RowScratch<B>,
}

pub struct Qwen35<B: Backend> {
    pub hp: Hparams,
    info: ModelInfo,
    backend: Arc<B>,
    tok_embd: B::Weight,
    output: Option<B::Weight>,
    pub output_norm: B::Weight,
    layers: Vec<Layer<B>>,
    pub mtp: Option<MtpBlock<B>>,
    /// Chunk size of the delta rule for multi-token passes (`None`: token by token).
    chunk: Option<usize>,
    scratch: Mutex<Option<Scratch<B>>>,
}

fn load_ffn<B: Backend>(ld: &Loader<B>, hp: &Hparams, il: usize) -> Result<Ffn<B>> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    Ok(Ffn {
        gate_up: GateUp::load(ld, &n("ffn_gate"), &n("ffn_up"), hp.n_ff, hp.n_embd)?,
        down: ld.load(&n("ffn_down"), hp.n_embd, hp.n_ff)?,
    })
}

fn load_attn<B: Backend>(ld: &Loader<B>, hp: &Hparams, il: usize) -> Result<AttnWeights<B>> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    let d = hp.n_embd;
    Ok(AttnWeights {
        wq: ld.load(&n("attn_q"), 2 * hp.q_dim(), d)?,
        wk: ld.load(&n("attn_k"), hp.kv_dim(), d)?,
        wv: ld.load(&n("attn_v"), hp.kv_dim(), d)?,
        wo: ld.load(&n("attn_output"), d, hp.q_dim())?,
        q_norm: ld.load(&n("attn_q_norm"), 1, hp.head_dim)?,
        k_norm: ld.load(&n("attn_k_norm"), 1, hp.head_dim)?,
    })
}

fn load_delta_net<B: Backend>(
    ld: &Loader<B>,
    hp: &Hparams,
    il: usize,
) -> Result<DeltaNetWeights<B>> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    let d = hp.n_embd;
    let conv_name = n("ssm_conv1d");
    let conv = ld.file.require_tensor(&conv_name)?;
    if conv.ty != kiln_kernels::quant::GgmlType::F32 {
        return Err(ModelError::BadTensor {
            name: conv_name,
            reason: format!("type {} (only F32 is supported)", conv.ty),
        });
    }
    Ok(DeltaNetWeights {
        wqkv: ld.load(&n("attn_qkv"), hp.conv_dim(), d)?,
        wgate: ld.load(&n("attn_gate"), hp.value_dim(), d)?,
        conv: ld.load(&conv_name, hp.conv_dim(), hp.conv_kernel)?,
        dt_bias: ld.load(&format!("blk.{il}.ssm_dt.bias"), 1, hp.n_v_heads)?,
        a: ld.load(&format!("blk.{il}.ssm_a"), 1, hp.n_v_heads)?,
        beta: ld.load(&n("ssm_beta"), hp.n_v_heads, d)?,
        alpha: ld.load(&n("ssm_alpha"), hp.n_v_heads, d)?,
        norm: ld.load(&n("ssm_norm"), 1, hp.head_v_dim)?,
        out: ld.load(&n("ssm_out"), d, hp.value_dim())?,
    })
}

impl<B: Backend> Qwen35<B> {
    pub fn load(file: &GgufFile, backend: Arc<B>) -> Result<Self> {
        let hp = Hparams::read(file)?;
        let ld = Loader {
            file,
            backend: &*backend,
        };
        let tok = file.require_tensor("token_embd.weight")?;
        let n_vocab = tok.rows_cols().0;
        if n_vocab == 0 || n_vocab as u64 > 1 << 24 {
            return Err(ModelError::Invalid(format!("vocabulary of {n_vocab}")));
        }
        let d = hp.n_embd;
        let tok_embd = ld.load("token_embd.weight", n_vocab, d)?;
        let output = ld.opt("output.weight", n_vocab, d)?;
        let output_norm = ld.load("output_norm.weight", 1, d)?;
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            layers.push(Layer {
                attn_norm: ld.load(&n("attn_norm"), 1, d)?,
                post_norm: ld.load(&n("post_attention_norm"), 1, d)?,
                mixer: if hp.recurrent[il] {
                    Mixer::DeltaNet(load_delta_net(&ld, &hp, il)?)
                } else {
                    Mixer::Attention(load_attn(&ld, &hp, il)?)
                },
                ffn: load_ffn(&ld, &hp, il)?,
            });
        }
        // The first MTP block, when the file has one (its tensors are optional for the main model).
        let il = hp.n_layer;
        let mtp = if hp.n_nextn > 0
            && file
                .tensor(&format!("blk.{il}.nextn.eh_proj.weight"))
                .is_some()
        {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            Some(MtpBlock {
                layer: Layer {
                    attn_norm: ld.load(&n("attn_norm"), 1, d)?,
                    post_norm: ld.load(&n("post_attention_norm"), 1, d)?,
                    mixer: Mixer::Attention(load_attn(&ld, &hp, il)?),
                    ffn: load_ffn(&ld, &hp, il)?,
                },
                eh_proj: ld.load(&n("nextn.eh_proj"), d, 2 * d)?,
                enorm: ld.load(&n("nextn.enorm"), 1, d)?,
                hnorm: ld.load(&n("nextn.hnorm"), 1, d)?,
                shared_head_norm: ld.opt(&n("nextn.shared_head_norm"), 1, d)?,
                embed_tokens: ld.opt(&n("nextn.embed_tokens"), n_vocab, d)?,
                shared_head_head: ld.opt(&n("nextn.shared_head_head"), n_vocab, d)?,
            })
        } else {
            None
        };
        let info = ModelInfo {
            arch: "qwen35".into(),
            n_vocab,
            n_embd: d,
            n_layer: hp.n_layer,
            n_ctx_train: hp.n_ctx_train,
        };
        Ok(Qwen35 {
            hp,
            info,
            backend,
            tok_embd,
            output,
            output_norm,
            layers,
            mtp,
            chunk: Some(DELTA_NET_CHUNK),
            scratch: Mutex::new(None),
        })
    }

    /// Sets the delta-rule chunk size for multi-token passes (`None`: token by token, the reference).
    pub fn set_delta_net_chunk(&mut self, chunk: Option<usize>) {
        self.chunk = chunk;
    }

    fn scratch(&self, rows: usize) -> Result<Scratch<B>> {
        let hp = &self.hp;
        let be = &*self.backend;
        let t = |w: usize| be.tensor(rows * w);
        let qw = hp.q_dim().max(hp.key_dim());
        Ok(Scratch {
            rows,
            x: t(hp.n_embd)?,
            x_next: t(hp.n_embd)?,
            h: t(hp.n_embd)?,
            o: t(hp.n_embd)?,
            wide: t((2 * hp.q_dim()).max(hp.conv_dim()))?,
            conv: t(hp.conv_dim())?,
            q: t(qw)?,
            k: t(hp.kv_dim().max(hp.key_dim()))?,
            v: t(hp.kv_dim().max(hp.value_dim()))?,
            gate: t(hp.q_dim().max(hp.value_dim()))?,
            att: t(hp.q_dim().max(hp.value_dim()))?,
            tmp: t(qw.max(hp.value_dim()).max(hp.n_ff))?,
            alpha: t(hp.n_v_heads)?,
            beta: t(hp.n_v_heads)?,
            ff_gate: t(GateUp::<B>::GATE_BUF_WIDTH * hp.n_ff)?,
            ff_up: t(hp.n_ff)?,
            logits: t(self.info.n_vocab)?,
            cat: t(2 * hp.n_embd)?,
            row: RowScratch::new(
                be,
                qw.max(hp.kv_dim())
                    .max(hp.value_dim())
                    .max(hp.conv_dim())
                    .max(hp.n_v_heads),
            )?,
        })
    }

    fn attention(
        &self,
        w: &AttnWeights<B>,
        sc: &mut Scratch<B>,
        target: LayerTarget<'_, '_, B>,
        positions: &[u32],
    ) -> Result<()> {
        let (hp, be) = (&self.hp, &*self.backend);
        let (n, hd) = (positions.len(), hp.head_dim);
        // The keys go through `sc.att` (free until the attention writes it) so the three products
        // can be one group.
        be.matmul_group(
            &mut [
                (&w.wq, &mut sc.wide),
                (&w.wk, &mut sc.att),
                (&w.wv, &mut sc.v),
            ],
            &sc.h,
            n,
        )?;
        // Per head of `sc.wide`: [q (hd) | gate (hd)].
        be.gated_qk_norm_rope(
            &sc.wide,
            &sc.att,
            [&w.q_norm, &w.k_norm],
            hp.n_head_kv,
            hp.rms_eps,
            positions,
            RopeParams {
                n_heads: hp.n_head,
                head_dim: hd,
                n_rot: hp.n_rot,
                theta_base: hp.rope_base,
                freq_scale: 1.0,
                style: RopeStyle::Neox,
            },
            [&mut sc.q, &mut sc.gate, &mut sc.k],
        )?;
        let params = AttentionParams {
            n_heads: hp.n_head,
            n_kv_heads: hp.n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window: None,
            softcap: None,
        };
        batch::attention(
            be,
            target,
            &sc.q,
            &sc.k,
            &sc.v,
            n,
            params,
            &mut sc.row,
            &mut sc.att,
        )?;
        be.sigmoid_mul(&mut sc.att, &sc.gate, n, hp.q_dim())?;
        be.matmul(&w.wo, &sc.att, n, &mut sc.o)?;
        Ok(())
    }

    fn delta_net(
        &self,
        w: &DeltaNetWeights<B>,
        sc: &mut Scratch<B>,
        target: LayerTarget<'_, '_, B>,
        n: usize,
        snapshots: bool,
    ) -> Result<()> {
        let (hp, be) = (&self.hp, &*self.backend);
        let p = DeltaNetParams {
            n_k_heads: hp.n_k_heads,
            n_v_heads: hp.n_v_heads,
            head_k_dim: hp.head_k_dim,
            head_v_dim: hp.head_v_dim,
            scale: 1.0 / (hp.head_k_dim as f32).sqrt(),
            chunk: if n > 1 { self.chunk } else { None },
        };
        let st = match target {
            LayerTarget::One(LayerCache::Recurrent(st), _) => st,
            LayerTarget::One(LayerCache::Attention(_), _) => return Err(wrong_cache()),
            LayerTarget::Rows(rows, il) => {
                if snapshots {
                    return Err(ModelError::Invalid(
                        "a batched decode pass keeps no state snapshots".into(),
                    ));
                }
                return self.delta_net_rows(w, sc, rows, il, p);
            }
        };
        let mut snap = match (&mut st.snapshots, snapshots) {
            (Some(s), true) => Some(s),
            (None, true) => {
                return Err(ModelError::Invalid(
                    "state snapshots requested but the cache has none".into(),
                ))
            }
            (_, false) => None,
        };
        self.delta_net_inputs(w, sc, n)?;
        be.conv_split_qkv_l2(
            &sc.wide,
            &w.conv,
            &mut st.conv,
            n,
            snap.as_mut().map(|s| &mut s.conv),
            &mut sc.conv,
            qkv_split(
                hp,
                w,
                [&mut sc.q, &mut sc.k, &mut sc.v, &mut sc.alpha, &mut sc.beta],
            ),
        )?;
        match snap {
            Some(s) => {
                be.gated_delta_net_snapshots(
                    &sc.q,
                    &sc.k,
                    &sc.v,
                    &sc.alpha,
                    &sc.beta,
                    &mut st.ssm,
                    n,
                    p,
                    &mut sc.att,
                    &mut s.ssm,
                )?;
                s.filled = n;
            }
            None => be.gated_delta_net(
                &sc.q,
                &sc.k,
                &sc.v,
                &sc.alpha,
                &sc.beta,
                &mut st.ssm,
                n,
                p,
                &mut sc.att,
            )?,
        }
        self.delta_net_output(w, sc, n)
    }

    /// The recurrent layer's projections of the normed input `sc.h` (conv input, output gate, and the
    /// raw decay/write gates, which `split_qkv` finishes), shared by the single-sequence and batched passes.
    fn delta_net_inputs(
        &self,
        w: &DeltaNetWeights<B>,
        sc: &mut Scratch<B>,
        n: usize,
    ) -> Result<()> {
        let be = &*self.backend;
        be.matmul_group(
            &mut [
                (&w.wqkv, &mut sc.wide),
                (&w.wgate, &mut sc.gate),
                (&w.beta, &mut sc.beta),
                (&w.alpha, &mut sc.alpha),
            ],
            &sc.h,
            n,
        )?;
        Ok(())
    }

    /// Splits the conv output into q, k and v and L2-normalises q and k per head; turns the raw
    /// decay/write projections into the delta rule's gates on the way (one GPU launch for both).
    fn split_qkv(&self, w: &DeltaNetWeights<B>, sc: &mut Scratch<B>, n: usize) -> Result<()> {
        let s = qkv_split(
            &self.hp,
            w,
            [&mut sc.q, &mut sc.k, &mut sc.v, &mut sc.alpha, &mut sc.beta],
        );
        self.backend.split_qkv_l2(&sc.conv, n, s)?;
        Ok(())
    }

    /// The gated RMSNorm of the delta rule's output and the output projection into `sc.o`.
    fn delta_net_output(
        &self,
        w: &DeltaNetWeights<B>,
        sc: &mut Scratch<B>,
        n: usize,
    ) -> Result<()> {
        let (hp, be) = (&self.hp, &*self.backend);
        be.rms_norm_gated(
            &sc.att,
            &w.norm,
            &sc.gate,
            n * hp.n_v_heads,
            hp.head_v_dim,
            hp.rms_eps,
            &mut sc.tmp,
        )?;
        be.matmul(&w.out, &sc.tmp, n, &mut sc.o)?;
        Ok(())
    }

    /// [`Qwen35::delta_net`] for a batched decode pass: the projections, norms and output over all
    /// rows at once, the conv and the delta rule per row against that row's own state of layer `il`.
    fn delta_net_rows(
        &self,
        w: &DeltaNetWeights<B>,
        sc: &mut Scratch<B>,
        rows: &mut [BatchRow<'_, B>],
        il: usize,
        p: DeltaNetParams,
    ) -> Result<()> {
        let be = &*self.backend;
        let cd = self.hp.conv_dim();
        let n = rows.len();
        self.delta_net_inputs(w, sc, n)?;
        batch::conv1d_silu_rows(
            be,
            rows,
            il,
            &sc.wide,
            &w.conv,
            cd,
            &mut sc.row,
            &mut sc.conv,
        )?;
        self.split_qkv(w, sc, n)?;
        batch::gated_delta_net_rows(
            be,
            rows,
            il,
            &sc.q,
            &sc.k,
            &sc.v,
            &sc.alpha,
            &sc.beta,
            p,
            &mut sc.row,
            &mut sc.att,
        )?;
        self.delta_net_output(w, sc, n)
    }

    /// x += o, then h = RMSNorm(x) · weight, for n rows: the sum goes to `x_next`, which then becomes x.
    fn add_norm(&self, sc: &mut Scratch<B>, weight: &B::Weight, n: usize) -> Result<()> {
        let hp = &self.hp;
        self.backend.add_rms_norm(
            &sc.x,
            &sc.o,
            Some(weight),
            n,
            hp.n_embd,
            hp.rms_eps,
            &mut sc.x_next,
            &mut sc.h,
        )?;
        std::mem::swap(&mut sc.x, &mut sc.x_next);
        Ok(())
    }

    /// One block: x += mixer(RMSNorm(x)); o = FFN(RMSNorm(x)). The last residual add (x += o) is the
    /// caller's: with `residual_pending` the next block does it fused with its first norm. `target` holds
    /// the cache (and the attention cache entry of the first row), `positions` the RoPE positions of
    /// the rows.
    fn block(
        &self,
        layer: &Layer<B>,
        target: LayerTarget<'_, '_, B>,
        sc: &mut Scratch<B>,
        positions: &[u32],
        snapshots: bool,
        residual_pending: bool,
    ) -> Result<()> {
        let (hp, be) = (&self.hp, &*self.backend);
        let (n, d) = (positions.len(), hp.n_embd);
        if residual_pending {
            // The previous block's feed-forward output, added here together with this block's norm.
            self.add_norm(sc, &layer.attn_norm, n)?;
        } else {
            be.rms_norm(&sc.x, Some(&layer.attn_norm), n, d, hp.rms_eps, &mut sc.h)?;
        }
        match &layer.mixer {
            Mixer::Attention(w) => self.attention(w, sc, target, positions)?,
            Mixer::DeltaNet(w) => self.delta_net(w, sc, target, n, snapshots)?,
        }
        self.add_norm(sc, &layer.post_norm, n)?;
        layer.ffn.gate_up.apply(
            be,
            Activation::SwiGlu,
            &sc.h,
            n,
            hp.n_ff,
            [&mut sc.ff_gate, &mut sc.ff_up],
            &mut sc.tmp,
        )?;
        // The residual add of `sc.o` is left to the caller: the next block fuses it with its norm.
        be.matmul(&layer.ffn.down, &sc.tmp, n, &mut sc.o)?;
        Ok(())
    }

    fn run(
        &self,
        sc: &mut Scratch<B>,
        mut seqs: Seqs<'_, '_, B>,
        tokens: &[u32],
        positions: &[u32],
        opts: PassOptions<'_, B>,
    ) -> Result<Output> {
        let (hp, be) = (&self.hp, &*self.backend);
        let n = tokens.len();
        let d = hp.n_embd;
        be.embed(&self.tok_embd, tokens, &mut sc.x)?;
        for (il, layer) in self.layers.iter().enumerate() {
            self.block(
                layer,
                seqs.layer(il)?,
                sc,
                positions,
                opts.snapshots,
                il > 0,
            )?;
        }
        if !self.layers.is_empty() {
            be.add_assign(&mut sc.x, &sc.o, n * d)?;
        }
        if let Some(hidden) = opts.hidden {
            be.rms_norm(&sc.x, Some(&self.output_norm), n, d, hp.rms_eps, hidden)?;
        }
        let (first, rows) = match opts.logits {
            Logits::Last => (n - 1, 1),
            Logits::All => (0, n),
        };
        be.copy(&sc.x, first * d, &mut sc.o, 0, rows * d)?;
        be.rms_norm(
            &sc.o,
            Some(&self.output_norm),
            rows,
            d,
            hp.rms_eps,
            &mut sc.h,
        )?;
        let head = self.output.as_ref().unwrap_or(&self.tok_embd);
        be.matmul(head, &sc.h, rows, &mut sc.logits)?;
        Output::read(be, &sc.logits, rows, self.info.n_vocab, opts.readout)
    }

    /// The shared scratch buffers, grown to `rows` rows if needed.
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
}

/// A recurrent layer's q/k/v split as the backend takes it: q, k and v L2-normalised per head into the
/// first three tensors, the delta-rule gates applied in passing to alpha and beta (the last two).
fn qkv_split<'a, B: Backend>(
    hp: &Hparams,
    w: &'a DeltaNetWeights<B>,
    [q, k, v, alpha, beta]: [&'a mut B::Tensor; 5],
) -> QkvSplit<'a, B> {
    QkvSplit {
        n_k_heads: hp.n_k_heads,
        head_k: hp.head_k_dim,
        v_dim: hp.value_dim(),
        eps: hp.rms_eps,
        out: [q, k, v],
        gates: Some(DeltaNetGates {
            alpha,
            beta,
            dt_bias: &w.dt_bias,
            a: &w.a,
        }),
    }
}

impl<B: Backend> Model<B> for Qwen35<B> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_cache(&self, n_ctx: usize, kv_type: KvType) -> Result<Cache<B>> {
        let (hp, be) = (&self.hp, &*self.backend);
        let mut layers = Vec::with_capacity(hp.n_layer);
        for &rec in &hp.recurrent {
            layers.push(if rec {
                LayerCache::Recurrent(RecurrentState::new(
                    be,
                    (hp.conv_kernel - 1) * hp.conv_dim(),
                    hp.n_v_heads * hp.head_v_dim * hp.head_k_dim,
                )?)
            } else {
                LayerCache::Attention(be.kv_cache(n_ctx, hp.n_head_kv, hp.head_dim, kv_type)?)
            });
        }
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
        super::check_forward(cache, self.layers.len(), tokens, start, MAX_BATCH)?;
        if opts.snapshots {
            // Checked before any layer runs, so a refused pass changes nothing.
            for l in &cache.layers {
                if let LayerCache::Recurrent(r) = l {
                    let slots = r.snapshots.as_ref().map_or(0, |s| s.slots);
                    if slots < tokens.len() {
                        return Err(ModelError::Invalid(format!(
                            "a {}-token snapshot pass needs {} state slots, the cache has {slots}",
                            tokens.len(),
                            tokens.len()
                        )));
                    }
                }
            }
        }
        if let Some(h) = &opts.hidden {
            let need = tokens.len() * self.hp.n_embd;
            if self.backend.tensor_len(h) < need {
                return Err(ModelError::Invalid(format!(
                    "hidden-state buffer of {} values, {need} needed",
                    self.backend.tensor_len(h)
                )));
            }
        }
        let positions: Vec<u32> = (start..start + tokens.len()).map(|p| p as u32).collect();
        self.with_scratch(tokens.len(), |sc| {
            self.run(sc, Seqs::One { cache, start }, tokens, &positions, opts)
        })
    }

    fn forward_batch(&self, rows: &mut [BatchRow<'_, B>]) -> Result<Vec<Vec<f32>>> {
        let (tokens, positions) = batch::check_batch(rows, self.layers.len(), MAX_BATCH)?;
        let opts = PassOptions::plain(Logits::All);
        let all = self.with_scratch(rows.len(), |sc| {
            self.run(sc, Seqs::Rows(rows), &tokens, &positions, opts)
        })?;
        Ok(batch::split_rows(all.into_logits()?, self.info.n_vocab))
    }

    fn draft_head(&self) -> Option<&dyn DraftHead<B>> {
        self.mtp.as_ref().map(|_| self as &dyn DraftHead<B>)
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }
}

impl<B: Backend> DraftHead<B> for Qwen35<B> {
    fn new_draft_cache(&self, n_ctx: usize, kv_type: KvType) -> Result<Cache<B>> {
        let hp = &self.hp;
        Ok(Cache {
            layers: vec![LayerCache::Attention(self.backend.kv_cache(
                n_ctx,
                hp.n_head_kv,
                hp.head_dim,
                kv_type,
            )?)],
            n_ctx,
            kv_type,
        })
    }

    fn draft_forward(
        &self,
        cache: &mut Cache<B>,
        hidden: &B::Tensor,
        tokens: &[u32],
        start: usize,
        h_out: &mut B::Tensor,
    ) -> Result<u32> {
        let mtp = self
            .mtp
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("the model has no MTP block".into()))?;
        super::check_forward(cache, 1, tokens, start, MAX_BATCH)?;
        let (hp, be) = (&self.hp, &*self.backend);
        let (n, d) = (tokens.len(), hp.n_embd);
        let positions: Vec<u32> = (start + 1..=start + n).map(|p| p as u32).collect();
        let embed = mtp.embed_tokens.as_ref().unwrap_or(&self.tok_embd);
        let norm = mtp.shared_head_norm.as_ref().unwrap_or(&self.output_norm);
        let head = mtp
            .shared_head_head
            .as_ref()
            .or(self.output.as_ref())
            .unwrap_or(&self.tok_embd);
        self.with_scratch(n, |sc| {
            be.embed(embed, tokens, &mut sc.x)?;
            be.rms_norm(&sc.x, Some(&mtp.enorm), n, d, hp.rms_eps, &mut sc.h)?;
            be.rms_norm(hidden, Some(&mtp.hnorm), n, d, hp.rms_eps, &mut sc.o)?;
            be.copy_rows(&sc.h, 0, d, &mut sc.cat, 0, 2 * d, d, n)?;
            be.copy_rows(&sc.o, 0, d, &mut sc.cat, d, 2 * d, d, n)?;
            be.matmul(&mtp.eh_proj, &sc.cat, n, &mut sc.x)?;
            self.block(
                &mtp.layer,
                LayerTarget::One(&mut cache.layers[0], start),
                sc,
                &positions,
                false,
                false,
            )?;
            be.add_assign(&mut sc.x, &sc.o, n * d)?;
            be.copy(&sc.x, (n - 1) * d, &mut sc.o, 0, d)?;
            be.rms_norm(&sc.o, Some(norm), 1, d, hp.rms_eps, h_out)?;
            be.matmul(head, h_out, 1, &mut sc.logits)?;
            let ids = be.argmax_rows(&sc.logits, 1, self.info.n_vocab)?;
            Ok(ids[0])
        })
    }
}
