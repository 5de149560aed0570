//! Helpers shared by the kernel tests.

/// `compile` run for every target at once (each run takes a minute on one core).
pub fn compile_each<T: Send>(
    archs: &[&'static str],
    compile: impl Fn(&str) -> T + Sync,
) -> Vec<(&'static str, T)> {
    std::thread::scope(|s| {
        let compile = &compile;
        let jobs: Vec<_> = archs
            .iter()
            .map(|&arch| s.spawn(move || (arch, compile(arch))))
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("compile thread"))
            .collect()
    })
}
