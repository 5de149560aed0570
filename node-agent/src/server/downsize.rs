//! Automatic context downsizing: a task samples the memory source every few seconds. When another
//! process takes device memory so that free memory would fall below the headroom, the server steps its
//! context down the ladder (the scheduler drains and reallocates; queued requests wait); when memory
//! has stayed free for a while it grows back. Every change is logged, counted and shown on /status.
//!
//! The decision is in device bytes: others = used − the agent's own planned bytes; a rung fits when
//! others + its footprint + headroom ≤ total. Shrinking acts on the first sample that does not fit;
//! growing needs the larger rung to fit with half a headroom to spare, continuously for `grow_after`
//! (hysteresis: a brief dip in another process's usage does not make the server flap).

use super::AppState;
use crate::gpu::vram::MemorySource;
use crate::plan::gb;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct DownsizeConfig {
    pub headroom: u64,
    pub poll: Duration,
    pub grow_after: Duration,
    /// How long in-flight requests may run once a downsize starts.
    pub drain: Duration,
    /// Act on memory pressure (false: only report it).
    pub auto: bool,
}

/// The ladder with the agent's footprint at each rung, largest first.
#[derive(Clone, Debug)]
pub struct Ladder {
    pub rungs: Vec<usize>,
    pub footprints: Vec<u64>,
}

impl Ladder {
    /// The rung holding `ctx` (or the largest rung below it).
    pub fn index_of(&self, ctx: usize) -> usize {
        self.rungs
            .iter()
            .position(|&r| r <= ctx)
            .unwrap_or(self.rungs.len() - 1)
    }
    pub fn footprint_at(&self, ctx: usize) -> u64 {
        self.footprints[self.index_of(ctx)]
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Stay,
    /// Shrink to this rung (the largest that fits, or the last one).
    Shrink(usize),
    /// Growing to this rung would fit with room to spare.
    Grow(usize),
}

/// What to do at rung `current` given the device's `total` and `used` bytes (used includes the
/// agent's own `resident` bytes).
pub fn decide(
    ladder: &Ladder,
    current: usize,
    total: u64,
    used: u64,
    resident: u64,
    headroom: u64,
) -> Decision {
    let others = used.saturating_sub(resident);
    let fits = |i: usize, spare: u64| {
        others
            .saturating_add(ladder.footprints[i])
            .saturating_add(headroom)
            .saturating_add(spare)
            <= total
    };
    if !fits(current, 0) {
        if current + 1 >= ladder.rungs.len() {
            return Decision::Stay; // already at the minimum
        }
        let to = (current + 1..ladder.rungs.len())
            .find(|&i| fits(i, 0))
            .unwrap_or(ladder.rungs.len() - 1);
        return Decision::Shrink(to);
    }
    match (0..current).find(|&i| fits(i, headroom / 2)) {
        Some(i) => Decision::Grow(i),
        None => Decision::Stay,
    }
}

/// A resize the watcher asked for and has not heard back about.
struct InFlight {
    reply: tokio::sync::oneshot::Receiver<Result<usize, String>>,
    from: usize,
    shrink: bool,
}

/// Samples `source` forever: updates the GPU metrics and the status, and resizes when needed.
pub async fn watch(
    st: Arc<AppState>,
    source: Box<dyn MemorySource>,
    ladder: Ladder,
    cfg: DownsizeConfig,
) {
    let source: Arc<dyn MemorySource> = Arc::from(source);
    let node = st.node.clone();
    let mut grow_since: Option<(usize, Instant)> = None;
    let mut inflight: Option<InFlight> = None;
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(cfg.poll).await;
        if let Some(f) = inflight.as_mut() {
            match f.reply.try_recv() {
                Ok(result) => {
                    let f = inflight.take().expect("checked");
                    finish_resize(&st, &ladder, f, result);
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    inflight = None;
                    node.downsizing.store(false, Ordering::SeqCst);
                }
            }
        }
        let src = source.clone();
        let sample = match tokio::task::spawn_blocking(move || src.sample()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // Log a failing source once per distinct error, not every poll.
                let msg = format!("{e:#}");
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!("memory source {}: {msg}", source.describe());
                    last_error = Some(msg);
                }
                continue;
            }
            Err(_) => continue,
        };
        last_error = None;
        st.metrics.set_gpus(&sample);
        let gpu = sample[0].clone();
        *node.gpus.lock().unwrap_or_else(|p| p.into_inner()) = sample;
        let Some(core) = st.core.get() else { continue };
        if !cfg.auto || st.shutting_down.load(Ordering::SeqCst) {
            continue;
        }
        if inflight.as_ref().is_some_and(|f| f.shrink) {
            continue; // a downsize is draining: wait for it (a grow is replaced by a downsize)
        }
        let ctx = core.sched.n_ctx();
        let current = ladder.index_of(ctx);
        let resident = node.resident.load(Ordering::SeqCst);
        match decide(
            &ladder,
            current,
            gpu.vram_total_bytes,
            gpu.vram_used_bytes,
            resident,
            cfg.headroom,
        ) {
            Decision::Shrink(to) => {
                grow_since = None;
                let msg = format!(
                    "GPU memory low ({} free of {}, headroom {}): reducing the context from {ctx} to {} tokens",
                    gb(gpu.vram_free_bytes()),
                    gb(gpu.vram_total_bytes),
                    gb(cfg.headroom),
                    ladder.rungs[to]
                );
                tracing::warn!("{msg}");
                node.set_message(msg);
                node.downsizing.store(true, Ordering::SeqCst);
                // A grow waiting for an idle moment is replaced by this request.
                let reply = core
                    .sched
                    .resize(ladder.rungs[to..].to_vec(), cfg.drain, true);
                inflight = Some(InFlight {
                    reply,
                    from: ctx,
                    shrink: true,
                });
            }
            Decision::Grow(to) if inflight.is_none() => {
                let since = match grow_since {
                    Some((i, t)) if i == to => t,
                    _ => {
                        grow_since = Some((to, Instant::now()));
                        continue;
                    }
                };
                if since.elapsed() >= cfg.grow_after {
                    grow_since = None;
                    let msg = format!(
                        "GPU memory free again ({} free of {}) for {:?}: growing the context from {ctx} to {} tokens",
                        gb(gpu.vram_free_bytes()),
                        gb(gpu.vram_total_bytes),
                        cfg.grow_after,
                        ladder.rungs[to]
                    );
                    tracing::info!("{msg}");
                    node.set_message(msg);
                    let reply =
                        core.sched
                            .resize(ladder.rungs[to..=current].to_vec(), cfg.drain, false);
                    inflight = Some(InFlight {
                        reply,
                        from: ctx,
                        shrink: false,
                    });
                }
            }
            Decision::Grow(_) => {}
            Decision::Stay => grow_since = None,
        }
    }
}

fn finish_resize(st: &AppState, ladder: &Ladder, f: InFlight, result: Result<usize, String>) {
    let node = &st.node;
    node.downsizing.store(false, Ordering::SeqCst);
    match result {
        Ok(ctx) => {
            node.effective.store(ctx, Ordering::SeqCst);
            node.resident
                .store(ladder.footprint_at(ctx), Ordering::SeqCst);
            st.metrics
                .context_size
                .with_label_values(&["effective"])
                .set(ctx as i64);
            if ctx < f.from {
                node.downsizes.fetch_add(1, Ordering::SeqCst);
                st.metrics.context_downsizes.inc();
            }
            let msg = format!(
                "context {} from {} to {ctx} tokens",
                if ctx < f.from { "reduced" } else { "grown" },
                f.from
            );
            tracing::info!("{msg}");
            node.set_message(msg);
        }
        Err(e) if f.shrink => {
            tracing::error!("resizing the context failed: {e}");
            node.set_message(format!("resizing the context failed: {e}"));
        }
        Err(e) => tracing::info!("growing the context did not happen: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Ladder {
        // Rungs of 8K, 4K, 2K with 1000 fixed bytes + 1 byte per token.
        Ladder {
            rungs: vec![8192, 4096, 2048],
            footprints: vec![9192, 5096, 3048],
        }
    }

    #[test]
    fn shrinks_just_enough_and_grows_only_with_room() {
        let l = ladder();
        // 20000 total, nothing else: the top rung fits with room to spare.
        assert_eq!(decide(&l, 0, 20000, 9192, 9192, 1000), Decision::Stay);
        // Another process takes 10000: 10000 + 9192 + 1000 > 20000; 4K fits.
        assert_eq!(decide(&l, 0, 20000, 19192, 9192, 1000), Decision::Shrink(1));
        // At 4K, another process takes 14000: only 2K fits.
        assert_eq!(decide(&l, 1, 20000, 19096, 5096, 1000), Decision::Shrink(2));
        // With a 3000 headroom nothing fits: the minimum is the best there is, and there it stays.
        assert_eq!(decide(&l, 1, 20000, 20000, 5096, 3000), Decision::Shrink(2));
        assert_eq!(decide(&l, 2, 20000, 20000, 3048, 3000), Decision::Stay);
        // At 2K with 10000 used by others: 4K fits with half a headroom to spare, 8K does not.
        assert_eq!(decide(&l, 2, 20000, 13048, 3048, 1000), Decision::Grow(1));
        // The other process freed everything: straight back to the top.
        assert_eq!(decide(&l, 2, 20000, 3048, 3048, 1000), Decision::Grow(0));
        // 8K would fit, but not with half a headroom more: stay (no flapping at the edge).
        assert_eq!(
            decide(&l, 1, 20000, 5096 + 9500, 5096, 1000),
            Decision::Stay
        );
        assert_eq!(l.index_of(5000), 1);
        assert_eq!(l.index_of(100), 2);
    }
}
