//! The scheduler: `--parallel` slots, each with its own `Sequence` (so a conversation's next turn prefills
//! only its new tokens), a bounded queue, and one dedicated engine thread — compute is blocking — that
//! interleaves the active slots step by step, and a request joins or leaves between steps. Each step
//! runs at most one prefill chunk (the prefilling slots take turns, so a long prompt delays the decoding
//! slots by one chunk per step), one draft+verify round per speculative slot, and ONE forward pass for
//! the next token of every other decoding slot (continuous batching: `Engine::decode_batch`, the
//! weights read once per step however many slots decode). Sampling stays per slot.
//!
//! Resizing (`Scheduler::resize`): the engine stops admitting (queued jobs wait, none is dropped),
//! lets in-flight requests finish until a deadline, ends the rest with a retryable error, frees every
//! slot's cache and allocates them again at the first context of the given list that succeeds.
//!
//! Speculative (MTP) slots keep their own draft and verify passes: a verify pass is already several
//! rows of one sequence, and its state snapshots are per sequence.

use super::json::JsonState;
use super::metrics::Metrics;
use super::stop::StopMatcher;
use crate::engine::sampling::{Sampler, SamplingParams};
use crate::engine::{Engine, Sequence};
use crate::model::{Output, Readout};
use crate::tokenizer::{DecodeOptions, Detokenizer, Tokenizer};
use kiln_kernels::backend::{Backend, KvType};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
    /// The request could not run now but may succeed if retried (the context is being resized).
    Unavailable(String),
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
    /// Contexts to try at start, largest first: the planned one, then the smaller rungs in case an
    /// allocation fails.
    pub contexts: Vec<usize>,
    pub kv_type: KvType,
    pub queue: usize,
    /// MTP speculative decoding with up to this many drafts per round (None: off).
    pub draft_max: Option<usize>,
}

/// The handle the HTTP side holds.
pub struct Scheduler {
    tx: SyncSender<Job>,
    /// Asks the engine thread to end what runs and exit (see [`Scheduler::stop`]).
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    n_ctx: Arc<AtomicUsize>,
    pub parallel: usize,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    resize: Arc<Mutex<Option<ResizeRequest>>>,
    resizing: Arc<AtomicBool>,
}

/// Reallocate every slot at the first context of `contexts` that can be allocated.
pub struct ResizeRequest {
    pub contexts: Vec<usize>,
    /// Admission stops at once; in-flight requests get this long to finish.
    pub drain: Duration,
    /// When the drain time is up: end the requests still running (memory is running out), or give the
    /// resize up and resume (growing back is never worth ending a request; the watcher tries later).
    pub end_inflight: bool,
    /// The context allocated, or why none could be.
    pub reply: tokio::sync::oneshot::Sender<Result<usize, String>>,
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
        let n_ctx = Arc::new(AtomicUsize::new(0));
        let resize = Arc::new(Mutex::new(None::<ResizeRequest>));
        let resizing = Arc::new(AtomicBool::new(false));
        let (eng_ctx, eng_resize, eng_resizing) = (n_ctx.clone(), resize.clone(), resizing.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let eng_stop = stop.clone();
        let contexts = cfg.contexts.clone();
        let kv_type = cfg.kv_type;
        let draft_max = cfg.draft_max;
        if draft_max.is_some() && engine.model.draft_head().is_none() {
            anyhow::bail!(
                "--spec mtp: the {} model has no MTP head to draft with",
                engine.model.info().arch
            );
        }
        let thread = std::thread::Builder::new()
            .name("kiln-engine".into())
            .spawn(move || {
                let (mut slots, ctx) =
                    match allocate(&engine, parallel, &contexts, kv_type, draft_max) {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = init_tx.send(Err(e));
                            return;
                        }
                    };
                eng_ctx.store(ctx, Ordering::SeqCst);
                let _ = init_tx.send(Ok(()));
                // Warm-up: one token through the model, so the first request does not pay for page
                // faults of the mapped weights.
                let warm = tok.bos().or(tok.eos()).unwrap_or(0);
                if let Err(e) = engine.prefill(&mut slots[0].seq, &[warm]) {
                    tracing::error!("warm-up failed: {e}");
                }
                // Forget the warm-up token everywhere: the cache, the checkpoints and the MTP head's
                // mirror (clearing only the token list left a speculative slot out of step).
                if let Err(e) = engine.reset(&mut slots[0].seq) {
                    tracing::error!("resetting the slot after the warm-up failed: {e}");
                }
                r.store(true, Ordering::SeqCst);
                tracing::info!("engine ready: {parallel} slot(s) of {ctx} tokens");
                EngineLoop {
                    engine,
                    tok,
                    slots,
                    metrics: m,
                    clock: 0,
                    kv_type,
                    draft_max,
                    parallel,
                    n_ctx: eng_ctx,
                    resize_ctl: eng_resize,
                    resizing: eng_resizing,
                    pending: None,
                    stop: eng_stop,
                    prefill_turn: 0,
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
            stop,
            thread: Mutex::new(Some(thread)),
            n_ctx,
            parallel,
            metrics,
            ready,
            resize,
            resizing,
        })
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Ends the requests still running (retryable 503) and waits up to `timeout` for the engine thread
    /// to exit, so the model and its device memory are released by that thread before the process ends
    /// (a GPU runtime torn down at exit under a thread still using it crashes the process).
    pub fn stop(&self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(handle) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            tracing::warn!("the engine thread did not stop within {timeout:?}");
        }
    }

    /// The context every slot has now.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx.load(Ordering::SeqCst)
    }

    /// Whether a resize is in progress (admission paused or waiting for an idle moment).
    pub fn resizing(&self) -> bool {
        self.resizing.load(Ordering::SeqCst)
    }

    /// Asks the engine to reallocate the slots (see [`ResizeRequest`]); a request not yet taken up is
    /// replaced (its sender gets an error).
    pub fn resize(
        &self,
        contexts: Vec<usize>,
        drain: Duration,
        end_inflight: bool,
    ) -> tokio::sync::oneshot::Receiver<Result<usize, String>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.resizing.store(true, Ordering::SeqCst);
        let old = self
            .resize
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(ResizeRequest {
                contexts,
                drain,
                end_inflight,
                reply,
            });
        if let Some(old) = old {
            let _ = old.reply.send(Err("replaced by a newer resize".into()));
        }
        rx
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

/// `parallel` slots at the first context in `contexts` whose caches can all be allocated.
fn allocate<B: Backend>(
    engine: &Engine<B>,
    parallel: usize,
    contexts: &[usize],
    kv_type: KvType,
    draft_max: Option<usize>,
) -> Result<(Vec<Slot<B>>, usize), String> {
    let new_slot = |ctx: usize| {
        let mut seq = engine.new_sequence(ctx, kv_type)?;
        if let Some(n) = draft_max {
            engine.enable_speculation(&mut seq, n)?;
        }
        Ok::<_, crate::model::ModelError>(seq)
    };
    let mut last = String::from("no context to try");
    for &ctx in contexts {
        let mut slots = Vec::with_capacity(parallel);
        for _ in 0..parallel {
            match new_slot(ctx) {
                Ok(seq) => slots.push(Slot {
                    seq,
                    active: None,
                    last_used: 0,
                }),
                Err(e) => {
                    last = format!("allocating a slot's cache of {ctx} tokens: {e}");
                    break;
                }
            }
        }
        if slots.len() == parallel {
            return Ok((slots, ctx));
        }
        // Free what this rung allocated before trying a smaller one.
        drop(slots);
        tracing::warn!("{last}; trying a smaller context");
    }
    Err(last)
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
    kv_type: KvType,
    draft_max: Option<usize>,
    parallel: usize,
    n_ctx: Arc<AtomicUsize>,
    resize_ctl: Arc<Mutex<Option<ResizeRequest>>>,
    resizing: Arc<AtomicBool>,
    /// The resize being carried out, with its drain deadline.
    pending: Option<(ResizeRequest, Instant)>,
    stop: Arc<AtomicBool>,
    /// The slot whose prefill goes first in the next step (prefilling slots take turns).
    prefill_turn: usize,
}

/// How long the idle engine waits for a job before looking at the resize control again.
const IDLE_POLL: Duration = Duration::from_millis(50);

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

/// The prefilling slot (of `prefilling`, ascending) whose chunk runs this step: the first at or after
/// `turn`, wrapping around, so prefilling slots take turns and each decode step waits for one chunk.
fn prefill_pick(prefilling: &[usize], turn: usize) -> Option<usize> {
    prefilling
        .iter()
        .find(|&&i| i >= turn)
        .or(prefilling.first())
        .copied()
}

/// Prompt tokens per prefill step: long prompts are cut so other slots keep decoding in between.
pub const PREFILL_CHUNK: usize = 512;

enum Outcome {
    Continue,
    Finished,
}

/// What an active slot does in the current step.
enum Work {
    /// Its next prompt chunk.
    Prefill,
    /// A draft+verify round of its own.
    Speculative(u32),
    /// Its next token, in the step's batched decode pass.
    Decode(u32),
}

impl<B: Backend> EngineLoop<B> {
    fn run(mut self, rx: Receiver<Job>) {
        let mut disconnected = false;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                for slot in &mut self.slots {
                    if let Some(a) = slot.active.take() {
                        let _ = a.job.events.send(Event::Unavailable(
                            "The server is shutting down. Retry the request.".into(),
                        ));
                    }
                }
                return;
            }
            self.take_resize();
            // Admit as many queued jobs as there are free slots; during a resize none (they wait in
            // the queue).
            while self.pending.is_none() {
                let n_active = self.slots.iter().filter(|s| s.active.is_some()).count();
                // With no slots (every allocation failed) jobs are still taken, to be refused.
                if (n_active == self.slots.len() && !self.slots.is_empty()) || disconnected {
                    break;
                }
                let job = if n_active == 0 {
                    match rx.recv_timeout(IDLE_POLL) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
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
            if let Some((req, deadline)) = &self.pending {
                let expired = Instant::now() >= *deadline;
                if busy == 0 || (expired && req.end_inflight) {
                    self.apply_resize();
                    continue;
                }
                if expired {
                    let (req, _) = self.pending.take().expect("checked");
                    self.resizing.store(false, Ordering::SeqCst);
                    let _ = req.reply.send(Err(format!(
                        "{busy} request(s) still in flight after {:?}; not resizing now",
                        req.drain
                    )));
                    continue;
                }
            }
            if busy == 0 {
                if disconnected {
                    return;
                }
                continue;
            }
            self.step();
        }
    }

    /// One scheduler step over the active slots (see the module docs).
    fn step(&mut self) {
        let mut prefilling = Vec::new();
        let mut decoding = Vec::new();
        for i in 0..self.slots.len() {
            let Some(work) = self.work(i) else {
                self.slots[i].active = None;
                continue;
            };
            match work {
                Work::Prefill => prefilling.push(i),
                Work::Decode(next) => decoding.push((i, next)),
                Work::Speculative(next) => {
                    if let Outcome::Finished = self.step_speculative(i, next) {
                        self.slots[i].active = None;
                    }
                }
            }
        }
        if let Some(i) = prefill_pick(&prefilling, self.prefill_turn) {
            self.prefill_turn = i + 1;
            if let Outcome::Finished = self.step_prefill(i) {
                self.slots[i].active = None;
            }
        }
        if !decoding.is_empty() {
            self.step_decode(&decoding);
        }
    }

    /// What active slot `i` does this step; `None` when it is done without computing (not active, the
    /// client left, or the request timed out).
    fn work(&mut self, i: usize) -> Option<Work> {
        let slot = &mut self.slots[i];
        let a = slot.active.as_mut()?;
        if a.job.events.is_closed() {
            // The client disconnected: free the slot now.
            return None;
        }
        if Instant::now() >= a.job.deadline {
            let _ = a.job.events.send(Event::Error {
                message: "the request timed out".into(),
                timeout: true,
            });
            return None;
        }
        Some(match a.phase {
            Phase::Prefill { .. } => Work::Prefill,
            Phase::Decode { next } if slot.seq.draft.is_some() && a.job.json.is_none() => {
                Work::Speculative(next)
            }
            Phase::Decode { next } => Work::Decode(next),
        })
    }

    /// The next token of every slot in `rows` (slot index, token to feed) through one batched pass,
    /// then each slot samples its own next token.
    fn step_decode(&mut self, rows: &[(usize, u32)]) {
        let t = Instant::now();
        let results = {
            let mut readouts = Vec::with_capacity(rows.len());
            let mut batch: Vec<(&mut Sequence<B>, u32)> = self
                .slots
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| {
                    let &(_, next) = rows.iter().find(|(r, _)| *r == i)?;
                    let readout = s
                        .active
                        .as_ref()
                        .map(|a| readout_for(&a.sampler, &a.job.json));
                    readouts.push(readout.unwrap_or_default());
                    Some((&mut s.seq, next))
                })
                .collect();
            self.engine.decode_batch_with(&mut batch, &readouts)
        };
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        self.metrics.decode_batch_rows.observe(rows.len() as f64);
        // `results` follows slot order, as `rows` does (both were built by ascending slot index).
        for (&(i, _), result) in rows.iter().zip(results) {
            let outcome = match result {
                Ok(out) => {
                    let a = self.slots[i].active.as_mut().expect("active slot");
                    a.decode_ms += ms;
                    self.sample_next(i, out)
                }
                Err(e) => fail(&mut self.slots[i], format!("decode failed: {e}")),
            };
            if let Outcome::Finished = outcome {
                self.slots[i].active = None;
            }
        }
    }

    /// Takes up a resize request posted by [`Scheduler::resize`].
    fn take_resize(&mut self) {
        let req = self
            .resize_ctl
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(req) = req {
            let deadline = Instant::now() + req.drain;
            if let Some((old, _)) = self.pending.replace((req, deadline)) {
                let _ = old.reply.send(Err("replaced by a newer resize".into()));
            }
        }
    }

    /// Ends what is still in flight, frees every cache, and allocates the slots at the first context
    /// that succeeds (the current one as the last resort).
    fn apply_resize(&mut self) {
        let Some((req, _)) = self.pending.take() else {
            return;
        };
        let old = self.n_ctx.load(Ordering::SeqCst);
        for slot in &mut self.slots {
            if let Some(a) = slot.active.take() {
                let _ = a.job.events.send(Event::Unavailable(format!(
                    "The request was ended because the server is reducing its context from {old}                      tokens to free GPU memory for another process. Retry it."
                )));
            }
        }
        self.slots.clear();
        let mut contexts = req.contexts.clone();
        if !contexts.contains(&old) {
            contexts.push(old);
        }
        let result = match allocate(
            &self.engine,
            self.parallel,
            &contexts,
            self.kv_type,
            self.draft_max,
        ) {
            Ok((slots, ctx)) => {
                self.slots = slots;
                self.n_ctx.store(ctx, Ordering::SeqCst);
                Ok(ctx)
            }
            Err(e) => {
                tracing::error!("no context could be allocated: {e}");
                Err(e)
            }
        };
        self.resizing.store(false, Ordering::SeqCst);
        let _ = req.reply.send(result);
    }

    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            return; // the client left while queued
        }
        let n_ctx = self.n_ctx.load(Ordering::SeqCst);
        if self.slots.is_empty() || job.prompt.len() >= n_ctx {
            let _ = job.events.send(Event::Unavailable(format!(
                "The server's context is now {n_ctx} tokens (reduced because GPU memory ran low) and                  the prompt has {} tokens. Retry later, when memory is free again.",
                job.prompt.len()
            )));
            return;
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

    /// One prefill chunk of slot `i`; after the last one, its first token is sampled.
    fn step_prefill(&mut self, i: usize) -> Outcome {
        let engine = &self.engine;
        let slot = &mut self.slots[i];
        let a = slot.active.as_mut().expect("active slot");
        let t = Instant::now();
        let logits = match a.phase {
            Phase::Prefill { pos } => {
                // One step of at most PREFILL_CHUNK tokens (cut at recurrent-state checkpoints).
                let readout = readout_for(&a.sampler, &a.job.json);
                let rest = &a.job.prompt[pos..];
                let r = engine.prefill_chunk(&mut slot.seq, rest, PREFILL_CHUNK, readout);
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
            Phase::Decode { .. } => return Outcome::Continue,
        };
        self.sample_next(i, logits)
    }

    /// Samples slot `i`'s next token from the pass's `out` and sends it on its way.
    fn sample_next(&mut self, i: usize, out: Output) -> Outcome {
        let n_vocab = self.engine.model.info().n_vocab;
        let slot = &mut self.slots[i];
        let n_ctx = slot.seq.n_ctx();
        let a = slot.active.as_mut().expect("active slot");
        let history = &slot.seq.tokens;
        let token = match (out, &a.job.json) {
            (Output::Logits(logits), Some(js)) => {
                sample_json(&mut a.sampler, logits, history, &self.tok, js)
            }
            (mut out, _) => match out.last_row(n_vocab) {
                Ok(row) => a.sampler.sample_row(row, history),
                Err(e) => return fail(slot, e.to_string()),
            },
        };
        let fed = slot.seq.tokens.len();
        if let Some(reason) = take_token(a, token, fed, n_ctx, &self.tok, &self.metrics) {
            return finish(a, reason, &self.metrics);
        }
        a.phase = Phase::Decode { next: token };
        Outcome::Continue
    }

    /// One speculative round for slot `i`: the MTP head drafts up to `draft_max` tokens after `next`,
    /// one main-model pass verifies them, and every token it emits goes out like a decoded one.
    fn step_speculative(&mut self, i: usize, next: u32) -> Outcome {
        let engine = &self.engine;
        let slot = &mut self.slots[i];
        let n_ctx = slot.seq.n_ctx();
        let a = slot.active.as_mut().expect("active slot");
        let draft_max = slot.seq.draft.as_ref().map_or(0, |d| d.draft_max);
        // The verify pass feeds `next` and the drafts; the last emitted token is never fed.
        let room = n_ctx.saturating_sub(slot.seq.tokens.len() + 1);
        let may_emit = a.job.max_tokens.saturating_sub(a.generated);
        let n = draft_max.min(room).min(may_emit.saturating_sub(1));
        let t = Instant::now();
        let drafts = match engine.draft(&mut slot.seq, next, n) {
            Ok(d) => d,
            Err(e) => return fail(slot, format!("drafting failed: {e}")),
        };
        // The sampler is lent to the verify pass while the closure below owns the rest of `a`.
        let mut sampler = std::mem::replace(&mut a.sampler, Sampler::new(Default::default()));
        let mut reason = None;
        let mut fed = slot.seq.tokens.len();
        let (tok, metrics) = (&self.tok, &self.metrics);
        let verified = engine.verify(&mut slot.seq, next, &drafts, &mut sampler, &mut |token| {
            fed += 1;
            reason = take_token(a, token, fed, n_ctx, tok, metrics);
            reason.is_none()
        });
        a.sampler = sampler;
        let emitted = match verified {
            Ok(e) => e,
            Err(e) => return fail(slot, format!("verify failed: {e}")),
        };
        a.decode_ms += t.elapsed().as_secs_f64() * 1000.0;
        let accepted = drafts
            .iter()
            .zip(&emitted)
            .take_while(|(d, e)| d == e)
            .count();
        self.metrics.spec_drafted.inc_by(drafts.len() as u64);
        self.metrics.spec_accepted.inc_by(accepted as u64);
        if let Some(reason) = reason {
            return finish(a, reason, &self.metrics);
        }
        let Some(&last) = emitted.last() else {
            return fail(slot, "a verify pass emitted no token".into());
        };
        a.phase = Phase::Decode { next: last };
        Outcome::Continue
    }
}

/// Sends one sampled token on its way (detokenized, through the stop strings and the JSON state) and
/// says whether generation ends with it. `fed` counts the tokens in the cache before it: a token that
/// would not fit the context ends generation with Length.
fn take_token(
    a: &mut Active,
    token: u32,
    fed: usize,
    n_ctx: usize,
    tok: &Tokenizer,
    metrics: &Metrics,
) -> Option<Finish> {
    if a.generated == 0 {
        metrics.ttft.observe(a.job.received.elapsed().as_secs_f64());
    }
    if tok.is_eog(token) {
        return Some(Finish::Stop);
    }
    a.generated += 1;
    metrics.generated_tokens.inc();
    let piece = a.detok.push(token);
    if let Some(js) = a.job.json.as_mut() {
        js.feed(tok.token_to_piece(token));
    }
    let (text, stopped) = a.stop.push(&piece);
    if !text.is_empty() {
        let _ = a.job.events.send(Event::Text(text));
    }
    if stopped || a.job.json.as_ref().is_some_and(|j| j.done()) {
        return Some(Finish::Stop);
    }
    if a.generated >= a.job.max_tokens || fed >= n_ctx {
        return Some(Finish::Length);
    }
    None
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

/// What a pass should read back for this sampler: a JSON constraint masks tokens out of whole rows.
fn readout_for(sampler: &Sampler, json: &Option<JsonState>) -> Readout {
    match json {
        Some(_) => Readout::Logits,
        None => sampler.readout(),
    }
}

/// Samples one token under a JSON constraint: tokens that would break the JSON are masked out (the
/// sampler's pick is tried first, then the next best valid token).
fn sample_json(
    sampler: &mut Sampler,
    mut logits: Vec<f32>,
    history: &[u32],
    tok: &Tokenizer,
    js: &JsonState,
) -> u32 {
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

    #[test]
    fn prefilling_slots_take_turns() {
        assert_eq!(prefill_pick(&[], 0), None);
        assert_eq!(prefill_pick(&[1, 3], 0), Some(1));
        assert_eq!(prefill_pick(&[1, 3], 2), Some(3));
        // Past the last one: back to the first.
        assert_eq!(prefill_pick(&[1, 3], 4), Some(1));
        // Three slots prefilling: each gets a chunk before any gets a second.
        let (mut turn, mut order) = (0, Vec::new());
        for _ in 0..6 {
            let i = prefill_pick(&[0, 2, 5], turn).unwrap();
            order.push(i);
            turn = i + 1;
        }
        assert_eq!(order, [0, 2, 5, 0, 2, 5]);
    }
}
