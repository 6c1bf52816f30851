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

/// `saved = [row lse (rows), column lse (cols), x norms (rows), y norms (cols)]`: O(rows + cols), never the logits.
pub fn clip_loss_saved_len(spec: &ClipLoss) -> usize {
    2 * (spec.rows + spec.cols)
}

/// Spec and shape checks shared by the CLIP loss forward and backward.
fn check_clip<F: Float>(op: &'static str, spec: &ClipLoss, image: &[F], text: &[F], log_scale: &[F]) -> Result<()> {
    spec.validate(op)?;
    check_len(op, "image", image.len(), spec.rows * spec.dim)?;
    check_len(op, "text", text.len(), spec.cols * spec.dim)?;
    check_len(op, "log_scale", log_scale.len(), 1)
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

/// `Λ = s·X̂·Ŷᵀ` as a row-major `rows×cols` matrix (one GEMM).
fn clip_logits<F: Float>(x_hat: &[F], y_hat: &[F], rows: usize, cols: usize, dim: usize, s: F) -> Vec<F> {
    let mut logits = vec![F::zero(); rows * cols];
    gemm_single(rows, cols, dim, x_hat, false, y_hat, true, &mut logits, s, F::zero());
    logits
}

/// The `cols×rows` transpose of the row-major `rows×cols` `m` (the column statistics are then row statistics, read
/// contiguously).
fn transposed<F: Float>(m: &[F], rows: usize, cols: usize) -> Vec<F> {
    let mut t = vec![F::zero(); rows * cols];
    t.par_chunks_mut(rows).enumerate().for_each(|(j, row)| {
        for (i, t) in row.iter_mut().enumerate() {
            *t = m[i * cols + j];
        }
    });
    t
}

/// The loss of [`ClipLoss`] (SPEC §1.1 generalised): `Λ = exp(t)·X̂·Ŷᵀ`,
/// `L = w_r·mean_i CE(Λ_i·, row_offset + i) + w_c·mean_j CE(Λ_·j, j)` with targets smoothed to
/// `(1−ε)·onehot + ε/classes`. Writes `loss [1]` and `saved` (see [`clip_loss_saved_len`]); the column log-sum-exps
/// are saved whether or not the column term is weighted.
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
    let (rows, cols, off, dim) = (spec.rows, spec.cols, spec.row_offset, spec.dim);
    let s = log_scale[0].exp();
    let image_norms = row_norms(image, dim);
    let text_norms = row_norms(text, dim);
    let logits = clip_logits(
        &normalize_rows(image, &image_norms, dim),
        &normalize_rows(text, &text_norms, dim),
        rows,
        cols,
        dim,
        s,
    );

    // (lse, mean) of each row (over cols) and each column (over rows).
    let inv_cols = F::of_f64(1.0 / cols as f64);
    let inv_rows = F::of_f64(1.0 / rows as f64);
    let row_stats: Vec<(F, F)> =
        logits.par_chunks(cols).map(|row| (log_sum_exp(row), row.iter().copied().sum::<F>() * inv_cols)).collect();
    let col_stats: Vec<(F, F)> = transposed(&logits, rows, cols)
        .par_chunks(rows)
        .map(|column| (log_sum_exp(column), column.iter().copied().sum::<F>() * inv_rows))
        .collect();

    // Smoothed CE: (1−ε)(lse − positive) + ε(lse − mean). Summed in order.
    let eps = F::of_f64(spec.label_smoothing);
    let ce = |(lse, mean): (F, F), positive: F| (F::one() - eps) * (lse - positive) + eps * (lse - mean);
    let mut rows_total = F::zero();
    for (i, &stats) in row_stats.iter().enumerate() {
        rows_total += ce(stats, logits[i * cols + off + i]);
    }
    let mut total = F::of_f64(spec.row_weight) * rows_total * inv_rows;
    if spec.has_col_term() {
        let mut cols_total = F::zero();
        for (j, &stats) in col_stats.iter().enumerate() {
            cols_total += ce(stats, logits[j * cols + j]);
        }
        total += F::of_f64(spec.col_weight) * cols_total * inv_cols;
    }
    loss[0] = total;

    let (row_lse, rest) = saved.split_at_mut(rows);
    let (col_lse, rest) = rest.split_at_mut(cols);
    let (saved_image_norms, saved_text_norms) = rest.split_at_mut(rows);
    for (l, st) in row_lse.iter_mut().zip(&row_stats) {
        *l = st.0;
    }
    for (l, st) in col_lse.iter_mut().zip(&col_stats) {
        *l = st.0;
    }
    saved_image_norms.copy_from_slice(&image_norms);
    saved_text_norms.copy_from_slice(&text_norms);
    Ok(())
}

multiversion! {
    /// Row i of `G = dloss·dΛ`: `g_j = a·(e^{Λ_ij − row_lse_i} − y_r(j)) + b·(e^{Λ_ij − col_lse_j} − y_c(j))` with
    /// `y_r = on` at column `pos_r`, `off_r` elsewhere, and `y_c = on` at column `pos_c` (none when `b = 0`),
    /// `off_c` elsewhere (`consts = [a, on, off_r, b, off_c]`).
    fn clip_grad_row<F: Float>(
        l: &[F],
        row_lse: F,
        col_lse: &[F],
        pos_r: usize,
        pos_c: usize,
        consts: [F; 5],
        g: &mut [F],
    ) {
        let [a, on, off_r, b, off_c] = consts;
        if b == F::zero() {
            for (j, (g, &l)) in g.iter_mut().zip(l).enumerate() {
                let yr = if j == pos_r { on } else { off_r };
                *g = a * (simd::exp(l - row_lse) - yr);
            }
        } else {
            for (j, ((g, &l), &col_lse)) in g.iter_mut().zip(l).zip(col_lse).enumerate() {
                let yr = if j == pos_r { on } else { off_r };
                let yc = if j == pos_c { on } else { off_c };
                *g = a * (simd::exp(l - row_lse) - yr) + b * (simd::exp(l - col_lse) - yc);
            }
        }
    }
}

/// Gradients of `dloss·L`: `dimage` OVERWRITTEN, `dtext` OVERWRITTEN when given (None: the keys carry no gradient
/// and its GEMM is skipped), `dlog_scale` ACCUMULATED.
///
/// `dΛ = w_r/rows·(P − Y_r) + w_c/cols·(Q − Y_c)` with P the row softmax and Q the column softmax (rebuilt from the
/// saved log-sum-exps) and `Y_r`, `Y_c` the smoothed targets; then `dX̂ = s·dΛ·Ŷ`, `dŶ = s·dΛᵀ·X̂`, back through
/// each L2 normalisation, and `dt = Σ_ij dΛ_ij·Λ_ij` (as `∂Λ/∂t = Λ`).
#[allow(clippy::too_many_arguments)]
pub fn clip_loss_backward<F: Float>(
    spec: &ClipLoss,
    image: &[F],
    text: &[F],
    log_scale: &[F],
    saved: &[F],
    dloss: f64,
    dimage: &mut [F],
    dtext: Option<&mut [F]>,
    dlog_scale: &mut [F],
) -> Result<()> {
    const OP: &str = "clip_loss_backward";
    check_clip(OP, spec, image, text, log_scale)?;
    check_len(OP, "saved", saved.len(), clip_loss_saved_len(spec))?;
    check_len(OP, "dimage", dimage.len(), spec.rows * spec.dim)?;
    if let Some(dtext) = &dtext {
        check_len(OP, "dtext", dtext.len(), spec.cols * spec.dim)?;
    }
    check_len(OP, "dlog_scale", dlog_scale.len(), 1)?;
    let (rows, cols, off, dim) = (spec.rows, spec.cols, spec.row_offset, spec.dim);
    let (row_lse, rest) = saved.split_at(rows);
    let (col_lse, rest) = rest.split_at(cols);
    let (image_norms, text_norms) = rest.split_at(rows);
    let s = log_scale[0].exp();
    let image_hat = normalize_rows(image, image_norms, dim);
    let text_hat = normalize_rows(text, text_norms, dim);
    let logits = clip_logits(&image_hat, &text_hat, rows, cols, dim, s);

    // G = dloss·dΛ, row by row.
    let eps = spec.label_smoothing;
    let a = F::of_f64(dloss * spec.row_weight / rows as f64);
    let b = F::of_f64(dloss * spec.col_weight / cols as f64);
    let off_r = F::of_f64(eps / cols as f64);
    let off_c = F::of_f64(eps / rows as f64);
    // On a spec with a column term rows == cols, so both targets share `on`.
    let on = F::of_f64(1.0 - eps) + off_r;
    let mut grad = vec![F::zero(); rows * cols];
    grad.par_chunks_mut(cols).zip(logits.par_chunks(cols)).enumerate().for_each(|(i, (g, l))| {
        clip_grad_row(l, row_lse[i], col_lse, off + i, i, [a, on, off_r, b, off_c], g);
    });

    // dt: per-row partial sums, then added in row order (the same bits whatever the thread count).
    let partials: Vec<F> = grad
        .par_chunks(cols)
        .zip(logits.par_chunks(cols))
        .map(|(g, l)| g.iter().zip(l).map(|(&g, &l)| g * l).sum())
        .collect();
    dlog_scale[0] += partials.iter().copied().sum::<F>();

    // dX̂ = s·G·Ŷ and dŶ = s·Gᵀ·X̂ (two GEMMs), then back through each row's normalisation.
    let mut d_image_hat = vec![F::zero(); rows * dim];
    gemm_single(rows, dim, cols, &grad, false, &text_hat, false, &mut d_image_hat, s, F::zero());
    let backward = |dx: &mut [F], dxh: &[F], xh: &[F], norms: &[F]| {
        dx.par_chunks_mut(dim)
            .zip(dxh.par_chunks(dim))
            .zip(xh.par_chunks(dim))
            .zip(norms.par_iter())
            .for_each(|(((dx, dxh), xh), &norm)| normalize_backward_row(dxh, xh, norm, dx));
    };
    backward(dimage, &d_image_hat, &image_hat, image_norms);
    if let Some(dtext) = dtext {
        let mut d_text_hat = vec![F::zero(); cols * dim];
        gemm_single(cols, dim, rows, &grad, true, &image_hat, false, &mut d_text_hat, s, F::zero());
        backward(dtext, &d_text_hat, &text_hat, text_norms);
    }
    Ok(())
}
