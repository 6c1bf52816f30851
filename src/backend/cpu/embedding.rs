//! Embedding lookup with scatter-add backward, and token gathering (class / EOT pooling).

use crate::backend::Float;
use crate::error::Result;

pub fn forward<F: Float>(ids: &[i32], table: &[F], out: &mut [F], vocab: usize, dim: usize) -> Result<()> {
    todo!()
}
pub fn backward<F: Float>(ids: &[i32], dout: &[F], dtable: &mut [F], vocab: usize, dim: usize) -> Result<()> {
    todo!()
}
pub fn gather_tokens<F: Float>(
    x: &[F],
    index: &[i32],
    y: &mut [F],
    batch: usize,
    seq: usize,
    dim: usize,
) -> Result<()> {
    todo!()
}
pub fn gather_tokens_backward<F: Float>(
    dy: &[F],
    index: &[i32],
    dx: &mut [F],
    batch: usize,
    seq: usize,
    dim: usize,
) -> Result<()> {
    todo!()
}
