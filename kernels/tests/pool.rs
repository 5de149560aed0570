//! ThreadPool: every task runs exactly once, across many consecutive runs, and panics reach the caller.

use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_kernels::cpu::pool::ThreadPool;

#[test]
fn every_task_runs_exactly_once_over_many_runs() {
    for n_threads in [1, 2, 3] {
        let pool = ThreadPool::new(n_threads);
        assert_eq!(pool.n_threads(), n_threads);
        for run in 0..3000 {
            let n_tasks = run % 37;
            let counts: Vec<AtomicUsize> = (0..n_tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n_tasks, &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "n_threads={n_threads} run={run}"
            );
        }
    }
}

#[test]
fn runs_after_workers_have_parked() {
    let pool = ThreadPool::new(3);
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(5)); // longer than the spin window
        let sum = AtomicUsize::new(0);
        pool.run(100, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.into_inner(), 4950);
    }
}

#[test]
fn task_panic_propagates_and_pool_stays_usable() {
    let pool = ThreadPool::new(3);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.run(50, &|i| {
            if i == 17 {
                panic!("task 17 fails");
            }
        })
    }));
    let payload = result.expect_err("the panic must reach the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"task 17 fails"));
    let n = AtomicUsize::new(0);
    pool.run(64, &|_| {
        n.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(n.into_inner(), 64);
}

#[test]
fn nested_and_concurrent_runs_complete() {
    let pool = ThreadPool::new(3);
    let n = AtomicUsize::new(0);
    pool.run(8, &|_| {
        // A nested run on a busy pool executes inline instead of deadlocking.
        pool.run(4, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
    });
    assert_eq!(n.load(Ordering::Relaxed), 32);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..200 {
                    pool.run(10, &|_| {
                        n.fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
        }
    });
    assert_eq!(n.into_inner(), 32 + 3 * 200 * 10);
}

/// Back-to-back runs whose task counts alternate small and large: a worker that finishes the last task of
/// one run and looks for more while the next run is being published must not claim a task of either.
#[test]
fn late_workers_never_run_a_task_twice() {
    let pool = ThreadPool::new(2);
    let runs = std::env::var("KILN_POOL_STRESS_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    for run in 0..runs {
        let n_tasks = if run % 2 == 0 {
            1 + run % 3
        } else {
            24 + run % 17
        };
        let counts: Vec<AtomicUsize> = (0..n_tasks).map(|_| AtomicUsize::new(0)).collect();
        pool.run(n_tasks, &|i| {
            counts[i].fetch_add(1, Ordering::Relaxed);
        });
        for (i, c) in counts.iter().enumerate() {
            assert_eq!(
                c.load(Ordering::Relaxed),
                1,
                "run {run}: task {i} of {n_tasks}"
            );
        }
    }
}
