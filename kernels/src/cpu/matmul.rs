//! (placeholder until the kernels branch lands)
use super::pool::ThreadPool;
use crate::quant::{GgmlType, QuantError};
#[allow(clippy::too_many_arguments)]
pub fn matmul(_pool: &ThreadPool, _ty: GgmlType, _w: &[u8], _n_out: usize, _k: usize, _x: &[f32], _n_rows: usize, _y: &mut [f32]) -> Result<(), QuantError> {
    unimplemented!()
}
