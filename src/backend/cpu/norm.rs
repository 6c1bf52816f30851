//! LayerNorm, BatchNorm (train and eval) and row L2 normalisation.

use crate::backend::{BatchNorm, Float};
use crate::error::Result;

#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<F: Float>(
    x: &[F],
    gamma: &[F],
    beta: &[F],
    y: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    rows: usize,
    cols: usize,
    eps: f64,
) -> Result<()> {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<F: Float>(
    dy: &[F],
    x: &[F],
    gamma: &[F],
    mean: &[F],
    rstd: &[F],
    dx: &mut [F],
    dgamma: &mut [F],
    dbeta: &mut [F],
    rows: usize,
    cols: usize,
) -> Result<()> {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train<F: Float>(
    spec: &BatchNorm,
    x: &[F],
    gamma: Option<&[F]>,
    beta: Option<&[F]>,
    y: &mut [F],
    save_mean: &mut [F],
    save_rstd: &mut [F],
    running_mean: &mut [F],
    running_var: &mut [F],
) -> Result<()> {
    todo!()
}
pub fn batchnorm_forward_eval<F: Float>(
    spec: &BatchNorm,
    x: &[F],
    gamma: Option<&[F]>,
    beta: Option<&[F]>,
    running_mean: &[F],
    running_var: &[F],
    y: &mut [F],
) -> Result<()> {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<F: Float>(
    spec: &BatchNorm,
    dy: &[F],
    x: &[F],
    gamma: Option<&[F]>,
    save_mean: &[F],
    save_rstd: &[F],
    dx: &mut [F],
    dgamma: Option<&mut [F]>,
    dbeta: Option<&mut [F]>,
) -> Result<()> {
    todo!()
}
pub fn l2norm_forward<F: Float>(x: &[F], y: &mut [F], norms: &mut [F], rows: usize, cols: usize) -> Result<()> {
    todo!()
}
pub fn l2norm_backward<F: Float>(dy: &[F], y: &[F], norms: &[F], dx: &mut [F], rows: usize, cols: usize) -> Result<()> {
    todo!()
}
