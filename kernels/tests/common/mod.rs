//! Helpers shared by the kernel tests and the kernel examples (which include this file by path).
#![allow(dead_code)]

use kiln_kernels::quant::GgmlType;

/// A deterministic xorshift64 stream from `seed` (no dev-dependency needed).
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Deterministic values in [-1, 1).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut next = xorshift(seed);
    (0..n)
        .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect()
}

/// Random quantized bytes of `n_out` rows of `k` values with every block's f16 scales (d, and the min or
/// dmin where the type has one) set to small sane values, so no block decodes to infinities.
pub fn random_weights(ty: GgmlType, n_out: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut next = xorshift(seed);
    let mut w: Vec<u8> = (0..n_out * ty.bytes_for(k).unwrap())
        .map(|_| next() as u8)
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    let at = if ty == GgmlType::Q6_K { 208 } else { 0 };
    for block in w.chunks_exact_mut(ty.type_size()) {
        block[at..at + 2].copy_from_slice(&scale);
        if matches!(
            ty,
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K
        ) {
            block[2..4].copy_from_slice(&scale);
        }
    }
    w
}

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
