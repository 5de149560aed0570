//! A persistent thread pool for the many short parallel loops of a decode step (~300 per token).
//!
//! `run` publishes a job by storing a new generation in one atomic word whose low half is the next task index;
//! workers spin on that word for a while after each job (waking a parked thread costs tens of microseconds, more
//! than most matmuls take), then park on a condvar. Tasks are claimed by compare-and-swap on the same word,
//! so a worker that wakes late can never claim a task of a job that already finished: the job pointer it read
//! is only dereferenced after a successful claim, and `run` does not return before every claimed task is done.
//!
//! Before it writes the new job's task count and pointer, `run` closes the old generation by storing the new
//! one with the index `CLOSED`: otherwise a worker still looking for work in the finished job could read the
//! new (larger) task count and job pointer and still win its compare-and-swap against the old generation's
//! word, running a task of the new job twice or the finished job's closure after its frame is gone.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before parking. Covers the gaps between the matmuls of one
/// token (norms, attention on the calling thread) but not the pause between requests.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(300);

type Task<'a> = &'a (dyn Fn(usize) + Sync);

/// Task index of a generation whose job is being written: nothing to claim yet (and `wait_for_job` keeps
/// waiting).
const CLOSED: u32 = u32::MAX;

struct Shared {
    /// High 32 bits: job generation; low 32 bits: index of the next unclaimed task.
    counter: AtomicU64,
    n_tasks: AtomicUsize,
    /// Points at a `Task` on the stack of the thread inside `run`.
    job: AtomicPtr<()>,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    sleepers: AtomicUsize,
    park_lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Set while a `run` owns the shared job slot; a concurrent or nested `run` executes its tasks inline.
    busy: AtomicBool,
}

fn generation(counter: u64) -> u32 {
    (counter >> 32) as u32
}

impl Shared {
    /// Claims and runs tasks of generation `gen` until none are left.
    fn work(&self, gen: u32) {
        loop {
            let c = self.counter.load(Acquire);
            let index = c as u32 as usize;
            if generation(c) != gen || index >= self.n_tasks.load(Acquire) {
                return;
            }
            let job = self.job.load(Acquire) as *const Task<'static>;
            if self
                .counter
                .compare_exchange_weak(c, c + 1, AcqRel, Relaxed)
                .is_err()
            {
                continue;
            }
            // SAFETY: the claim succeeded, so generation `gen` still had unclaimed tasks; its `run` is waiting for
            // this task to be counted done and the `Task` it published (read after the Acquire load above, which
            // synchronises with its publication) is alive.
            let task: Task<'_> = unsafe { *job };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(index))) {
                self.panic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(payload);
            }
            self.done.fetch_add(1, Release);
        }
    }

    /// Waits until a generation other than `seen` is published; spins first, then parks.
    fn wait_for_job(&self, seen: u32) -> u32 {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let c = self.counter.load(Acquire);
            if generation(c) != seen && c as u32 != CLOSED {
                return generation(c);
            }
            spins = spins.wrapping_add(1);
            if spins & 63 == 0 && start.elapsed() > SPIN_BEFORE_PARK {
                break;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.park_lock.lock().unwrap_or_else(|e| e.into_inner());
        // SeqCst on `sleepers` and `counter` on both sides: either `run` sees us registered and notifies, or
        // we see its new generation here.
        self.sleepers.fetch_add(1, SeqCst);
        loop {
            let c = self.counter.load(SeqCst);
            if generation(c) != seen && c as u32 != CLOSED {
                self.sleepers.fetch_sub(1, SeqCst);
                return generation(c);
            }
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn worker_loop(&self) {
        let mut seen = 0;
        loop {
            seen = self.wait_for_job(seen);
            if self.shutdown.load(Acquire) {
                return;
            }
            self.work(seen);
        }
    }

    /// Starts a new generation with nothing to claim, so no worker can still claim a task of the previous
    /// one; the job fields may be written after this.
    fn close(&self) -> u32 {
        let gen = generation(self.counter.load(Relaxed)).wrapping_add(1);
        self.counter
            .store((gen as u64) << 32 | CLOSED as u64, SeqCst);
        gen
    }

    /// Opens generation `gen` (the job fields must already be stored) and wakes parked workers.
    fn publish(&self, gen: u32) -> u32 {
        self.counter.store((gen as u64) << 32, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _guard = self.park_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        gen
    }
}

/// Clears `ThreadPool::busy` even when `run` unwinds.
struct BusyGuard<'a>(&'a AtomicBool);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Release);
    }
}

impl ThreadPool {
    /// A pool in which `run` uses the calling thread plus `n_threads - 1` workers (`0` is treated as `1`).
    pub fn new(n_threads: usize) -> Self {
        let shared = Arc::new(Shared {
            counter: AtomicU64::new(0),
            n_tasks: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            park_lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..n_threads.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("kiln-worker-{i}"))
                    .spawn(move || shared.worker_loop())
                    .expect("spawning a kiln worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            busy: AtomicBool::new(false),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0)`, …, `f(n_tasks - 1)`, each exactly once, across the calling thread and the workers, and
    /// returns when all have finished. A panic in a task is re-raised here after the other tasks finish.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let inline = |f: &(dyn Fn(usize) + Sync)| (0..n_tasks).for_each(f);
        if n_tasks <= 1 || self.workers.is_empty() || n_tasks >= CLOSED as usize {
            return inline(f);
        }
        if self
            .busy
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_err()
        {
            return inline(f);
        }
        let _busy = BusyGuard(&self.busy);
        let shared = &*self.shared;
        let task: Task<'_> = f;
        let gen = shared.close();
        shared.done.store(0, Relaxed);
        shared.n_tasks.store(n_tasks, Release);
        shared
            .job
            .store(&task as *const Task<'_> as *mut (), Release);
        shared.publish(gen);
        shared.work(gen);
        let mut spins = 0u32;
        while shared.done.load(Acquire) < n_tasks {
            spins = spins.wrapping_add(1);
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                // A worker was descheduled mid-task (the machine is oversubscribed): stop burning its core.
                std::thread::yield_now();
            }
        }
        let payload = shared
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(payload) = payload {
            resume_unwind(payload);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Release);
        let gen = self.shared.close();
        self.shared.publish(gen);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
