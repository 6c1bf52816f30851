//! Convolution (im2col + GEMM) and average pooling over NCHW tensors.

use crate::backend::{Conv2d, Float, Pool2d};
use crate::error::Result;

pub fn conv2d_forward<F: Float>(spec: &Conv2d, x: &[F], w: &[F], y: &mut [F]) -> Result<()> {
    todo!()
}
pub fn conv2d_backward_data<F: Float>(spec: &Conv2d, dy: &[F], w: &[F], dx: &mut [F]) -> Result<()> {
    todo!()
}
pub fn conv2d_backward_filter<F: Float>(spec: &Conv2d, dy: &[F], x: &[F], dw: &mut [F]) -> Result<()> {
    todo!()
}
pub fn avgpool2d_forward<F: Float>(spec: &Pool2d, x: &[F], y: &mut [F]) -> Result<()> {
    todo!()
}
pub fn avgpool2d_backward<F: Float>(spec: &Pool2d, dy: &[F], dx: &mut [F]) -> Result<()> {
    todo!()
}
