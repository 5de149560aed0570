//! `kiln-agent bench`: prompt-processing and generation speed, measured the way llama-bench does (a
//! prompt of N tokens from an empty cache; M single-token steps from an empty cache), median of reps.
//! Decoding is greedy, its argmax picked where the logits are, as a temperature-0 request runs. Also the
//! cost of a speculative verify pass of 1..=K tokens (every row's argmax, recurrent-state snapshots)
//! after the prompt, relative to one token: speculation pays when accepted tokens per round outgrow it.

use super::ModelArgs;
use anyhow::Result;
use clap::Args;
use kiln_agent::model::{Logits, OutputRow, PassOptions, Readout};
use kiln_kernels::backend::Backend;
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
    /// Largest verify pass measured (tokens); 0 skips the verify curve.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(0..=17))]
    pub verify_max: u16,
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
    fn run<B: Backend + 'static>(self, ld: super::Loaded<B>) -> Result<()> {
        bench(self.0, ld)
    }
}

fn bench<B: Backend + 'static>(args: BenchArgs, mut ld: super::Loaded<B>) -> Result<()> {
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
    ld.n_ctx = ld
        .n_ctx
        .max(args.prompt_tokens + args.verify_max as usize + 1);
    let mut seq = engine.new_sequence(ld.n_ctx, args.model.kv_type)?;
    // Pure model speed: no recurrent-state checkpoints along the prompt.
    seq.checkpoints.policy.spacing = 0;
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
            // Greedy, as a temperature-0 request decodes: the argmax is picked on the device.
            for _ in 0..args.gen_tokens {
                let mut out = engine.decode_with(&mut seq, token, Readout::Argmax)?;
                token = match out.last_row(n_vocab as usize)? {
                    OutputRow::Argmax(t) => t,
                    _ => anyhow::bail!("decode read back no argmax"),
                };
            }
            tg.push(args.gen_tokens as f64 / t.elapsed().as_secs_f64());
        }
    }
    let verify = verify_curve(&ld, &mut seq, &prompt, args.verify_max as usize, reps)?;
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
        "verify": verify,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Median milliseconds of a verify pass of k = 1..=`max` tokens after `prompt`, the ratio to k = 1,
/// and (for a model with an MTP head) one chained draft step.
fn verify_curve<B: Backend + 'static>(
    ld: &super::Loaded<B>,
    seq: &mut kiln_agent::engine::Sequence<B>,
    prompt: &[u32],
    max: usize,
    reps: usize,
) -> Result<serde_json::Value> {
    if max == 0 {
        return Ok(serde_json::Value::Null);
    }
    let engine = &ld.engine;
    let be = &*engine.backend;
    engine.reset(seq)?;
    engine.prefill(seq, prompt)?;
    let start = seq.tokens.len();
    if start + max > seq.n_ctx() {
        anyhow::bail!("the context is too small for a {max}-token verify pass after the prompt");
    }
    let recurrent = seq.cache.has_recurrent();
    if recurrent {
        seq.cache.enable_snapshots(be, max)?;
    }
    let mut ms = Vec::new();
    for k in 1..=max {
        let batch: Vec<u32> = (0..k).map(|i| prompt[i % prompt.len()]).collect();
        let mut times = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let opts = PassOptions {
                logits: Logits::All,
                readout: Readout::Argmax,
                hidden: None,
                snapshots: recurrent,
            };
            // Always at the same position: attention entries are overwritten; the recurrent state
            // drifting on does not change the cost.
            engine
                .model
                .forward_with(&mut seq.cache, &batch, start, opts)?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.push(median(times));
    }
    let relative: Vec<f64> = ms.iter().map(|m| m / ms[0]).collect();
    let draft_step_ms = match engine.model.draft_head() {
        Some(head) => {
            let dim = engine.model.info().n_embd;
            let mut cache = head.new_draft_cache(seq.n_ctx(), seq.cache.kv_type)?;
            let (h, mut out) = (be.tensor(dim)?, be.tensor(dim)?);
            let mut times = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                head.draft_forward(&mut cache, &h, &prompt[..1], start, &mut out)?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Some(median(times))
        }
        None => None,
    };
    Ok(json!({
        "position": start,
        "tokens": (1..=max).collect::<Vec<_>>(),
        "ms": ms,
        "relative_to_1": relative,
        "mtp_draft_step_ms": draft_step_ms,
    }))
}
