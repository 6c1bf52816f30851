//! Cross-entropy (ignore index, label smoothing) and the CLIP contrastive loss (materialised reference).

use rayon::prelude::*;

use super::matmul::gemm_single;
use super::simd::{self, multiversion};
use crate::backend::{ClipLoss, Float};
use crate::error::{check_len, Error, Result};

/// `F.normalize`'s floor on the norm.
const NORM_EPS: f64 = 1e-12;

multiversion! {
    /// `ln Σ exp(v)` with the maximum subtracted first, so no term overflows; `−∞` for no values (or all `−∞`).
    fn log_sum_exp<F: Float>(values: &[F]) -> F {
        let max = values.iter().fold(F::neg_infinity(), |m, &v| m.max(v));
        if max == F::neg_infinity() {
            return max;
        }
        let mut total = F::zero();
        for &v in values {
            total += simd::exp(v - max);
        }
        max + total.ln()
    }
}

multiversion! {
    /// `d_j = scale·(e^{x_j − lse} − target_j)` for one row, `target_j = on` at `t`, `off` elsewhere.
    fn softmax_minus_target<F: Float>(x: &[F], lse: F, t: usize, on: F, off: F, scale: F, d: &mut [F]) {
        for (j, (d, &x)) in d.iter_mut().zip(x).enumerate() {
            let target = if j == t { on } else { off };
            *d = scale * (simd::exp(x - lse) - target);
        }
    }
}

fn check_smoothing(op: &'static str, label_smoothing: f64) -> Result<()> {
    if (0.0..=1.0).contains(&label_smoothing) {
        Ok(())
    } else {
        Err(Error::Invalid { op, msg: format!("label_smoothing {label_smoothing} is outside [0, 1]") })
    }
}

/// Every target is `ignore_index` or a class in `0..classes`; the error names the first that is neither.
fn check_targets(op: &'static str, targets: &[i32], classes: usize, ignore_index: i32) -> Result<()> {
    let bad = targets.iter().position(|&t| t != ignore_index && (t < 0 || t as usize >= classes));
    match bad {
        None => Ok(()),
        Some(row) => Err(Error::Invalid {
            op,
            msg: format!(
                "target {} of row {row} is outside 0..{classes} and is not ignore_index {ignore_index}",
                targets[row]
            ),
        }),
    }
}

/// Per-row cross-entropy of `logits [rows, classes]` against `targets [rows]` with PyTorch's label smoothing:
/// `loss = (1−ε)·(lse − x_t) + ε·(lse − mean_j x_j)`; rows whose target is `ignore_index` get loss 0. Saves the row
/// log-sum-exp `lse [rows]` (ignored rows included).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_forward<F: Float>(
    logits: &[F],
    targets: &[i32],
    losses: &mut [F],
    lse: &mut [F],
    rows: usize,
    classes: usize,
    ignore_index: i32,
    label_smoothing: f64,
) -> Result<()> {
    const OP: &str = "cross_entropy_forward";
    check_len(OP, "logits", logits.len(), rows * classes)?;
    check_len(OP, "targets", targets.len(), rows)?;
    check_len(OP, "losses", losses.len(), rows)?;
    check_len(OP, "lse", lse.len(), rows)?;
    check_smoothing(OP, label_smoothing)?;
    check_targets(OP, targets, classes, ignore_index)?;
    if rows == 0 {
        return Ok(());
    }
    if classes == 0 {
        return Err(Error::Invalid { op: OP, msg: "no classes".into() });
    }
    let eps = F::of_f64(label_smoothing);
    let inv_classes = F::of_f64(1.0 / classes as f64);
    losses.par_iter_mut().zip(lse.par_iter_mut()).zip(logits.par_chunks(classes)).zip(targets.par_iter()).for_each(
        |(((loss, lse), x), &t)| {
            let l = log_sum_exp(x);
            *lse = l;
            *loss = if t == ignore_index {
                F::zero()
            } else {
                let mean = x.iter().copied().sum::<F>() * inv_classes;
                (F::one() - eps) * (l - x[t as usize]) + eps * (l - mean)
            };
        },
    );
    Ok(())
}

/// `dlogits = grad_scale·(softmax − ((1−ε)·onehot + ε/classes))`, zero on ignored rows; the softmax is rebuilt from
/// the saved `lse`.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward<F: Float>(
    logits: &[F],
    targets: &[i32],
    lse: &[F],
    dlogits: &mut [F],
    rows: usize,
    classes: usize,
    ignore_index: i32,
    label_smoothing: f64,
    grad_scale: f64,
) -> Result<()> {
    const OP: &str = "cross_entropy_backward";
    check_len(OP, "logits", logits.len(), rows * classes)?;
    check_len(OP, "targets", targets.len(), rows)?;
    check_len(OP, "lse", lse.len(), rows)?;
    check_len(OP, "dlogits", dlogits.len(), rows * classes)?;
    check_smoothing(OP, label_smoothing)?;
    check_targets(OP, targets, classes, ignore_index)?;
    if rows == 0 {
        return Ok(());
    }
    if classes == 0 {
        return Err(Error::Invalid { op: OP, msg: "no classes".into() });
    }
    let scale = F::of_f64(grad_scale);
    let off = F::of_f64(label_smoothing / classes as f64);
    let on = F::of_f64(1.0 - label_smoothing) + off;
    dlogits
        .par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(lse.par_iter())
        .zip(targets.par_iter())
        .for_each(|(((d, x), &l), &t)| {
            if t == ignore_index {
                d.fill(F::zero());
                return;
            }
            softmax_minus_target(x, l, t as usize, on, off, scale, d);
        });
    Ok(())
}

/// `saved = [row lse (n), column lse (n), image norms (n), text norms (n)]`: O(n), never the n×n logits.
pub fn clip_loss_saved_len(spec: &ClipLoss) -> usize {
    4 * spec.n
}

/// Shape checks shared by the CLIP loss forward and backward.
fn check_clip<F: Float>(op: &'static str, spec: &ClipLoss, image: &[F], text: &[F], log_scale: &[F]) -> Result<()> {
    if spec.n == 0 || spec.dim == 0 {
        return Err(Error::Invalid { op, msg: format!("empty batch: n = {}, dim = {}", spec.n, spec.dim) });
    }
    check_len(op, "image", image.len(), spec.n * spec.dim)?;
    check_len(op, "text", text.len(), spec.n * spec.dim)?;
    check_len(op, "log_scale", log_scale.len(), 1)?;
    check_smoothing(op, spec.label_smoothing)
}

/// `‖x_i‖` for each row of `x [n, dim]` (unclamped).
fn row_norms<F: Float>(x: &[F], dim: usize) -> Vec<F> {
    x.par_chunks(dim).map(|row| row.iter().map(|&v| v * v).sum::<F>().sqrt()).collect()
}

/// `x̂_i = x_i / max(‖x_i‖, 1e-12)` (`F.normalize`).
fn normalize_rows<F: Float>(x: &[F], norms: &[F], dim: usize) -> Vec<F> {
    let eps = F::of_f64(NORM_EPS);
    let mut out = vec![F::zero(); x.len()];
    out.par_chunks_mut(dim).zip(x.par_chunks(dim)).zip(norms.par_iter()).for_each(|((out, x), &norm)| {
        let norm = norm.max(eps);
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v / norm;
        }
    });
    out
}

/// `dx = (dx̂ − x̂·⟨dx̂, x̂⟩)/‖x‖` for one row, or `dx̂/eps` where `F.normalize` clamped the norm (the division is then
/// by a constant).
fn normalize_backward_row<F: Float>(dxh: &[F], xh: &[F], norm: F, dx: &mut [F]) {
    let eps = F::of_f64(NORM_EPS);
    if norm > eps {
        let inner: F = dxh.iter().zip(xh).map(|(&a, &b)| a * b).sum();
        for ((dx, &g), &y) in dx.iter_mut().zip(dxh).zip(xh) {
            *dx = (g - y * inner) / norm;
        }
    } else {
        for (dx, &g) in dx.iter_mut().zip(dxh) {
            *dx = g / eps;
        }
    }
}

/// `Λ = s·Î·T̂ᵀ` as a row-major `n×n` matrix (one GEMM).
fn clip_logits<F: Float>(image_hat: &[F], text_hat: &[F], n: usize, dim: usize, s: F) -> Vec<F> {
    let mut logits = vec![F::zero(); n * n];
    gemm_single(n, n, dim, image_hat, false, text_hat, true, &mut logits, s, F::zero());
    logits
}

/// The `n×n` transpose of `m` (the column statistics are then row statistics, read contiguously).
fn transposed<F: Float>(m: &[F], n: usize) -> Vec<F> {
    let mut t = vec![F::zero(); n * n];
    t.par_chunks_mut(n).enumerate().for_each(|(j, row)| {
        for (i, t) in row.iter_mut().enumerate() {
            *t = m[i * n + j];
        }
    });
    t
}

/// SPEC §1.1: `L = ½[CE_rows(Λ) + CE_rows(Λᵀ)]`, `Λ = exp(t)·Î·T̂ᵀ`, diagonal targets smoothed to `(1−ε)·onehot + ε/n`.
/// Writes `loss [1]` and `saved [4n]` (see [`clip_loss_saved_len`]).
pub fn clip_loss_forward<F: Float>(
    spec: &ClipLoss,
    image: &[F],
    text: &[F],
    log_scale: &[F],
    loss: &mut [F],
    saved: &mut [F],
) -> Result<()> {
    const OP: &str = "clip_loss_forward";
    check_clip(OP, spec, image, text, log_scale)?;
    check_len(OP, "loss", loss.len(), 1)?;
    check_len(OP, "saved", saved.len(), clip_loss_saved_len(spec))?;
    let (n, dim) = (spec.n, spec.dim);
    let s = log_scale[0].exp();
    let image_norms = row_norms(image, dim);
    let text_norms = row_norms(text, dim);
    let logits =
        clip_logits(&normalize_rows(image, &image_norms, dim), &normalize_rows(text, &text_norms, dim), n, dim, s);

    // (lse, mean) of each row (image → text) and each column (text → image).
    let inv_n = F::of_f64(1.0 / n as f64);
    let row_stats: Vec<(F, F)> =
        logits.par_chunks(n).map(|row| (log_sum_exp(row), row.iter().copied().sum::<F>() * inv_n)).collect();
    let col_stats: Vec<(F, F)> = transposed(&logits, n)
        .par_chunks(n)
        .map(|column| (log_sum_exp(column), column.iter().copied().sum::<F>() * inv_n))
        .collect();

    // Smoothed CE of row i: (1−ε)(lse − Λ_ii) + ε(lse − mean); likewise of column i. Summed in order.
    let eps = F::of_f64(spec.label_smoothing);
    let ce = |(lse, mean): (F, F), diag: F| (F::one() - eps) * (lse - diag) + eps * (lse - mean);
    let mut rows_total = F::zero();
    let mut cols_total = F::zero();
    for i in 0..n {
        rows_total += ce(row_stats[i], logits[i * n + i]);
        cols_total += ce(col_stats[i], logits[i * n + i]);
    }
    loss[0] = F::of_f64(0.5) * (rows_total + cols_total) * inv_n;

    let (row_lse, rest) = saved.split_at_mut(n);
    let (col_lse, rest) = rest.split_at_mut(n);
    let (saved_image_norms, saved_text_norms) = rest.split_at_mut(n);
    for i in 0..n {
        row_lse[i] = row_stats[i].0;
        col_lse[i] = col_stats[i].0;
    }
    saved_image_norms.copy_from_slice(&image_norms);
    saved_text_norms.copy_from_slice(&text_norms);
    Ok(())
}

multiversion! {
    /// Row i of `G = scale·(P + Q − 2·Y)`: `g_j = scale·(e^{Λ_ij − row_lse_i} + e^{Λ_ij − col_lse_j} − 2·y_ij)` with
    /// `y_ij = on` on the diagonal, `off` elsewhere (`consts = [on, off, 2, scale]`).
    fn clip_grad_row<F: Float>(l: &[F], row_lse: F, col_lse: &[F], i: usize, consts: [F; 4], g: &mut [F]) {
        let [on, off, two, scale] = consts;
        for (j, ((g, &l), &col_lse)) in g.iter_mut().zip(l).zip(col_lse).enumerate() {
            let target = if i == j { on } else { off };
            *g = scale * (simd::exp(l - row_lse) + simd::exp(l - col_lse) - two * target);
        }
    }
}

/// Gradients of `dloss·L`: `dimage`, `dtext` overwritten, `dlog_scale` accumulated.
///
/// `dΛ = (P + Q − Y_r − Y_c)/(2n)` with P the row softmax and Q the column softmax (rebuilt from the saved
/// log-sum-exps) and `Y_r = Y_c = (1−ε)·I + ε/n`; then `dÎ = s·dΛ·T̂`, `dT̂ = s·dΛᵀ·Î`, back through each L2
/// normalisation, and `dt = Σ_ij dΛ_ij·Λ_ij` (as `∂Λ/∂t = Λ`).
#[allow(clippy::too_many_arguments)]
pub fn clip_loss_backward<F: Float>(
    spec: &ClipLoss,
    image: &[F],
    text: &[F],
    log_scale: &[F],
    saved: &[F],
    dloss: f64,
    dimage: &mut [F],
    dtext: &mut [F],
    dlog_scale: &mut [F],
) -> Result<()> {
    const OP: &str = "clip_loss_backward";
    check_clip(OP, spec, image, text, log_scale)?;
    check_len(OP, "saved", saved.len(), clip_loss_saved_len(spec))?;
    check_len(OP, "dimage", dimage.len(), spec.n * spec.dim)?;
    check_len(OP, "dtext", dtext.len(), spec.n * spec.dim)?;
    check_len(OP, "dlog_scale", dlog_scale.len(), 1)?;
    let (n, dim) = (spec.n, spec.dim);
    let (row_lse, rest) = saved.split_at(n);
    let (col_lse, rest) = rest.split_at(n);
    let (image_norms, text_norms) = rest.split_at(n);
    let s = log_scale[0].exp();
    let image_hat = normalize_rows(image, image_norms, dim);
    let text_hat = normalize_rows(text, text_norms, dim);
    let logits = clip_logits(&image_hat, &text_hat, n, dim, s);

    // G = dloss·dΛ, row by row.
    let scale = F::of_f64(dloss / (2.0 * n as f64));
    let off = F::of_f64(spec.label_smoothing / n as f64);
    let on = F::of_f64(1.0 - spec.label_smoothing) + off;
    let two = F::of_f64(2.0);
    let mut grad = vec![F::zero(); n * n];
    grad.par_chunks_mut(n).zip(logits.par_chunks(n)).enumerate().for_each(|(i, (g, l))| {
        clip_grad_row(l, row_lse[i], col_lse, i, [on, off, two, scale], g);
    });

    // dt: per-row partial sums, then added in row order (the same bits whatever the thread count).
    let partials: Vec<F> = grad
        .par_chunks(n)
        .zip(logits.par_chunks(n))
        .map(|(g, l)| g.iter().zip(l).map(|(&g, &l)| g * l).sum())
        .collect();
    dlog_scale[0] += partials.iter().copied().sum::<F>();

    // dÎ = s·G·T̂ and dT̂ = s·Gᵀ·Î (two GEMMs), then back through each row's normalisation.
    let mut d_image_hat = vec![F::zero(); n * dim];
    gemm_single(n, dim, n, &grad, false, &text_hat, false, &mut d_image_hat, s, F::zero());
    let mut d_text_hat = vec![F::zero(); n * dim];
    gemm_single(n, dim, n, &grad, true, &image_hat, false, &mut d_text_hat, s, F::zero());
    for (dx, dxh, xh, norms) in
        [(dimage, &d_image_hat, &image_hat, image_norms), (dtext, &d_text_hat, &text_hat, text_norms)]
    {
        dx.par_chunks_mut(dim)
            .zip(dxh.par_chunks(dim))
            .zip(xh.par_chunks(dim))
            .zip(norms.par_iter())
            .for_each(|(((dx, dxh), xh), &norm)| normalize_backward_row(dxh, xh, norm, dx));
    }
    Ok(())
}
