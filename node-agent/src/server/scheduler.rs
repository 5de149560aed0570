//! The scheduler: `--parallel` slots, each with its own `Sequence` (so a conversation's next turn prefills
//! only its new tokens), a bounded queue, and one dedicated engine thread — compute is blocking — that
//! interleaves the active slots step by step: each step runs one prefill chunk or one decoded token per
//! active slot, and a request joins or leaves between steps (continuous batching at the step level).
//!
//! The slots' forward passes are still separate matrix-vector products; batching them into one
//! matrix-matrix pass across slots is a later engine change (`Model::forward` over several sequences).

use super::json::JsonState;
use super::metrics::Metrics;
use super::stop::StopMatcher;
use crate::engine::sampling::{Sampler, SamplingParams};
use crate::engine::{Engine, Sequence};
use crate::tokenizer::{DecodeOptions, Detokenizer, Tokenizer};
use kiln_kernels::backend::{Backend, KvType};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// One request as the engine sees it.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Constrain the output to one JSON object (the state may be primed with a prefix).
    pub json: Option<JsonState>,
    pub deadline: Instant,
    pub received: Instant,
    pub events: UnboundedSender<Event>,
}

#[derive(Debug)]
pub enum Event {
    /// The prompt is in the cache; generation starts.
    Prefilled {
        prompt_tokens: usize,
        cached_tokens: usize,
    },
    /// Generated text, stop strings already removed.
    Text(String),
    Done(Summary),
    Error {
        message: String,
        timeout: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token, stop string, or a completed JSON object.
    Stop,
    /// `max_tokens` or the context is full.
    Length,
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub queue_ms: f64,
}

pub struct SchedulerConfig {
    pub parallel: usize,
    pub n_ctx: usize,
    pub kv_type: KvType,
    pub queue: usize,
}

/// The handle the HTTP side holds.
pub struct Scheduler {
    tx: SyncSender<Job>,
    pub n_ctx: usize,
    pub parallel: usize,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

pub enum SubmitError {
    QueueFull,
    Stopped,
}

impl Scheduler {
    /// Starts the engine thread: allocates every slot's cache, warms the model up with one token, then
    /// serves jobs. Returns once the slots exist; `ready()` turns true after the warm-up.
    pub fn start<B: Backend + 'static>(
        engine: Engine<B>,
        tok: Arc<Tokenizer>,
        cfg: SchedulerConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Scheduler>
    where
        Sequence<B>: Send,
    {
        let parallel = cfg.parallel.max(1);
        let (tx, rx) = sync_channel::<Job>(cfg.queue.max(1));
        let ready = Arc::new(AtomicBool::new(false));
        let (init_tx, init_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let r = ready.clone();
        let m = metrics.clone();
        let n_ctx = cfg.n_ctx;
        std::thread::Builder::new()
            .name("kiln-engine".into())
            .spawn(move || {
                let mut slots = Vec::new();
                for _ in 0..parallel {
                    match engine.new_sequence(n_ctx, cfg.kv_type) {
                        Ok(seq) => slots.push(Slot {
                            seq,
                            active: None,
                            last_used: 0,
                        }),
                        Err(e) => {
                            let _ = init_tx.send(Err(format!("allocating a slot's cache: {e}")));
                            return;
                        }
                    }
                }
                let _ = init_tx.send(Ok(()));
                // Warm-up: one token through the model, so the first request does not pay for page
                // faults of the mapped weights.
                let warm = tok.bos().or(tok.eos()).unwrap_or(0);
                if let Err(e) = engine.prefill(&mut slots[0].seq, &[warm]) {
                    tracing::error!("warm-up failed: {e}");
                }
                slots[0].seq.tokens.clear();
                r.store(true, Ordering::SeqCst);
                tracing::info!("engine ready: {parallel} slot(s) of {n_ctx} tokens");
                EngineLoop {
                    engine,
                    tok,
                    slots,
                    metrics: m,
                    clock: 0,
                }
                .run(rx);
            })?;
        match init_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!(e),
            Err(_) => anyhow::bail!("the engine thread stopped while starting"),
        }
        metrics.slots_total.set(parallel as i64);
        Ok(Scheduler {
            tx,
            n_ctx,
            parallel,
            metrics,
            ready,
        })
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Queues a job; a full queue is refused at once (the caller answers 503 with Retry-After).
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.metrics.queue_depth.inc();
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.dec();
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

struct Slot<B: Backend> {
    seq: Sequence<B>,
    active: Option<Active>,
    last_used: u64,
}

enum Phase {
    /// Prompt tokens `..pos` are in the cache.
    Prefill { pos: usize },
    /// `next` was sampled and still has to be fed to the model.
    Decode { next: u32 },
}

struct Active {
    job: Job,
    phase: Phase,
    sampler: Sampler,
    detok: Detokenizer<Arc<Tokenizer>>,
    stop: StopMatcher,
    generated: usize,
    cached: usize,
    started: Instant,
    prefill_ms: f64,
    decode_ms: f64,
    queue_ms: f64,
}

struct EngineLoop<B: Backend> {
    engine: Engine<B>,
    tok: Arc<Tokenizer>,
    slots: Vec<Slot<B>>,
    metrics: Arc<Metrics>,
    clock: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The free slot for `prompt`: the longest common prefix with what a slot holds wins (llama-server's
/// rule), then the least recently used.
fn pick_slot(held: &[(bool, &[u32], u64)], prompt: &[u32]) -> Option<usize> {
    held.iter()
        .enumerate()
        .filter(|(_, (busy, _, _))| !busy)
        .max_by_key(|(_, (_, toks, used))| (common_prefix(toks, prompt), std::cmp::Reverse(*used)))
        .map(|(i, _)| i)
}

/// Prompt tokens per prefill step: long prompts are cut so other slots keep decoding in between.
const PREFILL_CHUNK: usize = 512;

enum Outcome {
    Continue,
    Finished,
}

impl<B: Backend> EngineLoop<B> {
    fn run(mut self, rx: Receiver<Job>) {
        let mut disconnected = false;
        loop {
            // Admit as many queued jobs as there are free slots.
            loop {
                let n_active = self.slots.iter().filter(|s| s.active.is_some()).count();
                if n_active == self.slots.len() || disconnected {
                    break;
                }
                let job = if n_active == 0 {
                    match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                };
                self.metrics.queue_depth.dec();
                self.admit(job);
            }
            let busy = self.slots.iter().filter(|s| s.active.is_some()).count();
            self.metrics.slots_busy.set(busy as i64);
            if busy == 0 {
                if disconnected {
                    return;
                }
                continue;
            }
            for i in 0..self.slots.len() {
                if self.slots[i].active.is_some() {
                    if let Outcome::Finished = self.step(i) {
                        self.slots[i].active = None;
                    }
                }
            }
        }
    }

    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            return; // the client left while queued
        }
        if Instant::now() >= job.deadline {
            let _ = job.events.send(Event::Error {
                message: "the request timed out while queued".into(),
                timeout: true,
            });
            return;
        }
        let held: Vec<(bool, &[u32], u64)> = self
            .slots
            .iter()
            .map(|s| (s.active.is_some(), s.seq.tokens.as_slice(), s.last_used))
            .collect();
        let Some(i) = pick_slot(&held, &job.prompt) else {
            return;
        };
        self.clock += 1;
        let slot = &mut self.slots[i];
        slot.last_used = self.clock;
        // Keep the longest common prefix the cache can go back to (for recurrent layers: the nearest
        // checkpoint); at least the last prompt token is recomputed for its logits.
        let common = match self.engine.reuse_prefix(&mut slot.seq, &job.prompt) {
            Ok(n) => n,
            Err(e) => {
                let _ = job.events.send(Event::Error {
                    message: format!("prefill failed: {e}"),
                    timeout: false,
                });
                return;
            }
        };
        let queue_ms = job.received.elapsed().as_secs_f64() * 1000.0;
        slot.active = Some(Active {
            sampler: Sampler::new(job.sampling.clone()),
            detok: Detokenizer::new(
                self.tok.clone(),
                DecodeOptions {
                    render_special: false,
                    strip_space_prefix: false,
                },
            ),
            stop: StopMatcher::new(job.stop.clone()),
            phase: Phase::Prefill { pos: common },
            generated: 0,
            cached: common,
            started: Instant::now(),
            prefill_ms: 0.0,
            decode_ms: 0.0,
            queue_ms,
            job,
        });
    }

    fn step(&mut self, i: usize) -> Outcome {
        let engine = &self.engine;
        let slot = &mut self.slots[i];
        let a = slot.active.as_mut().expect("active slot");
        if a.job.events.is_closed() {
            // The client disconnected: free the slot now.
            return Outcome::Finished;
        }
        if Instant::now() >= a.job.deadline {
            let _ = a.job.events.send(Event::Error {
                message: "the request timed out".into(),
                timeout: true,
            });
            return Outcome::Finished;
        }
        let t = Instant::now();
        let logits = match a.phase {
            Phase::Prefill { pos } => {
                // One step of at most PREFILL_CHUNK tokens (cut at recurrent-state checkpoints).
                let r = engine.prefill_chunk(&mut slot.seq, &a.job.prompt[pos..], PREFILL_CHUNK);
                match r {
                    Ok((l, n)) => {
                        let end = pos + n;
                        a.prefill_ms += t.elapsed().as_secs_f64() * 1000.0;
                        if end < a.job.prompt.len() {
                            a.phase = Phase::Prefill { pos: end };
                            return Outcome::Continue;
                        }
                        let computed = a.job.prompt.len() - a.cached;
                        self.metrics.prompt_tokens.inc_by(a.job.prompt.len() as u64);
                        self.metrics.cached_tokens.inc_by(a.cached as u64);
                        self.metrics.prefill_seconds.inc_by(a.prefill_ms / 1000.0);
                        if a.prefill_ms > 0.0 {
                            self.metrics
                                .prefill_tps
                                .set(computed as f64 * 1000.0 / a.prefill_ms);
                        }
                        let _ = a.job.events.send(Event::Prefilled {
                            prompt_tokens: a.job.prompt.len(),
                            cached_tokens: a.cached,
                        });
                        l
                    }
                    Err(e) => return fail(slot, format!("prefill failed: {e}")),
                }
            }
            Phase::Decode { next } => match engine.decode(&mut slot.seq, next) {
                Ok(l) => {
                    a.decode_ms += t.elapsed().as_secs_f64() * 1000.0;
                    l
                }
                Err(e) => return fail(slot, format!("decode failed: {e}")),
            },
        };
        let slot = &mut self.slots[i];
        let n_ctx = slot.seq.n_ctx();
        let a = slot.active.as_mut().expect("active slot");
        let token = sample(
            &mut a.sampler,
            logits,
            &slot.seq.tokens,
            &self.tok,
            &a.job.json,
        );
        if a.generated == 0 {
            self.metrics
                .ttft
                .observe(a.job.received.elapsed().as_secs_f64());
        }
        if self.tok.is_eog(token) {
            return finish(a, Finish::Stop, &self.metrics);
        }
        a.generated += 1;
        self.metrics.generated_tokens.inc();
        let piece = a.detok.push(token);
        if let Some(js) = a.job.json.as_mut() {
            js.feed(self.tok.token_to_piece(token));
        }
        let (text, stopped) = a.stop.push(&piece);
        if !text.is_empty() {
            let _ = a.job.events.send(Event::Text(text));
        }
        if stopped || a.job.json.as_ref().is_some_and(|j| j.done()) {
            return finish(a, Finish::Stop, &self.metrics);
        }
        if a.generated >= a.job.max_tokens || slot.seq.tokens.len() >= n_ctx {
            return finish(a, Finish::Length, &self.metrics);
        }
        a.phase = Phase::Decode { next: token };
        Outcome::Continue
    }
}

fn fail<B: Backend>(slot: &mut Slot<B>, message: String) -> Outcome {
    tracing::error!("{message}");
    // The cache may be half-written: forget what it holds.
    slot.seq.tokens.clear();
    if let Some(a) = &slot.active {
        let _ = a.job.events.send(Event::Error {
            message,
            timeout: false,
        });
    }
    Outcome::Finished
}

fn finish(a: &mut Active, mut reason: Finish, metrics: &Metrics) -> Outcome {
    if !a.stop.stopped() {
        let tail = a.detok.finish();
        let (mut text, stopped) = a.stop.push(&tail);
        if stopped {
            reason = Finish::Stop;
        } else {
            text.push_str(&a.stop.finish());
        }
        if !text.is_empty() {
            let _ = a.job.events.send(Event::Text(text));
        }
    }
    metrics.decode_seconds.inc_by(a.decode_ms / 1000.0);
    if a.decode_ms > 0.0 && a.generated > 1 {
        metrics
            .decode_tps
            .set((a.generated - 1) as f64 * 1000.0 / a.decode_ms);
    }
    let _ = a.started;
    let _ = a.job.events.send(Event::Done(Summary {
        finish: reason,
        prompt_tokens: a.job.prompt.len(),
        cached_tokens: a.cached,
        completion_tokens: a.generated,
        prefill_ms: a.prefill_ms,
        decode_ms: a.decode_ms,
        queue_ms: a.queue_ms,
    }));
    Outcome::Finished
}

/// Samples one token; under a JSON constraint, tokens that would break the JSON are masked out (the
/// sampler's pick is tried first, then the next best valid token).
fn sample(
    sampler: &mut Sampler,
    mut logits: Vec<f32>,
    history: &[u32],
    tok: &Tokenizer,
    json: &Option<JsonState>,
) -> u32 {
    let Some(js) = json else {
        return sampler.sample(&mut logits, history);
    };
    let valid = |t: u32| {
        if tok.is_eog(t) {
            return js.done();
        }
        !tok.is_control(t) && js.accepts(tok.token_to_piece(t))
    };
    for _ in 0..16 {
        let t = sampler.sample(&mut logits.clone(), history);
        if valid(t) {
            return t;
        }
        if let Some(l) = logits.get_mut(t as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    let mut order: Vec<u32> = (0..logits.len() as u32)
        .filter(|&t| logits[t as usize].is_finite())
        .collect();
    order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    order
        .into_iter()
        .find(|&t| valid(t))
        .or_else(|| tok.eos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_choice_prefers_longest_prefix_then_lru() {
        let a = [1u32, 2, 3, 4];
        let b = [1u32, 2, 9];
        let held = [(false, &a[..], 5), (false, &b[..], 1), (true, &a[..], 0)];
        assert_eq!(pick_slot(&held, &[1, 2, 3, 4, 5]), Some(0));
        assert_eq!(pick_slot(&held, &[1, 2, 9, 9]), Some(1));
        // No common prefix anywhere: the least recently used free slot.
        assert_eq!(pick_slot(&held, &[7]), Some(1));
        let all_busy = [(true, &a[..], 0)];
        assert_eq!(pick_slot(&all_busy, &[1]), None);
    }
}
