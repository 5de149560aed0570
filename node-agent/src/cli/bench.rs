//! `kiln-agent bench`: prompt-processing and generation speed, measured the way llama-bench does (a
//! prompt of N tokens from an empty cache; M single-token steps from an empty cache), median of reps.

use super::ModelArgs;
use anyhow::Result;
use clap::Args;
use kiln_agent::engine::sampling::argmax;
use serde_json::json;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed in one prefill.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Context already in the cache when generation is timed (prefilled first, not timed), like
    /// llama-bench's `-d`: decode speed at depth.
    #[arg(long, default_value_t = 0)]
    pub depth: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let model = args.model.clone();
    model.run_on(Job(args))
}

struct Job(BenchArgs);

impl super::OnBackend for Job {
    fn run<B: kiln_kernels::backend::Backend + 'static>(self, ld: super::Loaded<B>) -> Result<()> {
        bench(self.0, ld)
    }
}

fn bench<B: kiln_kernels::backend::Backend + 'static>(
    args: BenchArgs,
    mut ld: super::Loaded<B>,
) -> Result<()> {
    let engine = &ld.engine;
    let n_vocab = engine.model.info().n_vocab as u32;
    ld.n_ctx = ld
        .n_ctx
        .max(args.prompt_tokens.max(args.depth) + args.gen_tokens + 1);
    // Deterministic pseudo-random prompt tokens (llama-bench uses random tokens too).
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let prompt: Vec<u32> = (0..args.prompt_tokens.max(args.depth).max(1))
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n_vocab as u64) as u32
        })
        .collect();
    let mut seq = engine.new_sequence(ld.n_ctx, args.model.kv_type)?;
    // Warm-up: touches every weight page once.
    engine.prefill(&mut seq, &prompt[..prompt.len().min(8)])?;

    let reps = args.reps.max(1);
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..reps {
        if args.prompt_tokens > 0 {
            engine.reset(&mut seq)?;
            let t = Instant::now();
            engine.prefill(&mut seq, &prompt[..args.prompt_tokens])?;
            pp.push(args.prompt_tokens as f64 / t.elapsed().as_secs_f64());
        }
        if args.gen_tokens > 0 {
            engine.reset(&mut seq)?;
            if args.depth > 0 {
                engine.prefill(&mut seq, &prompt[..args.depth])?;
            }
            let mut token = prompt[0];
            let t = Instant::now();
            for _ in 0..args.gen_tokens {
                let logits = engine.decode(&mut seq, token)?;
                token = argmax(&logits);
            }
            tg.push(args.gen_tokens as f64 / t.elapsed().as_secs_f64());
        }
    }
    let out = json!({
        "model": args.model.model.display().to_string(),
        "arch": engine.model.info().arch,
        "backend": engine.backend.name(),
        "threads": ld.threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "depth": args.depth,
        "reps": reps,
        "prefill_tok_s": median(pp.clone()),
        "decode_tok_s": median(tg.clone()),
        "prefill_tok_s_all": pp,
        "decode_tok_s_all": tg,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
