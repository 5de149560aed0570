//! (placeholder until the kernels branch lands)
use super::{GgmlType, QuantError};
pub fn dequantize_row(_ty: GgmlType, _src: &[u8], _dst: &mut [f32]) -> Result<(), QuantError> {
    unimplemented!()
}
pub fn quantize_row(_ty: GgmlType, _src: &[f32], _dst: &mut [u8]) -> Result<(), QuantError> {
    unimplemented!()
}
