//! `kiln-agent generate`: one prompt in, text out (or one JSON object with `--json`).

use super::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use kiln_agent::engine::sampling::{Sampler, SamplingParams};
use serde_json::json;
use std::io::Write;

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
    /// Print one JSON object (text, token ids, speeds) instead of streaming text.
    #[arg(long)]
    pub json: bool,
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
    let ld = args.model.load()?;
    let engine = &ld.engine;
    let prompt: Vec<u32> = match &args.token_ids {
        Some(ids) => ids.clone(),
        None => anyhow::bail!("text prompts need the tokenizer"),
    };
    let n_vocab = engine.model.info().n_vocab;
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
        anyhow::bail!("token id {bad} is outside the vocabulary of {n_vocab}");
    }
    let mut seq = engine
        .new_sequence(ld.n_ctx, args.model.kv_type)
        .context("allocating the KV cache")?;
    let mut sampler = Sampler::new(sampling);
    let stdout = std::io::stdout();
    let (tokens, stats) = engine.generate(
        &mut seq,
        &prompt,
        args.max_tokens,
        &mut sampler,
        &|_| false,
        &mut |t| {
            if !args.json {
                let mut out = stdout.lock();
                let _ = write!(out, "{t} ");
                let _ = out.flush();
            }
            true
        },
    )?;
    if args.json {
        let out = json!({
            "tokens": tokens,
            "prompt_tokens": stats.prompt_tokens,
            "prefill_tok_s": stats.prefill_tok_s,
            "decode_tok_s": stats.decode_tok_s,
            "stats": stats,
        });
        println!("{out}");
    } else {
        println!();
    }
    Ok(())
}
