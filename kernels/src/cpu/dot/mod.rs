//! Dot-product kernels with run-time SIMD selection: quantized weight rows × quantized activation rows (the
//! matmul inner loop) and f32/f16 helpers for attention.
//!
//! `KILN_NO_SIMD=1` in the environment forces the scalar kernels (read once per process).

#[cfg(target_arch = "x86_64")]
mod avx2;
mod float;
mod scalar;

use std::sync::OnceLock;

use crate::quant::GgmlType;

pub(crate) use float::dot_float_rows;
pub use float::{axpy_f16, axpy_f32, dot_f16_f32, dot_f32};

/// Which kernel family runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 kernels plus AVX512-VNNI (`vpdpbusd`/`vpdpwssd`, 256-bit), and the batched 512-bit matmul.
    Avx512Vnni,
}

impl Simd {
    /// The best family this CPU supports, or `Scalar` when `KILN_NO_SIMD=1`.
    pub fn detect() -> Simd {
        static DETECTED: OnceLock<Simd> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            if std::env::var("KILN_NO_SIMD").is_ok_and(|v| v == "1") {
                return Simd::Scalar;
            }
            [Simd::Avx512Vnni, Simd::Avx2]
                .into_iter()
                .find(|s| s.is_supported())
                .unwrap_or(Simd::Scalar)
        })
    }

    /// Whether this CPU can run the family (ignores `KILN_NO_SIMD`).
    pub fn is_supported(self) -> bool {
        match self {
            Simd::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512Vnni => {
                Simd::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `self` if supported, else the best supported family below it.
    pub fn or_supported(self) -> Simd {
        [Simd::Avx512Vnni, Simd::Avx2, Simd::Scalar]
            .into_iter()
            .find(|s| *s <= self && s.is_supported())
            .unwrap_or(Simd::Scalar)
    }
}

/// The activation format a weight type's dot product consumes (ggml's `vec_dot_type`); `F32` for float weights.
pub fn activation_type(ty: GgmlType) -> Option<GgmlType> {
    use GgmlType::*;
    Some(match ty {
        F32 | F16 | BF16 => F32,
        Q4_0 | Q5_0 | Q8_0 => Q8_0,
        Q4_1 | Q5_1 => Q8_1,
        Q4_K | Q5_K | Q6_K => Q8_K,
        _ => return None,
    })
}

/// Dots one quantized weight row (`k` values of `ty`) against `R` activation rows already quantized to
/// `activation_type(ty)`. `simd` must be supported (see [`Simd::or_supported`]).
pub(crate) fn dot_quant_rows<const R: usize>(
    simd: Simd,
    ty: GgmlType,
    k: usize,
    w: &[u8],
    x: [&[u8]; R],
) -> [f32; R] {
    let act = activation_type(ty).expect("quantized weight type");
    assert!(
        w.len() == ty.bytes_for(k).unwrap_or(usize::MAX)
            && x.iter().all(|r| Some(r.len()) == act.bytes_for(k))
    );
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 {
        let (nb, w, x) = (k / ty.block_size(), w.as_ptr(), x.map(|r| r.as_ptr()));
        // SAFETY: callers pass supported families only; the lengths were checked above.
        unsafe {
            if simd == Simd::Avx512Vnni {
                match ty {
                    GgmlType::Q4_0 => return avx2::dot_q4_0_vnni(nb, w, x),
                    GgmlType::Q4_1 => return avx2::dot_q4_1_vnni(nb, w, x),
                    GgmlType::Q5_0 => return avx2::dot_q5_0_vnni(nb, w, x),
                    GgmlType::Q5_1 => return avx2::dot_q5_1_vnni(nb, w, x),
                    GgmlType::Q8_0 => return avx2::dot_q8_0_vnni(nb, w, x),
                    // vpdpwssd merges the K-quants' scale multiply and accumulate.
                    GgmlType::Q4_K => return avx2::dot_q4_k_vnni(nb, w, x),
                    GgmlType::Q5_K => return avx2::dot_q5_k_vnni(nb, w, x),
                    GgmlType::Q6_K => return avx2::dot_q6_k_vnni(nb, w, x),
                    _ => {}
                }
            }
            return match ty {
                GgmlType::Q4_0 => avx2::dot_q4_0(nb, w, x),
                GgmlType::Q4_1 => avx2::dot_q4_1(nb, w, x),
                GgmlType::Q5_0 => avx2::dot_q5_0(nb, w, x),
                GgmlType::Q5_1 => avx2::dot_q5_1(nb, w, x),
                GgmlType::Q8_0 => avx2::dot_q8_0(nb, w, x),
                GgmlType::Q4_K => avx2::dot_q4_k(nb, w, x),
                GgmlType::Q5_K => avx2::dot_q5_k(nb, w, x),
                GgmlType::Q6_K => avx2::dot_q6_k(nb, w, x),
                _ => unreachable!("{ty} is not quantized"),
            };
        }
    }
    let _ = simd;
    x.map(|x| scalar::dot_quant(ty, w, x))
}
