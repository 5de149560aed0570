//! Synthetic models: random but well-scaled weights in the exact tensor layout of a real architecture,
//! for tests (tiny files compared against llama.cpp) and for benchmarks of the real shape without
//! downloading it. Only `qwen35` for now.
//!
//! Scales keep activations finite through every layer: input projections are N(0, 1/fan_in), output
//! projections half that, norm weights 1 + N(0, 0.1²), A_log and dt_bias in the ranges of the real
//! initialisation (A ∈ [1, 16], dt ∈ [1e-3, 1e-1]). Every tensor has its own seeded stream, so a row is
//! a pure function of (seed, tensor, row) and files are reproducible.

use crate::gguf::writer::{GgufWriter, TensorPlan};
use crate::gguf::Value;
use kiln_kernels::quant::GgmlType;

/// Shape of a qwen35 model.
#[derive(Clone, Debug)]
pub struct Qwen35Shape {
    pub name: &'static str,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub n_k_heads: usize,
    pub n_v_heads: usize,
    pub d_state: usize,
    pub conv_kernel: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rope_base: f32,
}

impl Qwen35Shape {
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            // 8 layers (attention at 3 and 7) plus MTP; GQA 6:1 and 3 V-heads per K-head like the real
            // model, every matrix row a multiple of 32 (Q8_0) — ~2 M parameters.
            "tiny" => Qwen35Shape {
                name: "tiny",
                n_embd: 128,
                n_ff: 256,
                n_layer: 8,
                n_head: 6,
                n_head_kv: 1,
                head_dim: 64,
                n_rot: 16,
                n_k_heads: 2,
                n_v_heads: 6,
                d_state: 32,
                conv_kernel: 4,
                n_vocab: 320,
                n_ctx_train: 4096,
                rope_base: 10_000_000.0,
            },
            "qwen3.6-27b" => Qwen35Shape {
                name: "qwen3.6-27b",
                n_embd: 5120,
                n_ff: 17408,
                n_layer: 64,
                n_head: 24,
                n_head_kv: 4,
                head_dim: 256,
                n_rot: 64,
                n_k_heads: 16,
                n_v_heads: 48,
                d_state: 128,
                conv_kernel: 4,
                n_vocab: 248_320,
                n_ctx_train: 262_144,
                rope_base: 10_000_000.0,
            },
            _ => return None,
        })
    }

    fn key_dim(&self) -> usize {
        self.n_k_heads * self.d_state
    }
    fn value_dim(&self) -> usize {
        self.n_v_heads * self.d_state
    }
    fn is_attention(&self, il: usize) -> bool {
        il >= self.n_layer || (il + 1).is_multiple_of(4)
    }
}

pub const PRESETS: &str = "tiny, qwen3.6-27b";
pub const QUANTS: &str = "f32, f16, q8_0, q4_0, q4_k, q4_k_m";

/// How a tensor is initialised.
#[derive(Clone, Copy, Debug)]
enum Init {
    /// N(0, std²).
    Normal(f32),
    /// 1 + N(0, 0.1²): norm weights.
    Norm,
    /// −exp(A_log) with A ∈ [1, 16].
    SsmA,
    /// softplus⁻¹(dt) with dt log-uniform in [1e-3, 1e-1].
    DtBias,
}

/// The plan of a synthetic file: what the writer writes, and how each tensor is filled.
pub struct Synth {
    pub writer: GgufWriter,
    inits: Vec<Init>,
    seed: u64,
}

/// ggml's `use_more_bits` (llama-quant.cpp): which layers get more bits in the _M mixes.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

fn ftype_of(quant: &str) -> Option<(GgmlType, u32)> {
    Some(match quant {
        "f32" => (GgmlType::F32, 0),
        "f16" => (GgmlType::F16, 1),
        "q4_0" => (GgmlType::Q4_0, 2),
        "q8_0" => (GgmlType::Q8_0, 7),
        "q4_k" => (GgmlType::Q4_K, 14), // LLAMA_FTYPE_MOSTLY_Q4_K_S
        "q4_k_m" => (GgmlType::Q4_K, 15),
        _ => return None,
    })
}

/// GPT-2's byte-to-character map of byte-level BPE: printable Latin-1 bytes map to themselves, the
/// others to U+0100 onwards in byte order.
fn char_for_byte(b: u8) -> char {
    let printable = |x: u8| matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("below U+0200")
}

/// A small byte-level BPE vocabulary: the 256 bytes, merges of common English pieces, Qwen's special
/// tokens, then padding up to `n_vocab`.
fn vocab(n_vocab: usize) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| char_for_byte(b).to_string()).collect();
    let mut types = vec![1i32; 256];
    let sp = char_for_byte(b' ').to_string();
    let nl = char_for_byte(b'\n').to_string();
    let pairs: Vec<(String, String)> = [
        ("t", "h"),
        ("th", "e"),
        ("i", "n"),
        ("e", "r"),
        ("o", "n"),
        ("a", "n"),
        ("r", "e"),
        ("e", "s"),
        ("o", "r"),
        ("a", "t"),
        ("e", "n"),
        ("i", "s"),
        ("o", "u"),
        ("a", "r"),
        ("in", "g"),
        ("an", "d"),
        ("e", "d"),
        ("i", "t"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .chain(
        ["t", "a", "s", "w", "c", "th", "the", "o", "i", "f", "b"]
            .iter()
            .map(|x| (sp.clone(), x.to_string())),
    )
    .chain(std::iter::once((nl.clone(), nl.clone())))
    .collect();
    let mut merges = Vec::new();
    for (a, b) in pairs {
        let m = format!("{a}{b}");
        if !tokens.contains(&m) {
            tokens.push(m);
            types.push(1);
        }
        merges.push(format!("{a} {b}"));
    }
    for s in [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
    ] {
        tokens.push(s.to_string());
        types.push(if s.starts_with("<|") { 3 } else { 4 });
    }
    let mut i = 0;
    while tokens.len() < n_vocab {
        tokens.push(format!("<|pad_{i}|>"));
        types.push(5);
        i += 1;
    }
    (tokens, types, merges)
}

/// A Qwen-style ChatML template with the `enable_thinking` switch.
pub const CHAT_TEMPLATE: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- else %}{{- '<think>\\n' }}{%- endif %}{%- endif %}";

impl Synth {
    /// The plan for `shape` at `quant` (see [`QUANTS`]); `seed` picks the weights.
    pub fn qwen35(shape: &Qwen35Shape, quant: &str, seed: u64) -> Result<Self, String> {
        let (base, ftype) =
            ftype_of(quant).ok_or_else(|| format!("unknown quant `{quant}` ({QUANTS})"))?;
        let s = shape;
        let (d, kd, vd) = (s.n_embd, s.key_dim(), s.value_dim());
        let q_dim = s.n_head * s.head_dim;
        let kv_dim = s.n_head_kv * s.head_dim;
        let n_all = s.n_layer + 1;
        let n_attn_v = (0..n_all).filter(|&i| s.is_attention(i)).count();

        let mut tensors = Vec::new();
        let mut inits = Vec::new();
        let mut i_attn_v = 0;
        // Matrices: `rows × cols` (ggml dims [cols, rows]) with a type chosen by the mix.
        let mut add = |name: String, dims: Vec<u64>, init: Init, ty: GgmlType| {
            tensors.push(TensorPlan { name, dims, ty });
            inits.push(init);
        };
        let pick = |cols: usize, want: GgmlType| -> GgmlType {
            // A row that does not fill whole blocks falls back to Q8_0 (32-value blocks), then F16.
            if want.bytes_for(cols).is_some() {
                want
            } else if GgmlType::Q8_0.bytes_for(cols).is_some() && want != GgmlType::F32 {
                GgmlType::Q8_0
            } else {
                GgmlType::F16
            }
        };
        let mat_ty = |name: &str, il: Option<usize>, cols: usize, i_attn_v: usize| -> GgmlType {
            let want = if quant == "q4_k_m" {
                if name == "output.weight" {
                    GgmlType::Q6_K
                } else if name.ends_with("attn_qkv.weight") {
                    GgmlType::Q5_K
                } else if (name.ends_with("attn_v.weight") && use_more_bits(i_attn_v, n_attn_v))
                    || (name.ends_with("ffn_down.weight")
                        && il.is_some_and(|il| use_more_bits(il, n_all)))
                {
                    GgmlType::Q6_K
                } else {
                    base
                }
            } else {
                base
            };
            pick(cols, want)
        };
        let vec1 = |n: usize| vec![n as u64];
        let m2 = |rows: usize, cols: usize| vec![cols as u64, rows as u64];
        let w_in = |fan_in: usize| Init::Normal(1.0 / (fan_in as f32).sqrt());
        let w_out = |fan_in: usize| Init::Normal(0.5 / (fan_in as f32).sqrt());

        let mut mat = |add: &mut dyn FnMut(String, Vec<u64>, Init, GgmlType),
                       name: String,
                       il: Option<usize>,
                       rows: usize,
                       cols: usize,
                       init: Init| {
            let ty = mat_ty(&name, il, cols, i_attn_v);
            if name.ends_with("attn_v.weight") {
                i_attn_v += 1;
            }
            add(name, m2(rows, cols), init, ty);
        };

        mat(
            &mut add,
            "token_embd.weight".into(),
            None,
            s.n_vocab,
            d,
            Init::Normal(1.0),
        );
        add(
            "output_norm.weight".into(),
            vec1(d),
            Init::Norm,
            GgmlType::F32,
        );
        mat(
            &mut add,
            "output.weight".into(),
            None,
            s.n_vocab,
            d,
            Init::Normal(3.0 / (d as f32).sqrt()),
        );
        for il in 0..n_all {
            let n = |x: &str| format!("blk.{il}.{x}.weight");
            let l = Some(il);
            add(n("attn_norm"), vec1(d), Init::Norm, GgmlType::F32);
            add(n("post_attention_norm"), vec1(d), Init::Norm, GgmlType::F32);
            if s.is_attention(il) {
                mat(&mut add, n("attn_q"), l, 2 * q_dim, d, w_in(d));
                mat(&mut add, n("attn_k"), l, kv_dim, d, w_in(d));
                mat(&mut add, n("attn_v"), l, kv_dim, d, w_in(d));
                mat(&mut add, n("attn_output"), l, d, q_dim, w_out(q_dim));
                add(
                    n("attn_q_norm"),
                    vec1(s.head_dim),
                    Init::Norm,
                    GgmlType::F32,
                );
                add(
                    n("attn_k_norm"),
                    vec1(s.head_dim),
                    Init::Norm,
                    GgmlType::F32,
                );
            } else {
                let conv_dim = 2 * kd + vd;
                mat(&mut add, n("attn_qkv"), l, conv_dim, d, w_in(d));
                mat(&mut add, n("attn_gate"), l, vd, d, w_in(d));
                add(
                    n("ssm_conv1d"),
                    m2(conv_dim, s.conv_kernel),
                    Init::Normal(1.0 / (s.conv_kernel as f32).sqrt()),
                    GgmlType::F32,
                );
                add(
                    format!("blk.{il}.ssm_dt.bias"),
                    vec1(s.n_v_heads),
                    Init::DtBias,
                    GgmlType::F32,
                );
                add(
                    format!("blk.{il}.ssm_a"),
                    vec1(s.n_v_heads),
                    Init::SsmA,
                    GgmlType::F32,
                );
                mat(&mut add, n("ssm_beta"), l, s.n_v_heads, d, w_in(d));
                mat(&mut add, n("ssm_alpha"), l, s.n_v_heads, d, w_in(d));
                add(n("ssm_norm"), vec1(s.d_state), Init::Norm, GgmlType::F32);
                mat(&mut add, n("ssm_out"), l, d, vd, w_out(vd));
            }
            mat(&mut add, n("ffn_gate"), l, s.n_ff, d, w_in(d));
            mat(&mut add, n("ffn_up"), l, s.n_ff, d, w_in(d));
            mat(&mut add, n("ffn_down"), l, d, s.n_ff, w_out(s.n_ff));
            if il == s.n_layer {
                mat(&mut add, n("nextn.eh_proj"), l, d, 2 * d, w_in(2 * d));
                add(n("nextn.enorm"), vec1(d), Init::Norm, GgmlType::F32);
                add(n("nextn.hnorm"), vec1(d), Init::Norm, GgmlType::F32);
                add(
                    n("nextn.shared_head_norm"),
                    vec1(d),
                    Init::Norm,
                    GgmlType::F32,
                );
            }
        }

        let (tokens, types, merges) = vocab(s.n_vocab);
        let tok_id = |t: &str| tokens.iter().position(|x| x == t).unwrap_or(0) as u32;
        let arr_u =
            |v: Vec<usize>| Value::Array(v.into_iter().map(|x| Value::I32(x as i32)).collect());
        let k = |x: &str| format!("qwen35.{x}");
        let u = |x: usize| Value::U32(x as u32);
        let sec = s.n_rot / 2;
        let metadata = vec![
            (
                "general.architecture".into(),
                Value::String("qwen35".into()),
            ),
            ("general.type".into(), Value::String("model".into())),
            (
                "general.name".into(),
                Value::String(format!("Kiln synthetic qwen35 {}", s.name)),
            ),
            ("general.file_type".into(), Value::U32(ftype)),
            ("general.quantization_version".into(), Value::U32(2)),
            (k("block_count"), u(n_all)),
            (k("nextn_predict_layers"), u(1)),
            (k("context_length"), u(s.n_ctx_train)),
            (k("embedding_length"), u(d)),
            (k("feed_forward_length"), u(s.n_ff)),
            (k("attention.head_count"), u(s.n_head)),
            (k("attention.head_count_kv"), u(s.n_head_kv)),
            (k("attention.key_length"), u(s.head_dim)),
            (k("attention.value_length"), u(s.head_dim)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
            (k("rope.dimension_count"), u(s.n_rot)),
            // IMROPE sections (t, h, w, e) in the real model's proportions [11, 11, 10, 0] of n_rot/2.
            (
                k("rope.dimension_sections"),
                arr_u(vec![
                    sec * 11 / 32,
                    sec * 11 / 32,
                    sec - 2 * (sec * 11 / 32),
                    0,
                ]),
            ),
            (k("rope.freq_base"), Value::F32(s.rope_base)),
            (k("full_attention_interval"), u(4)),
            (k("ssm.conv_kernel"), u(s.conv_kernel)),
            (k("ssm.state_size"), u(s.d_state)),
            (k("ssm.group_count"), u(s.n_k_heads)),
            (k("ssm.time_step_rank"), u(s.n_v_heads)),
            (k("ssm.inner_size"), u(vd)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("qwen35".into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.iter().cloned().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(merges.into_iter().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.eos_token_id".into(),
                Value::U32(tok_id("<|im_end|>")),
            ),
            (
                "tokenizer.ggml.padding_token_id".into(),
                Value::U32(tok_id("<|endoftext|>")),
            ),
            (
                "tokenizer.ggml.bos_token_id".into(),
                Value::U32(tok_id("<|endoftext|>")),
            ),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            (
                "tokenizer.chat_template".into(),
                Value::String(CHAT_TEMPLATE.into()),
            ),
        ];
        Ok(Synth {
            writer: GgufWriter { metadata, tensors },
            inits,
            seed,
        })
    }

    /// One line per tensor (name, dims, type, bytes) and the total.
    pub fn plan_text(&self) -> String {
        let mut out = String::new();
        for t in &self.writer.tensors {
            out += &format!(
                "{:<32} {:<16} {:<5} {}\n",
                t.name,
                format!("{:?}", t.dims),
                t.ty.name(),
                t.n_bytes().unwrap_or(0)
            );
        }
        out
    }

    /// Writes the file, streaming row by row.
    pub fn write(&self, w: &mut impl std::io::Write) -> std::io::Result<u64> {
        let mut rng_for = None::<(usize, Rng)>;
        self.writer.write(w, |i, r, buf| {
            if rng_for.as_ref().is_none_or(|(j, _)| *j != i) {
                rng_for = Some((
                    i,
                    Rng::new(self.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                ));
            }
            let rng = &mut rng_for.as_mut().expect("set above").1;
            let _ = r;
            for v in buf.iter_mut() {
                *v = match self.inits[i] {
                    Init::Normal(std) => rng.normal() * std,
                    Init::Norm => 1.0 + 0.1 * rng.normal(),
                    Init::SsmA => -(rng.uniform() * 15.0 + 1.0),
                    Init::DtBias => {
                        let dt =
                            (1e-3f32.ln() + rng.uniform() * (1e-1f32.ln() - 1e-3f32.ln())).exp();
                        dt.exp_m1().ln()
                    }
                };
            }
        })
    }
}

impl Synth {
    /// Writes the file with quantized tensors filled by random *blocks* instead of quantized random
    /// values: every block gets random quants and a fixed, well-scaled layout of scales (mean-zero
    /// values of about the planned standard deviation), rows in parallel on `threads` threads. Seconds
    /// instead of an hour for the 27B shape; meant for speed and memory benchmarks, whose results do not
    /// depend on the weights' values. F32/F16 tensors (norms, gates, conv) are written as by [`Self::write`].
    pub fn write_fast(&self, w: &mut impl std::io::Write, threads: usize) -> std::io::Result<u64> {
        let threads = threads.clamp(1, 256);
        self.writer.write_tensors(w, |i, t, w| {
            let std = match self.inits[i] {
                Init::Normal(std) => std,
                _ => 1.0,
            };
            let cols = t.cols();
            let row_bytes = t.ty.bytes_for(cols).expect("planned tensor");
            if !matches!(
                t.ty,
                GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_0 | GgmlType::Q4_0
            ) {
                let mut rng =
                    Rng::new(self.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut vals = vec![0f32; cols];
                let mut bytes = vec![0u8; row_bytes];
                for _ in 0..t.rows() {
                    for v in vals.iter_mut() {
                        *v = self.init_value(i, &mut rng);
                    }
                    kiln_kernels::quant::quantize_row(t.ty, &vals, &mut bytes)
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    w.write_all(&bytes)?;
                }
                return Ok(());
            }
            // Rows in batches of at most 64 MiB, each batch split over the threads.
            let batch = (64usize << 20).div_ceil(row_bytes).max(1);
            let mut buf = vec![0u8; batch * row_bytes];
            let mut r0 = 0;
            while r0 < t.rows() {
                let n = batch.min(t.rows() - r0);
                let per = n.div_ceil(threads);
                std::thread::scope(|sc| {
                    for (c, chunk) in buf[..n * row_bytes].chunks_mut(per * row_bytes).enumerate() {
                        let first = r0 + c * per;
                        sc.spawn(move || {
                            for (j, row) in chunk.chunks_mut(row_bytes).enumerate() {
                                let key = (i as u64) << 40 | (first + j) as u64;
                                let mut rng =
                                    Rng::new(self.seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                                random_blocks(t.ty, std, row, &mut rng);
                            }
                        });
                    }
                });
                w.write_all(&buf[..n * row_bytes])?;
                r0 += n;
            }
            Ok(())
        })
    }

    fn init_value(&self, i: usize, rng: &mut Rng) -> f32 {
        match self.inits[i] {
            Init::Normal(std) => rng.normal() * std,
            Init::Norm => 1.0 + 0.1 * rng.normal(),
            Init::SsmA => -(rng.uniform() * 15.0 + 1.0),
            Init::DtBias => {
                let dt = (1e-3f32.ln() + rng.uniform() * (1e-1f32.ln() - 1e-3f32.ln())).exp();
                dt.exp_m1().ln()
            }
        }
    }
}

/// Fills a row of quantized blocks with random quants and scales chosen so values have mean ~0 and
/// standard deviation ~`std`. Q4_K/Q5_K: scale = min = 32 for sub-blocks 0–3 and 15 for 4–7 (so
/// d·sc·q − dmin·m is centred when dmin = d·mid); Q6_K: every scale 16.
fn random_blocks(ty: GgmlType, std: f32, row: &mut [u8], rng: &mut Rng) {
    for chunk in row.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let f16b = |x: f32| half::f16::from_f32(x).to_le_bytes();
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (bs, mid, qstd) = if ty == GgmlType::Q4_K {
                (144, 7.5, 4.6)
            } else {
                (176, 15.5, 9.2)
            };
            let d = std / (24.0 * qstd);
            for b in row.chunks_mut(bs) {
                b[0..2].copy_from_slice(&f16b(d));
                b[2..4].copy_from_slice(&f16b(d * mid));
                b[4..12].fill(32);
                b[12..16].fill(0xFF);
            }
        }
        GgmlType::Q6_K => {
            for b in row.chunks_mut(210) {
                b[192..208].fill(16);
                b[208..210].copy_from_slice(&f16b(std / (16.0 * 18.5)));
            }
        }
        GgmlType::Q8_0 => {
            for b in row.chunks_mut(34) {
                b[0..2].copy_from_slice(&f16b(std / 73.0));
            }
        }
        GgmlType::Q4_0 => {
            for b in row.chunks_mut(18) {
                b[0..2].copy_from_slice(&f16b(std / 4.6));
            }
        }
        _ => {}
    }
}

/// splitmix64 with Box–Muller normals: small, fast and stable across versions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}
