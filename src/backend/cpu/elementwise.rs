//! Element-wise arithmetic, casts, layout copies and whole-buffer reductions.

use half::{bf16, f16};

use crate::backend::Float;
use crate::error::Result;

pub fn add<F: Float>(a: &[F], b: &[F], out: &mut [F]) -> Result<()> {
    todo!()
}
pub fn axpy<F: Float>(alpha: f64, x: &[F], y: &mut [F]) -> Result<()> {
    todo!()
}
pub fn scale<F: Float>(alpha: f64, y: &mut [F]) -> Result<()> {
    todo!()
}
pub fn cast_to_bf16<F: Float>(x: &[F], y: &mut [bf16]) -> Result<()> {
    todo!()
}
pub fn cast_from_bf16<F: Float>(x: &[bf16], y: &mut [F]) -> Result<()> {
    todo!()
}
pub fn cast_to_f16<F: Float>(x: &[F], y: &mut [f16]) -> Result<()> {
    todo!()
}
pub fn cast_from_f16<F: Float>(x: &[f16], y: &mut [F]) -> Result<()> {
    todo!()
}
pub fn transpose<F: Float>(x: &[F], y: &mut [F], batch: usize, rows: usize, cols: usize) -> Result<()> {
    todo!()
}
pub fn copy_rows<F: Float>(
    src: &[F],
    src_stride: usize,
    dst: &mut [F],
    dst_stride: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    todo!()
}
pub fn sum_squares<F: Float>(x: &[F]) -> f64 {
    todo!()
}
pub fn sum<F: Float>(x: &[F]) -> f64 {
    todo!()
}
