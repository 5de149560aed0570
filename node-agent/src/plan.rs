//! The memory plan: how many device bytes a model needs at a given context, and the largest context on
//! the ladder that fits a GPU's memory.
//!
//! Device memory = weights on the device
//!   + attention KV (attention layers × ctx × KV heads × (key + value dims) × bytes of the KV type)
//!   + recurrent state (Gated DeltaNet: one f32 delta-rule state and one conv window per layer, times the
//!     speculative-rollback snapshots and the prefix checkpoints kept on the device)
//!   + the MTP block's own KV (speculative decoding)
//!   + compute buffers (see [`ComputeBytes`])
//!
//! everything per slot except the weights and the compute buffers. The headroom is kept free on top.
//! Each term is reported on its own so a measured footprint can be compared term by term.

use crate::gguf::{GgufFile, Metadata, Value};
use anyhow::{bail, Context, Result};
use kiln_kernels::backend::KvType;
use serde::Serialize;

const MAX_DIM: u64 = 1 << 20;
const MAX_LAYERS: u64 = 4096;
const MIB: u64 = 1 << 20;

/// Contexts are multiples of this (the attention kernels' KV tile; also a multiple of the DeltaNet
/// chunk of 64), except tiny test contexts below it.
pub const CONTEXT_ALIGN: usize = 256;
/// Prompt tokens per forward pass (the micro-batch the compute buffers are sized for). The field's
/// lesson: 512 is plenty for one user, 2048 OOMs at 128K.
pub const DEFAULT_UBATCH: usize = 512;
/// Tokens per chunk of the chunked delta rule (prefill).
const DELTA_NET_CHUNK: u64 = 64;
/// What the GPU runtime itself takes on the device: the context, the loaded kernel modules, the BLAS
/// workspace. Measured per process on CUDA 13 / H100 and HIP 6 / gfx1100 at 0.3–0.6 GB; the plan takes
/// the high end so a plan that fits really fits.
pub const RUNTIME_RESERVE: u64 = 512 * MIB;
pub const DEFAULT_HEADROOM: u64 = 512 * MIB;
pub const DEFAULT_CTX_MIN: usize = 4096;

/// Gated DeltaNet dimensions (qwen35).
#[derive(Clone, Debug, Serialize)]
pub struct RecurrentDims {
    pub layers: usize,
    pub n_v_heads: usize,
    pub head_k_dim: usize,
    pub head_v_dim: usize,
    /// Conv channels (q | k | v).
    pub conv_channels: usize,
    pub conv_kernel: usize,
}

impl RecurrentDims {
    /// One copy of every layer's state: the delta-rule matrix per V-head (f32) and the last
    /// kernel − 1 conv inputs per channel (f32).
    pub fn bytes_per_copy(&self) -> u64 {
        let ssm = (self.n_v_heads * self.head_v_dim * self.head_k_dim) as u64 * 4;
        let conv = ((self.conv_kernel - 1) * self.conv_channels) as u64 * 4;
        self.layers as u64 * (ssm + conv)
    }
}

/// What the plan needs to know about a model, read from its GGUF header.
#[derive(Clone, Debug, Serialize)]
pub struct ModelFacts {
    pub arch: String,
    pub n_ctx_train: usize,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    /// Main-model layers (MTP blocks excluded).
    pub n_layer: usize,
    /// Main-model layers with full attention (a KV cache).
    pub attention_layers: usize,
    /// MTP blocks (each one attention layer with its own KV).
    pub mtp_layers: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub recurrent: Option<RecurrentDims>,
    /// Bytes of every tensor in the file.
    pub weights_bytes: u64,
    /// `token_embd` when the model has a separate output head: a row gather, kept in host memory.
    pub host_weights_bytes: u64,
    /// The MTP blocks' tensors (on the device only when speculating with them).
    pub mtp_weights_bytes: u64,
}

impl ModelFacts {
    pub fn from_file(file: &GgufFile) -> Result<Self> {
        Self::from_header(
            &file.metadata,
            file.tensors.iter().map(|t| (t.name.as_str(), t.n_bytes)),
        )
    }

    /// From metadata and (name, bytes) of each tensor: a GGUF file, or a synthetic model's plan.
    pub fn from_header<'a>(
        meta: &Metadata,
        tensors: impl Iterator<Item = (&'a str, u64)>,
    ) -> Result<Self> {
        let arch = meta.get_str("general.architecture")?.to_string();
        let k = |x: &str| format!("{arch}.{x}");
        let block_count = meta.get_dim(&k("block_count"), MAX_LAYERS)?;
        let n_embd = meta.get_dim(&k("embedding_length"), MAX_DIM)?;
        let n_head = meta.get_dim(&k("attention.head_count"), MAX_DIM)?;
        let n_head_kv = meta
            .opt_dim(&k("attention.head_count_kv"), MAX_DIM)?
            .unwrap_or(n_head);
        let head_dim_k = meta
            .opt_dim(&k("attention.key_length"), MAX_DIM)?
            .unwrap_or(n_embd / n_head);
        let head_dim_v = meta
            .opt_dim(&k("attention.value_length"), MAX_DIM)?
            .unwrap_or(head_dim_k);
        let n_ff = meta
            .opt_dim(&k("feed_forward_length"), MAX_DIM)?
            .unwrap_or(4 * n_embd);
        let n_ctx_train = meta.opt_dim(&k("context_length"), 1 << 24)?.unwrap_or(4096);
        let n_nextn = meta
            .opt_dim(&k("nextn_predict_layers"), MAX_LAYERS)?
            .unwrap_or(0);
        if n_nextn >= block_count {
            bail!("{n_nextn} MTP layers of {block_count} blocks");
        }
        let n_layer = block_count - n_nextn;

        let mut weights_bytes = 0u64;
        let mut embd_bytes = 0u64;
        let mut has_output = false;
        let mut mtp_weights_bytes = 0u64;
        let mut n_vocab = None;
        let mtp_prefixes: Vec<String> = (n_layer..block_count)
            .map(|i| format!("blk.{i}."))
            .collect();
        for (name, bytes) in tensors {
            weights_bytes += bytes;
            match name {
                "token_embd.weight" => embd_bytes = bytes,
                "output.weight" => has_output = true,
                _ if mtp_prefixes.iter().any(|p| name.starts_with(p.as_str())) => {
                    mtp_weights_bytes += bytes
                }
                _ => {}
            }
        }
        if let Some(Value::Array(toks)) = meta.get("tokenizer.ggml.tokens") {
            n_vocab = Some(toks.len());
        }
        let n_vocab = n_vocab
            .context("tokenizer.ggml.tokens is missing: the vocabulary size sizes the logits")?;

        let (attention_layers, recurrent) = if arch == "qwen35" {
            let interval = meta
                .opt_dim(&k("full_attention_interval"), MAX_LAYERS)?
                .unwrap_or(4);
            let recurrent_flags: Vec<bool> =
                match meta.opt_array(&k("attention.recurrent_layers"))? {
                    Some(a) if a.len() >= n_layer => a[..n_layer]
                        .iter()
                        .map(|v| matches!(v, Value::Bool(true)))
                        .collect(),
                    Some(_) => bail!("attention.recurrent_layers is shorter than {n_layer} layers"),
                    None => (0..n_layer).map(|i| (i + 1) % interval != 0).collect(),
                };
            let n_rec = recurrent_flags.iter().filter(|&&r| r).count();
            let d_state = meta.get_dim(&k("ssm.state_size"), 4096)?;
            let n_k_heads = meta.get_dim(&k("ssm.group_count"), MAX_DIM)?;
            let n_v_heads = meta.get_dim(&k("ssm.time_step_rank"), MAX_DIM)?;
            let d_inner = meta.get_dim(&k("ssm.inner_size"), MAX_DIM)?;
            let conv_kernel = meta.get_dim(&k("ssm.conv_kernel"), 64)?;
            if d_inner % n_v_heads != 0 || conv_kernel < 2 {
                bail!(
                    "delta net: inner size {d_inner} over {n_v_heads} V-heads, conv {conv_kernel}"
                );
            }
            (
                n_layer - n_rec,
                Some(RecurrentDims {
                    layers: n_rec,
                    n_v_heads,
                    head_k_dim: d_state,
                    head_v_dim: d_inner / n_v_heads,
                    conv_channels: 2 * n_k_heads * d_state + d_inner,
                    conv_kernel,
                }),
            )
        } else {
            (n_layer, None)
        };
        Ok(ModelFacts {
            arch,
            n_ctx_train,
            n_vocab,
            n_embd,
            n_ff,
            n_layer,
            attention_layers,
            mtp_layers: n_nextn,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            recurrent,
            weights_bytes,
            // Tied embeddings double as the output head, which runs on the device.
            host_weights_bytes: if has_output { embd_bytes } else { 0 },
            mtp_weights_bytes,
        })
    }

    /// KV bytes one attention layer stores per token.
    pub fn kv_bytes_per_token_layer(&self, kv: KvType) -> Result<u64> {
        let t = kv.ggml();
        let row = |dim: usize| {
            t.bytes_for(self.n_head_kv * dim).with_context(|| {
                format!(
                    "{} KV rows of {} values do not fill whole {} blocks",
                    kv_name(kv),
                    self.n_head_kv * dim,
                    t.name()
                )
            })
        };
        Ok((row(self.head_dim_k)? + row(self.head_dim_v)?) as u64)
    }
}

pub fn kv_name(kv: KvType) -> &'static str {
    match kv {
        KvType::F32 => "f32",
        KvType::F16 => "f16",
        KvType::Q8_0 => "q8_0",
        KvType::Q4_0 => "q4_0",
    }
}

/// What to plan for.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Requested context per slot (default: the model's training context).
    pub ctx: Option<usize>,
    /// The smallest context the ladder may step down to.
    pub ctx_min: usize,
    pub kv_type: KvType,
    /// MTP speculative decoding with this many drafted tokens per round (None: no speculation).
    pub mtp_draft_max: Option<usize>,
    pub parallel: usize,
    pub ubatch: usize,
    /// Recurrent-state checkpoints per slot kept on the device for prefix reuse (a long system prompt's
    /// state: restoring it skips re-prefilling the prompt).
    pub prefix_checkpoints: usize,
    /// Device bytes the agent may use (total less what others use). None: report the requested context
    /// without fitting it.
    pub available: Option<u64>,
    pub headroom: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            ctx: None,
            ctx_min: DEFAULT_CTX_MIN,
            kv_type: KvType::F16,
            mtp_draft_max: None,
            parallel: 1,
            ubatch: DEFAULT_UBATCH,
            prefix_checkpoints: 1,
            available: None,
            headroom: DEFAULT_HEADROOM,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WeightBytes {
    /// Every tensor in the file.
    pub file_bytes: u64,
    pub device_bytes: u64,
    /// Kept in host memory (the input embedding: a row gather per token).
    pub host_bytes: u64,
    /// The MTP block, included in `device_bytes` only with `--spec mtp`.
    pub mtp_bytes: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KvBytes {
    pub layers: usize,
    pub bytes_per_token: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecurrentBytes {
    pub layers: usize,
    /// One copy of every layer's state for one sequence.
    pub bytes_per_copy: u64,
    /// Copies per slot: the live state and the speculative-rollback snapshots (draft max + 1 in all
    /// with MTP, so a rejected draft selects a snapshot instead of recomputing), plus the checkpoints.
    pub rollback_copies: usize,
    pub prefix_checkpoints: usize,
    pub bytes: u64,
}

/// The cap on the GPU prefill attention's scores and probabilities (`SCORE_BYTES_MAX` in
/// kernels/src/gpu/cuda/attention_blas.rs).
pub const ATTENTION_SCORES_MAX: u64 = 256 << 20;

/// The most splits the GPU decode attention cuts one row's keys into (`attention_chunk` in
/// kernels/src/gpu/cuda/mod.rs).
pub const ATTENTION_SPLITS_MAX: u64 = 1024;

/// The compute buffers: what a forward pass of one micro-batch needs besides weights and caches.
/// Sized for the worst case the engine reserves, so a long prompt never allocates mid-request:
/// - `logits`: ubatch × vocab f32 — every row of a prompt micro-batch may be an output (speculative
///   verification and `logprobs` need them), and with a 248K vocabulary this is the largest buffer.
/// - `activations`: ubatch × (5·n_embd + 3·widest projection) f32 — the residual stream (two buffers: a
///   residual add writes its sum into the other), the normed input, and at the peak the FFN's gate, up
///   and their product (or the attention/DeltaNet input projections when wider); buffers are reused
///   layer to layer, so this does not scale with depth.
/// - `attention_scratch`: a quantized KV cache is expanded to f16 for one layer's K and V when a
///   batch attends over it (2 × ctx × KV heads × head dim × 2 bytes; zero for f16/f32 KV), plus what
///   the GPU backend's prefill attention holds for one head group: its scores (f32) and probabilities
///   (f16) for a run of query rows, heads per group × ubatch × ctx × 6 bytes, at most
///   [`ATTENTION_SCORES_MAX`] (it takes the rows in shorter runs beyond that); and the decode and
///   verify attention's partial sums, kept per row, head and split of the keys: head_dim_v + 2 f32 each,
///   for the verify batch's rows (draft max + 1), at most [`ATTENTION_SPLITS_MAX`] splits of at least
///   16 keys (kernels/src/gpu/cuda/mod.rs's `attention_chunk`; ~100 MB for Qwen3.6-27B at 128K with
///   draft max 3, a tenth of that where the tiled kernel's fewer splits serve a q4_0/q8_0 cache — the
///   plan does not know the device, so it counts the bound). With the logits, the only compute terms
///   that grow with the context.
/// - `delta_net_scratch`: the chunked delta rule's per-chunk matrices (ubatch × V-heads × chunk f32,
///   four of them: the intra-chunk scores, the decay mask, the WY factor and its inverse).
/// - `runtime`: the device context, kernel modules and BLAS workspace ([`RUNTIME_RESERVE`]).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ComputeBytes {
    pub ubatch: usize,
    pub logits_bytes: u64,
    pub activations_bytes: u64,
    pub attention_scratch_bytes: u64,
    pub delta_net_scratch_bytes: u64,
    pub runtime_bytes: u64,
    pub bytes: u64,
}

/// The footprint at one context.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Footprint {
    pub context: usize,
    pub weights: WeightBytes,
    pub attention_kv: KvBytes,
    pub recurrent_state: RecurrentBytes,
    pub mtp_kv: KvBytes,
    pub compute: ComputeBytes,
    /// Device bytes the agent uses (what a measurement of the process should show).
    pub total_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub arch: String,
    /// The chosen context per slot.
    pub context: usize,
    pub requested_context: usize,
    pub min_context: usize,
    /// Rungs tried, largest first.
    pub ladder: Vec<usize>,
    pub kv_type: String,
    pub parallel: usize,
    pub speculative: Option<String>,
    pub weights: WeightBytes,
    pub attention_kv: KvBytes,
    pub recurrent_state: RecurrentBytes,
    pub mtp_kv: KvBytes,
    pub compute: ComputeBytes,
    pub headroom_bytes: u64,
    pub total_bytes: u64,
    /// Device bytes available to the agent (None: not fitted).
    pub available_bytes: Option<u64>,
    /// available − total − headroom.
    pub spare_bytes: Option<i64>,
}

/// The ladder from `requested` down to `min`: the requested context, then the standard rungs below it
/// (…, 128K, 96K, 64K, 48K, 32K, 24K, 16K, …: powers of two and 1.5× powers of two), each a multiple
/// of [`CONTEXT_ALIGN`], ending at `min`.
pub fn ladder(requested: usize, min: usize) -> Vec<usize> {
    let align = |n: usize| {
        if n >= CONTEXT_ALIGN {
            n / CONTEXT_ALIGN * CONTEXT_ALIGN
        } else {
            n.max(1)
        }
    };
    let top = align(requested);
    let min = align(min.min(top));
    let mut rungs = vec![top];
    let mut standard: Vec<usize> = (4..=24)
        .flat_map(|k| [1usize << k, 3usize << (k - 1)])
        .collect();
    standard.sort_unstable_by(|a, b| b.cmp(a));
    rungs.extend(standard.into_iter().filter(|&r| r < top && r > min));
    if min < top {
        rungs.push(min);
    }
    rungs
}

impl PlanOptions {
    /// The requested context for `model`: `--ctx`, else the training context.
    pub fn requested(&self, model: &ModelFacts) -> usize {
        self.ctx.unwrap_or(model.n_ctx_train).max(1)
    }

    /// Device bytes at context `ctx`.
    pub fn footprint(&self, m: &ModelFacts, ctx: usize) -> Result<Footprint> {
        let p = self.parallel.max(1) as u64;
        let ctx64 = ctx as u64;
        let kv_tok = m.kv_bytes_per_token_layer(self.kv_type)?;
        let mtp = self.mtp_draft_max.filter(|_| m.mtp_layers > 0);
        if self.mtp_draft_max.is_some() && m.mtp_layers == 0 {
            bail!("--spec mtp: the model has no MTP block (nextn_predict_layers is 0)");
        }
        let weights = WeightBytes {
            file_bytes: m.weights_bytes,
            device_bytes: m
                .weights_bytes
                .saturating_sub(m.host_weights_bytes)
                .saturating_sub(if mtp.is_some() {
                    0
                } else {
                    m.mtp_weights_bytes
                }),
            host_bytes: m.host_weights_bytes,
            mtp_bytes: m.mtp_weights_bytes,
        };
        let attn_per_token = kv_tok * m.attention_layers as u64;
        let attention_kv = KvBytes {
            layers: m.attention_layers,
            bytes_per_token: attn_per_token,
            bytes: attn_per_token * ctx64 * p,
        };
        let mtp_layers = if mtp.is_some() { m.mtp_layers } else { 0 };
        let mtp_per_token = kv_tok * mtp_layers as u64;
        let mtp_kv = KvBytes {
            layers: mtp_layers,
            bytes_per_token: mtp_per_token,
            bytes: mtp_per_token * ctx64 * p,
        };
        let rollback_copies = mtp.map_or(1, |n| n + 1);
        let recurrent_state = match &m.recurrent {
            Some(r) => {
                let per = r.bytes_per_copy();
                RecurrentBytes {
                    layers: r.layers,
                    bytes_per_copy: per,
                    rollback_copies,
                    prefix_checkpoints: self.prefix_checkpoints,
                    bytes: per * (rollback_copies + self.prefix_checkpoints) as u64 * p,
                }
            }
            None => RecurrentBytes {
                layers: 0,
                bytes_per_copy: 0,
                rollback_copies: 0,
                prefix_checkpoints: 0,
                bytes: 0,
            },
        };
        let ub = self.ubatch.max(1) as u64;
        let widest = [
            m.n_ff,
            2 * m.n_head * m.head_dim_k,
            m.recurrent.as_ref().map_or(0, |r| r.conv_channels),
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as u64;
        // The MTP block mirrors every prompt batch: its input is concat(embedding, hidden), 2·n_embd.
        let mtp_act = if mtp.is_some() {
            ub * 2 * m.n_embd as u64 * 4
        } else {
            0
        };
        let activations = ub * (5 * m.n_embd as u64 + 3 * widest) * 4 + mtp_act;
        let expanded_kv = match self.kv_type {
            KvType::F16 | KvType::F32 => 0,
            _ => 2 * ctx64 * (m.n_head_kv * m.head_dim_k.max(m.head_dim_v)) as u64 * 2,
        };
        let group = (m.n_head / m.n_head_kv.max(1)).max(1) as u64;
        let scores = if m.n_head > 0 {
            (group * ub * ctx64 * 6).min(ATTENTION_SCORES_MAX)
        } else {
            0
        };
        let verify_rows = mtp.map_or(1, |n| n + 1) as u64;
        let splits = ATTENTION_SPLITS_MAX.min(ctx64.div_ceil(16));
        let partials = verify_rows * m.n_head as u64 * splits * (m.head_dim_v as u64 + 2) * 4;
        let attention_scratch = expanded_kv + scores + partials;
        let delta_net = m
            .recurrent
            .as_ref()
            .map_or(0, |r| ub * r.n_v_heads as u64 * DELTA_NET_CHUNK * 4 * 4);
        let logits = ub * m.n_vocab as u64 * 4;
        let compute = ComputeBytes {
            ubatch: self.ubatch,
            logits_bytes: logits,
            activations_bytes: activations,
            attention_scratch_bytes: attention_scratch,
            delta_net_scratch_bytes: delta_net,
            runtime_bytes: RUNTIME_RESERVE,
            bytes: logits + activations + attention_scratch + delta_net + RUNTIME_RESERVE,
        };
        let total_bytes = weights.device_bytes
            + attention_kv.bytes
            + mtp_kv.bytes
            + recurrent_state.bytes
            + compute.bytes;
        Ok(Footprint {
            context: ctx,
            weights,
            attention_kv,
            recurrent_state,
            mtp_kv,
            compute,
            total_bytes,
        })
    }

    /// The plan: the largest rung whose footprint plus the headroom fits the available bytes.
    pub fn plan(&self, m: &ModelFacts) -> Result<Plan> {
        let requested = self.requested(m);
        let rungs = ladder(requested, self.ctx_min);
        let mut chosen = None;
        let mut smallest = None;
        for &ctx in &rungs {
            let f = self.footprint(m, ctx)?;
            let fits = self
                .available
                .is_none_or(|a| f.total_bytes + self.headroom <= a);
            if fits {
                chosen = Some(f);
                break;
            }
            smallest = Some(f);
        }
        let f = match chosen {
            Some(f) => f,
            None => {
                let f = smallest.expect("the ladder has at least one rung");
                let need = f.total_bytes + self.headroom;
                let have = self.available.unwrap_or(0);
                bail!(
                    "the model does not fit even at the minimum context {}: it needs {} ({} for the \
                     model and caches + {} headroom) but {} is available — {} missing. Lower --ctx-min, \
                     use a smaller --kv-type, fewer --parallel slots, or a smaller quantization.",
                    f.context,
                    gb(need),
                    gb(f.total_bytes),
                    gb(self.headroom),
                    gb(have),
                    gb(need - have)
                );
            }
        };
        Ok(Plan {
            arch: m.arch.clone(),
            context: f.context,
            requested_context: requested,
            min_context: *rungs.last().expect("non-empty"),
            ladder: rungs,
            kv_type: kv_name(self.kv_type).to_string(),
            parallel: self.parallel,
            speculative: self.mtp_draft_max.map(|n| format!("mtp, draft max {n}")),
            weights: f.weights,
            attention_kv: f.attention_kv,
            recurrent_state: f.recurrent_state,
            mtp_kv: f.mtp_kv,
            compute: f.compute,
            headroom_bytes: self.headroom,
            total_bytes: f.total_bytes,
            available_bytes: self.available,
            spare_bytes: self
                .available
                .map(|a| a as i64 - f.total_bytes as i64 - self.headroom as i64),
        })
    }
}

/// A byte count: `25769803776`, `24GiB`, `24Gi`, `21G`, `21GB`, `512M`, `512MiB` (K/M/G/T decimal,
/// Ki/Mi/Gi/Ti binary).
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (e.g. 25769803776, 24GiB, 21G)"))?;
    let mult: u64 = match unit.trim().trim_end_matches('B') {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(format!("`{s}`: unknown unit (K, M, G, T, Ki, Mi, Gi, Ti)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Bytes as `12.34 GB (11.49 GiB)`, for messages.
pub fn gb(b: u64) -> String {
    format!(
        "{:.2} GB ({:.2} GiB)",
        b as f64 / 1e9,
        b as f64 / (1u64 << 30) as f64
    )
}

#[cfg(test)]
mod tests;
