//! CPU kernels: the reference implementation of every op and a real fallback backend.
//! SIMD paths are chosen at run time (AVX2/FMA where the CPU has them, scalar otherwise).

mod attention;
mod attention_f16;
pub mod backend;
pub mod dot;
#[cfg(target_arch = "x86_64")]
mod gemm;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod recurrent;

pub use backend::{CpuBackend, CpuKvCache, CpuWeight};
