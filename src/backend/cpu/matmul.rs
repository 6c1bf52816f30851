//! Matrix products through the `gemm` crate, row-vector broadcast and its backward (row sums).

use crate::backend::{Float, Gemm};
use crate::error::Result;

pub fn gemm<F: Float>(spec: &Gemm, a: &[F], b: &[F], c: &mut [F]) -> Result<()> {
    todo!()
}
pub fn add_row_vector<F: Float>(y: &mut [F], v: &[F], rows: usize, cols: usize) -> Result<()> {
    todo!()
}
pub fn sum_rows<F: Float>(x: &[F], out: &mut [F], rows: usize, cols: usize, accumulate: bool) -> Result<()> {
    todo!()
}
