//! `kiln-agent generate`: one prompt in, text out (or one JSON object with `--json`).

use super::ModelArgs;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use kiln_agent::chat::ChatTemplate;
use kiln_agent::engine::sampling::{Sampler, SamplingParams};
use kiln_agent::tokenizer::{DecodeOptions, Tokenizer};
use serde_json::{json, Map, Value};
use std::io::Write;

/// Whether the chat template opens a thinking block (models that have one, e.g. Qwen3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Reasoning {
    Off,
    On,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, short = 'p', required_unless_present = "token_ids")]
    pub prompt: Option<String>,
    /// Feed these token ids (comma-separated) instead of a text prompt.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub token_ids: Option<Vec<u32>>,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// RNG seed (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Thinking in the chat template: `off` renders the template's no-thinking form
    /// (`enable_thinking=false`), so no hidden chain of thought is generated.
    #[arg(long, value_enum, default_value = "off")]
    pub reasoning: Reasoning,
    /// Print one JSON object (text, token ids, speeds) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub speculative: super::SpecArgs,
}

/// The prompt as text, rendered through the chat template when asked.
fn prompt_text<B: kiln_kernels::backend::Backend>(
    args: &GenerateArgs,
    ld: &super::Loaded<B>,
    tok: &Tokenizer,
) -> Result<String> {
    let text = args.prompt.clone().unwrap_or_default();
    if !args.chat {
        return Ok(text);
    }
    let template = ChatTemplate::for_model(&ld.file, tok).context("reading the chat template")?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": text}));
    let mut extra = Map::new();
    extra.insert(
        "enable_thinking".into(),
        Value::Bool(args.reasoning == Reasoning::On),
    );
    template
        .render(&messages, None, true, &extra)
        .context("rendering the chat template")
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let sampling = SamplingParams {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: 64,
        seed: args.seed.unwrap_or_else(rand::random),
    };
    sampling.validate().map_err(anyhow::Error::msg)?;
    let model = args.model.clone();
    model.run_on(Job { args, sampling })
}

struct Job {
    args: GenerateArgs,
    sampling: SamplingParams,
}

impl super::OnBackend for Job {
    fn run<B: kiln_kernels::backend::Backend + 'static>(self, ld: super::Loaded<B>) -> Result<()> {
        generate(self.args, self.sampling, ld)
    }
}

fn generate<B: kiln_kernels::backend::Backend + 'static>(
    args: GenerateArgs,
    sampling: SamplingParams,
    ld: super::Loaded<B>,
) -> Result<()> {
    let engine = &ld.engine;
    let tok = Tokenizer::from_gguf(&ld.file).context("reading the tokenizer")?;
    let prompt: Vec<u32> = match &args.token_ids {
        Some(ids) => ids.clone(),
        // Chat templates write their own special tokens, so they are parsed as such.
        None => tok.encode(&prompt_text(&args, &ld, &tok)?, true, true),
    };
    if prompt.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let n_vocab = engine.model.info().n_vocab;
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
        anyhow::bail!("token id {bad} is outside the vocabulary of {n_vocab}");
    }
    if prompt.len() >= ld.n_ctx {
        anyhow::bail!(
            "the prompt has {} tokens but the context holds {} (raise --ctx)",
            prompt.len(),
            ld.n_ctx
        );
    }
    let mut seq = engine
        .new_sequence(ld.n_ctx, args.model.kv_type)
        .context("allocating the KV cache")?;
    if let Some(draft_max) = args.speculative.draft_max() {
        engine
            .enable_speculation(&mut seq, draft_max)
            .context("turning on MTP speculative decoding")?;
    }
    let mut sampler = Sampler::new(sampling);
    // End-of-generation tokens end the answer; they are not printed.
    let mut detok = tok.detokenizer(DecodeOptions {
        render_special: false,
        strip_space_prefix: false,
    });
    let mut text = String::new();
    let stdout = std::io::stdout();
    let (tokens, stats) = engine.generate(
        &mut seq,
        &prompt,
        args.max_tokens,
        &mut sampler,
        &|t| tok.is_eog(t),
        &mut |t| {
            if tok.is_eog(t) {
                return true;
            }
            let piece = detok.push(t);
            if !args.json {
                let mut out = stdout.lock();
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
            text.push_str(&piece);
            true
        },
    )?;
    let tail = detok.finish();
    text.push_str(&tail);
    if args.json {
        let out = json!({
            "text": text,
            "tokens": tokens,
            "prompt_tokens": stats.prompt_tokens,
            "prefill_tok_s": stats.prefill_tok_s,
            "decode_tok_s": stats.decode_tok_s,
            "finish_reason": stats.finish_reason,
            "speculative": stats.speculative,
            "stats": stats,
        });
        println!("{out}");
    } else {
        println!("{tail}");
    }
    Ok(())
}
