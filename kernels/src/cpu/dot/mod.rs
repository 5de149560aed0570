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

/// A 32-byte aligned unit of the buffers that hold prepared (pre-decoded) weight rows.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Chunk32(pub [u8; 32]);

/// Size in [`Chunk32`]s of the prepared form of one row of `k` values of `ty` (see [`prepare_row`]), or
/// `None` when `ty` has none on this path. Only the K-quants have one: decoding their super-blocks (levels,
/// 6-bit scales, mins) costs about as much as the dot product against eight activation rows, so for prompts
/// the matmul decodes each weight row once per call instead of once per eight rows.
pub(crate) fn prepared_chunks(simd: Simd, ty: GgmlType, k: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 && k.is_multiple_of(crate::quant::QK_K) {
        let block = match ty {
            GgmlType::Q4_K | GgmlType::Q5_K => size_of::<avx2::K4Block>(),
            GgmlType::Q6_K => size_of::<avx2::K6Block>(),
            _ => return None,
        };
        return Some(k / crate::quant::QK_K * block / 32);
    }
    let _ = (simd, ty, k);
    None
}

/// Decodes one weight row `w` (`k` values of `ty`) into `out` (`prepared_chunks` long, which must be
/// `Some`).
pub(crate) fn prepare_row(simd: Simd, ty: GgmlType, k: usize, w: &[u8], out: &mut [Chunk32]) {
    let chunks = prepared_chunks(simd, ty, k).expect("a type with a prepared form");
    assert!(out.len() == chunks && Some(w.len()) == ty.bytes_for(k));
    #[cfg(target_arch = "x86_64")]
    {
        let (nb, w) = (k / crate::quant::QK_K, w.as_ptr());
        // SAFETY: AVX2 is present (prepared_chunks checked the family); `out` holds `nb` blocks (checked
        // above) and is 32-byte aligned like the block types.
        unsafe {
            match ty {
                GgmlType::Q4_K => avx2::prepare_q4_k(nb, w, out.as_mut_ptr().cast()),
                GgmlType::Q5_K => avx2::prepare_q5_k(nb, w, out.as_mut_ptr().cast()),
                _ => avx2::prepare_q6_k(nb, w, out.as_mut_ptr().cast()),
            }
        }
    }
}

/// [`dot_quant_rows`] against a row prepared by [`prepare_row`]: the same operations, so the same bits.
pub(crate) fn dot_prepared_rows<const R: usize>(
    simd: Simd,
    ty: GgmlType,
    k: usize,
    prep: &[Chunk32],
    x: [&[u8]; R],
) -> [f32; R] {
    assert!(
        Some(prep.len()) == prepared_chunks(simd, ty, k)
            && x.iter()
                .all(|r| Some(r.len()) == GgmlType::Q8_K.bytes_for(k))
    );
    #[cfg(target_arch = "x86_64")]
    {
        let (nb, x) = (k / crate::quant::QK_K, x.map(|r| r.as_ptr()));
        let p = prep.as_ptr();
        // SAFETY: the lengths were checked above; the family is supported (prepared_chunks).
        unsafe {
            match (ty, simd == Simd::Avx512Vnni) {
                (GgmlType::Q6_K, true) => avx2::dot_k6_prepared_vnni(nb, p.cast(), x),
                (GgmlType::Q6_K, false) => avx2::dot_k6_prepared(nb, p.cast(), x),
                (_, true) => avx2::dot_k4_prepared_vnni(nb, p.cast(), x),
                (_, false) => avx2::dot_k4_prepared(nb, p.cast(), x),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no prepared form off x86_64")
}
