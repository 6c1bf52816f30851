//! Element-wise nonlinearities (ReLU, exact GELU, QuickGELU) and the row softmax.

use crate::backend::{Activation, Float};
use crate::error::Result;

pub fn forward<F: Float>(kind: Activation, x: &[F], y: &mut [F]) -> Result<()> {
    todo!()
}
pub fn backward<F: Float>(kind: Activation, x: &[F], dy: &[F], dx: &mut [F]) -> Result<()> {
    todo!()
}
pub fn softmax_forward<F: Float>(x: &[F], y: &mut [F], rows: usize, cols: usize) -> Result<()> {
    todo!()
}
pub fn softmax_backward<F: Float>(y: &[F], dy: &[F], dx: &mut [F], rows: usize, cols: usize) -> Result<()> {
    todo!()
}
