//! LayerNorm, BatchNorm (train and eval) and row L2 normalisation.
//!
//! Statistics are computed in `F` with two passes (mean, then the mean of squared deviations), each a sum in an order
//! fixed by the shape (lane-wise for LayerNorm's rows, sequential for a BatchNorm channel); rows, channels or planes
//! run in parallel, so results do not depend on the thread count.

use rayon::prelude::*;

use super::simd::{self, multiversion};
use crate::backend::{BatchNorm, Float};
use crate::error::{check_len, Error, Result};

/// Rows per task of LayerNorm. Fixed (never derived from the thread count): the backward's column sums are formed per
/// block of this many rows, so the block size is part of the summation order.
const ROW_BLOCK: usize = 32;

/// Mean and biased variance of `values`, two-pass.
fn mean_var<F: Float>(values: impl Iterator<Item = F> + Clone, count: usize) -> (F, F) {
    let n = F::of_f64(count as f64);
    let mean = values.clone().fold(F::zero(), |s, v| s + v) / n;
    let var = values.fold(F::zero(), |s, v| s + (v - mean) * (v - mean)) / n;
    (mean, var)
}

multiversion! {
    /// LayerNorm of `ROW_BLOCK` (or fewer) rows; see [`layernorm_forward`].
    #[allow(clippy::too_many_arguments)]
    fn layernorm_rows<F: Float>(
        x: &[F],
        gamma: &[F],
        beta: &[F],
        y: &mut [F],
        mean: &mut [F],
        rstd: &mut [F],
        cols: usize,
        eps: F,
    ) {
        let n = F::of_f64(cols as f64);
        for (((x, y), mean), rstd) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)).zip(mean).zip(rstd) {
            // Two passes: the mean, then the mean squared deviation (each a lane-wise sum).
            let mu = simd::sum(x) / n;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x - mu;
            }
            let r = F::one() / (simd::dot(y, y) / n + eps).sqrt();
            for ((y, &g), &b) in y.iter_mut().zip(gamma).zip(beta) {
                *y = *y * r * g + b;
            }
            (*mean, *rstd) = (mu, r);
        }
    }
}

/// LayerNorm over the last axis of `x [rows, cols]`: `y = (x − mean)·rstd·gamma + beta` with
/// `rstd = 1/√(var + eps)`, biased variance; saves `mean [rows]` and `rstd [rows]`.
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
    const OP: &str = "layernorm_forward";
    check_len(OP, "x", x.len(), rows * cols)?;
    check_len(OP, "gamma", gamma.len(), cols)?;
    check_len(OP, "beta", beta.len(), cols)?;
    check_len(OP, "y", y.len(), rows * cols)?;
    check_len(OP, "mean", mean.len(), rows)?;
    check_len(OP, "rstd", rstd.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        return Err(Error::Invalid { op: OP, msg: "rows of 0 columns have no mean".into() });
    }
    let eps = F::of_f64(eps);
    let block = ROW_BLOCK * cols;
    (x.par_chunks(block), y.par_chunks_mut(block), mean.par_chunks_mut(ROW_BLOCK), rstd.par_chunks_mut(ROW_BLOCK))
        .into_par_iter()
        .for_each(|(x, y, mean, rstd)| layernorm_rows(x, gamma, beta, y, mean, rstd, cols, eps));
    Ok(())
}

multiversion! {
    /// LayerNorm backward of `ROW_BLOCK` (or fewer) rows: writes their `dx` and their partial column sums
    /// `partial = [Σ dy·x̂ (cols) | Σ dy (cols) | scratch (cols)]`, rows added in order.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward_rows<F: Float>(
        dy: &[F],
        x: &[F],
        gamma: &[F],
        mean: &[F],
        rstd: &[F],
        dx: &mut [F],
        partial: &mut [F],
        cols: usize,
    ) {
        let n = F::of_f64(cols as f64);
        let (sum_gamma, rest) = partial.split_at_mut(cols);
        let (sum_beta, g) = rest.split_at_mut(cols);
        sum_gamma.fill(F::zero());
        sum_beta.fill(F::zero());
        let rows = dy.chunks_exact(cols).zip(x.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols));
        for (((dy, x), dx), (&mu, &r)) in rows.zip(mean.iter().zip(rstd)) {
            // dx holds x̂ first, then the gradient; g = dy·gamma.
            for ((((xh, &x), &dy), (sg, sb)), (g, &gamma)) in dx
                .iter_mut()
                .zip(x)
                .zip(dy)
                .zip(sum_gamma.iter_mut().zip(sum_beta.iter_mut()))
                .zip(g.iter_mut().zip(gamma))
            {
                *xh = (x - mu) * r;
                *sg = dy.mul_add(*xh, *sg);
                *sb += dy;
                *g = dy * gamma;
            }
            let mean_g = simd::sum(g) / n;
            let mean_gx = simd::dot(g, dx) / n;
            for (dx, &g) in dx.iter_mut().zip(&*g) {
                *dx = r * (g - mean_g - *dx * mean_gx);
            }
        }
    }
}

/// With `x̂ = (x − mean)·rstd` and `g = dy·gamma`: `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` per row (overwritten),
/// `dgamma += Σ_rows dy·x̂`, `dbeta += Σ_rows dy`. The column sums are formed per block of ROW_BLOCK rows (rows in
/// order) and the blocks' sums added in block order: the same bits whatever the thread count.
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
    const OP: &str = "layernorm_backward";
    check_len(OP, "dy", dy.len(), rows * cols)?;
    check_len(OP, "x", x.len(), rows * cols)?;
    check_len(OP, "gamma", gamma.len(), cols)?;
    check_len(OP, "mean", mean.len(), rows)?;
    check_len(OP, "rstd", rstd.len(), rows)?;
    check_len(OP, "dx", dx.len(), rows * cols)?;
    check_len(OP, "dgamma", dgamma.len(), cols)?;
    check_len(OP, "dbeta", dbeta.len(), cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let block = ROW_BLOCK * cols;
    let mut partials = vec![F::zero(); rows.div_ceil(ROW_BLOCK) * 3 * cols];
    (
        dy.par_chunks(block),
        x.par_chunks(block),
        mean.par_chunks(ROW_BLOCK),
        rstd.par_chunks(ROW_BLOCK),
        dx.par_chunks_mut(block),
        partials.par_chunks_mut(3 * cols),
    )
        .into_par_iter()
        .for_each(|(dy, x, mean, rstd, dx, partial)| {
            layernorm_backward_rows(dy, x, gamma, mean, rstd, dx, partial, cols)
        });
    add_partials(&partials, dgamma, dbeta);
    Ok(())
}

/// `dgamma += Σ_blocks partial[..cols]`, `dbeta += Σ_blocks partial[cols..2·cols]`, blocks in order: each total is formed
/// first and then added, so accumulating gives `old + (the sum)`.
fn add_partials<F: Float>(partials: &[F], dgamma: &mut [F], dbeta: &mut [F]) {
    let cols = dgamma.len();
    let mut total = vec![F::zero(); 2 * cols];
    for partial in partials.chunks_exact(3 * cols) {
        total.iter_mut().zip(partial).for_each(|(t, &p)| *t += p);
    }
    dgamma.iter_mut().zip(&total[..cols]).for_each(|(d, &t)| *d += t);
    dbeta.iter_mut().zip(&total[cols..]).for_each(|(d, &t)| *d += t);
}

/// Checks the lengths shared by the BatchNorm functions; `None` parameters (affine=False) are not checked.
fn check_batchnorm<F: Float>(
    op: &'static str,
    spec: &BatchNorm,
    x: &[F],
    gamma: Option<&[F]>,
    beta: Option<&[F]>,
) -> Result<()> {
    check_len(op, "x", x.len(), spec.len())?;
    if let Some(gamma) = gamma {
        check_len(op, "gamma", gamma.len(), spec.channels)?;
    }
    if let Some(beta) = beta {
        check_len(op, "beta", beta.len(), spec.channels)?;
    }
    if spec.channels > 0 && spec.n * spec.spatial == 0 {
        return Err(Error::Invalid {
            op,
            msg: format!("no values per channel (n = {}, spatial = {})", spec.n, spec.spatial),
        });
    }
    Ok(())
}

/// The values of channel `c` of `x [n, channels, spatial]`, image after image.
fn channel<'a, F: Float>(spec: &'a BatchNorm, x: &'a [F], c: usize) -> impl Iterator<Item = F> + Clone + 'a {
    let plane = spec.channels * spec.spatial;
    (0..spec.n).flat_map(move |i| x[i * plane + c * spec.spatial..][..spec.spatial].iter().copied())
}

/// `y = (x − mean[c])·rstd[c]·gamma[c] + beta[c]` over the `[spatial]` planes of `x [n, channels, spatial]`, in
/// parallel; `gamma` 1 and `beta` 0 when absent.
fn normalise<F: Float>(
    spec: &BatchNorm,
    x: &[F],
    gamma: Option<&[F]>,
    beta: Option<&[F]>,
    mean: &[F],
    rstd: &[F],
    y: &mut [F],
) {
    if y.is_empty() {
        return;
    }
    (y.par_chunks_mut(spec.spatial), x.par_chunks(spec.spatial)).into_par_iter().enumerate().for_each(
        |(plane, (y, x))| {
            let c = plane % spec.channels;
            let scale = rstd[c] * gamma.map_or(F::one(), |g| g[c]);
            let shift = beta.map_or(F::zero(), |b| b[c]);
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x - mean[c]) * scale + shift;
            }
        },
    );
}

/// BatchNorm in training mode: normalises each channel with its batch mean and biased variance over
/// `n·spatial` values, saves `mean` and `rstd = 1/√(var + eps)`, and updates the running statistics as PyTorch does:
/// `running = (1 − momentum)·running + momentum·stat`, the variance unbiased (`var·count/(count − 1)`). With one value
/// per channel the unbiased variance is undefined (PyTorch refuses to train then); the biased one (0) is used instead.
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
    const OP: &str = "batchnorm_forward_train";
    check_batchnorm(OP, spec, x, gamma, beta)?;
    check_len(OP, "y", y.len(), spec.len())?;
    check_len(OP, "save_mean", save_mean.len(), spec.channels)?;
    check_len(OP, "save_rstd", save_rstd.len(), spec.channels)?;
    check_len(OP, "running_mean", running_mean.len(), spec.channels)?;
    check_len(OP, "running_var", running_var.len(), spec.channels)?;
    let count = spec.n * spec.spatial;
    let unbias = if count > 1 { count as f64 / (count - 1) as f64 } else { 1.0 };
    let (eps, momentum, unbias) = (F::of_f64(spec.eps), F::of_f64(spec.momentum), F::of_f64(unbias));
    (&mut *save_mean, &mut *save_rstd, running_mean, running_var).into_par_iter().enumerate().for_each(
        |(c, (mean, rstd, running_mean, running_var))| {
            let (mu, var) = mean_var(channel(spec, x, c), count);
            (*mean, *rstd) = (mu, F::one() / (var + eps).sqrt());
            *running_mean = (F::one() - momentum) * *running_mean + momentum * mu;
            *running_var = (F::one() - momentum) * *running_var + momentum * var * unbias;
        },
    );
    normalise(spec, x, gamma, beta, save_mean, save_rstd, y);
    Ok(())
}

/// BatchNorm in evaluation mode: `y = (x − running_mean)/√(running_var + eps)·gamma + beta`.
pub fn batchnorm_forward_eval<F: Float>(
    spec: &BatchNorm,
    x: &[F],
    gamma: Option<&[F]>,
    beta: Option<&[F]>,
    running_mean: &[F],
    running_var: &[F],
    y: &mut [F],
) -> Result<()> {
    const OP: &str = "batchnorm_forward_eval";
    check_batchnorm(OP, spec, x, gamma, beta)?;
    check_len(OP, "running_mean", running_mean.len(), spec.channels)?;
    check_len(OP, "running_var", running_var.len(), spec.channels)?;
    check_len(OP, "y", y.len(), spec.len())?;
    let eps = F::of_f64(spec.eps);
    let rstd: Vec<F> = running_var.iter().map(|&v| F::one() / (v + eps).sqrt()).collect();
    normalise(spec, x, gamma, beta, running_mean, &rstd, y);
    Ok(())
}

/// Backward of the training-mode forward. Per channel, with `x̂ = (x − mean)·rstd`, `g = dy·gamma` and means over the
/// `n·spatial` values: `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` (overwritten), `dgamma += Σ dy·x̂`, `dbeta += Σ dy`.
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
    const OP: &str = "batchnorm_backward";
    check_batchnorm(OP, spec, x, gamma, None)?;
    check_len(OP, "dy", dy.len(), spec.len())?;
    check_len(OP, "save_mean", save_mean.len(), spec.channels)?;
    check_len(OP, "save_rstd", save_rstd.len(), spec.channels)?;
    check_len(OP, "dx", dx.len(), spec.len())?;
    if let Some(dgamma) = &dgamma {
        check_len(OP, "dgamma", dgamma.len(), spec.channels)?;
    }
    if let Some(dbeta) = &dbeta {
        check_len(OP, "dbeta", dbeta.len(), spec.channels)?;
    }
    // Per channel: Σ dy and Σ dy·x̂, each summed image after image.
    let sums: Vec<(F, F)> = (0..spec.channels)
        .into_par_iter()
        .map(|c| {
            let (mu, r) = (save_mean[c], save_rstd[c]);
            channel(spec, dy, c)
                .zip(channel(spec, x, c))
                .fold((F::zero(), F::zero()), |(s, sx), (dy, x)| (s + dy, sx + dy * (x - mu) * r))
        })
        .collect();
    let count = F::of_f64((spec.n * spec.spatial) as f64);
    if !dx.is_empty() {
        (dx.par_chunks_mut(spec.spatial), dy.par_chunks(spec.spatial), x.par_chunks(spec.spatial))
            .into_par_iter()
            .enumerate()
            .for_each(|(plane, (dx, dy, x))| {
                let c = plane % spec.channels;
                let (mu, r, g) = (save_mean[c], save_rstd[c], gamma.map_or(F::one(), |g| g[c]));
                let (mean_g, mean_gx) = (g * sums[c].0 / count, g * sums[c].1 / count);
                for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                    *dx = r * (g * dy - mean_g - (x - mu) * r * mean_gx);
                }
            });
    }
    if let Some(dgamma) = dgamma {
        dgamma.iter_mut().zip(&sums).for_each(|(d, s)| *d += s.1);
    }
    if let Some(dbeta) = dbeta {
        dbeta.iter_mut().zip(&sums).for_each(|(d, s)| *d += s.0);
    }
    Ok(())
}

/// Below this norm a row is divided by it instead (`F.normalize`'s eps).
const L2_EPS: f64 = 1e-12;

/// `y = x / max(‖x‖, 1e-12)` per row of `x [rows, cols]`; saves the unclamped norms `[rows]`.
pub fn l2norm_forward<F: Float>(x: &[F], y: &mut [F], norms: &mut [F], rows: usize, cols: usize) -> Result<()> {
    check_len("l2norm_forward", "x", x.len(), rows * cols)?;
    check_len("l2norm_forward", "y", y.len(), rows * cols)?;
    check_len("l2norm_forward", "norms", norms.len(), rows)?;
    if cols == 0 {
        norms.fill(F::zero());
        return Ok(());
    }
    (x.par_chunks(cols), y.par_chunks_mut(cols), norms).into_par_iter().for_each(|(x, y, norm)| {
        *norm = x.iter().fold(F::zero(), |s, &v| s + v * v).sqrt();
        let d = norm.max(F::of_f64(L2_EPS));
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = x / d);
    });
    Ok(())
}

/// `dx = (dy − y·⟨dy, y⟩) / ‖x‖` per row (overwritten); where the norm was clamped (`‖x‖ < 1e-12`, so that
/// `y = x/1e-12`) the map is linear and `dx = dy / 1e-12`.
pub fn l2norm_backward<F: Float>(dy: &[F], y: &[F], norms: &[F], dx: &mut [F], rows: usize, cols: usize) -> Result<()> {
    check_len("l2norm_backward", "dy", dy.len(), rows * cols)?;
    check_len("l2norm_backward", "y", y.len(), rows * cols)?;
    check_len("l2norm_backward", "norms", norms.len(), rows)?;
    check_len("l2norm_backward", "dx", dx.len(), rows * cols)?;
    if cols == 0 {
        return Ok(());
    }
    let eps = F::of_f64(L2_EPS);
    (dx.par_chunks_mut(cols), dy.par_chunks(cols), y.par_chunks(cols), norms).into_par_iter().for_each(
        |(dx, dy, y, &norm)| {
            if norm < eps {
                dx.iter_mut().zip(dy).for_each(|(dx, &dy)| *dx = dy / eps);
            } else {
                let dot = dy.iter().zip(y).fold(F::zero(), |s, (&dy, &y)| s + dy * y);
                for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
                    *dx = (dy - y * dot) / norm;
                }
            }
        },
    );
    Ok(())
}
