//! GGML tensor element types and their block layouts (ggml-common.h is the reference for the layouts).
//!
//! Every quantized type stores `block_size()` values in `type_size()` bytes; a row of `n` values must be a
//! whole number of blocks.

mod float;
mod k_quants;
mod legacy;
mod row;
#[cfg(target_arch = "x86_64")]
mod simd;

pub use k_quants::*;
pub use legacy::*;
pub use row::{dequantize_row, quantize_row};

pub(crate) use float::f16_at;
pub(crate) use k_quants::{q6_k_values, scales_mins_k4};
pub(crate) use legacy::q5_values;

use thiserror::Error;

/// Whether the activation quantizers may use their AVX2 versions (same bytes as the scalar code).
#[inline]
pub(crate) fn simd_quantizers() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::dot::Simd::detect() >= crate::cpu::dot::Simd::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// GGML's type ids as stored in GGUF tensor infos.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
}

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("tensor type {0} is not supported")]
    Unsupported(GgmlType),
    #[error("{ty}: {n} values are not a whole number of {block}-value blocks")]
    NotBlockAligned {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    #[error("{ty}: {got} bytes of data for {n} values, expected {want}")]
    WrongLength {
        ty: GgmlType,
        n: usize,
        got: usize,
        want: usize,
    },
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl GgmlType {
    pub fn from_u32(v: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match v {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            30 => BF16,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            BF16 => "BF16",
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
        }
    }

    /// Whether Kiln can compute with tensors of this type (dequantize and dot).
    pub fn is_supported(self) -> bool {
        !matches!(self, GgmlType::Q2_K | GgmlType::Q3_K)
    }

    /// Bytes of `n` values, or `None` when `n` is not block-aligned or the size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }
}
