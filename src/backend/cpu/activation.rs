//! Element-wise nonlinearities (ReLU, exact GELU, QuickGELU) and the row softmax.

use rayon::prelude::*;

use super::simd::{self, multiversion};
use crate::backend::{Activation, Float};
use crate::error::{check_len, Result};

/// Elements per rayon task for the element-wise maps (large enough that the split costs nothing).
const CHUNK: usize = 1 << 14;

/// The QuickGELU slope of OpenAI CLIP: `x·σ(1.702x)`.
const QUICK_GELU_ALPHA: f64 = 1.702;

/// `σ(x) = 1/(1 + e^{−x})`, written so that neither branch overflows.
#[inline(always)]
fn sigmoid<F: Float>(x: F) -> F {
    let e = simd::exp(-x.abs());
    let s = F::one() / (F::one() + e);
    if x >= F::zero() {
        s
    } else {
        e * s
    }
}

/// `f(x)`.
#[inline(always)]
fn apply<F: Float>(kind: Activation, x: F) -> F {
    match kind {
        // Written so that a NaN propagates instead of turning into 0.
        Activation::Relu => {
            if x < F::zero() {
                F::zero()
            } else {
                x
            }
        }
        // ½x(1 + erf(x/√2)) = x·Φ(x).
        Activation::Gelu => x * simd::normal_cdf(x),
        Activation::QuickGelu => x * sigmoid(F::of_f64(QUICK_GELU_ALPHA) * x),
    }
}

/// `f'(x)`.
#[inline(always)]
fn derivative<F: Float>(kind: Activation, x: F) -> F {
    match kind {
        // The kink at 0 takes the left derivative, as PyTorch does.
        Activation::Relu => {
            if x > F::zero() {
                F::one()
            } else {
                F::zero()
            }
        }
        // d/dx xΦ(x) = Φ(x) + x·φ(x), φ the standard normal density.
        Activation::Gelu => {
            let pdf = F::of_f64(1.0 / (2.0 * std::f64::consts::PI).sqrt()) * simd::exp(F::of_f64(-0.5) * x * x);
            simd::normal_cdf(x) + x * pdf
        }
        // d/dx xσ(ax) = σ(ax) + a·x·σ(ax)(1 − σ(ax)).
        Activation::QuickGelu => {
            let a = F::of_f64(QUICK_GELU_ALPHA);
            let s = sigmoid(a * x);
            s + a * x * s * (F::one() - s)
        }
    }
}

multiversion! {
    /// `y = f(x)` over one chunk, the kind fixed (a constant after inlining, so the loop vectorises).
    fn forward_chunk<F: Float>(kind: Activation, x: &[F], y: &mut [F]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = apply(kind, x);
        }
    }
}

multiversion! {
    /// `dx = f'(x)·dy` over one chunk.
    fn backward_chunk<F: Float>(kind: Activation, x: &[F], dy: &[F], dx: &mut [F]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            *dx = derivative(kind, x) * dy;
        }
    }
}

/// `y = f(x)`.
pub fn forward<F: Float>(kind: Activation, x: &[F], y: &mut [F]) -> Result<()> {
    check_len("activation_forward", "y", y.len(), x.len())?;
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| match kind {
        Activation::Relu => forward_chunk(Activation::Relu, x, y),
        Activation::Gelu => forward_chunk(Activation::Gelu, x, y),
        Activation::QuickGelu => forward_chunk(Activation::QuickGelu, x, y),
    });
    Ok(())
}

/// `dx = f'(x)·dy`.
pub fn backward<F: Float>(kind: Activation, x: &[F], dy: &[F], dx: &mut [F]) -> Result<()> {
    check_len("activation_backward", "dy", dy.len(), x.len())?;
    check_len("activation_backward", "dx", dx.len(), x.len())?;
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)).for_each(|((dx, x), dy)| match kind {
        Activation::Relu => backward_chunk(Activation::Relu, x, dy, dx),
        Activation::Gelu => backward_chunk(Activation::Gelu, x, dy, dx),
        Activation::QuickGelu => backward_chunk(Activation::QuickGelu, x, dy, dx),
    });
    Ok(())
}

/// Softmax over the last axis of `x [rows, cols]`, with the row maximum subtracted so `exp` never overflows.
pub fn softmax_forward<F: Float>(x: &[F], y: &mut [F], rows: usize, cols: usize) -> Result<()> {
    check_len("softmax_forward", "x", x.len(), rows * cols)?;
    check_len("softmax_forward", "y", y.len(), rows * cols)?;
    if cols == 0 {
        return Ok(());
    }
    y.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(y, x)| {
        let max = x.iter().fold(F::neg_infinity(), |m, &v| m.max(v));
        let mut total = F::zero();
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - max).exp();
            total += *y;
        }
        for y in y.iter_mut() {
            *y /= total;
        }
    });
    Ok(())
}

/// `dx = y ∘ (dy − ⟨dy, y⟩_row)`.
pub fn softmax_backward<F: Float>(y: &[F], dy: &[F], dx: &mut [F], rows: usize, cols: usize) -> Result<()> {
    check_len("softmax_backward", "y", y.len(), rows * cols)?;
    check_len("softmax_backward", "dy", dy.len(), rows * cols)?;
    check_len("softmax_backward", "dx", dx.len(), rows * cols)?;
    if cols == 0 {
        return Ok(());
    }
    dx.par_chunks_mut(cols).zip(y.par_chunks(cols)).zip(dy.par_chunks(cols)).for_each(|((dx, y), dy)| {
        let inner: F = y.iter().zip(dy).map(|(&y, &dy)| y * dy).sum();
        for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
            *dx = y * (dy - inner);
        }
    });
    Ok(())
}
