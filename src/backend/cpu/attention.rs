//! Multi-head scaled dot-product attention, reference form: materialised probabilities per (batch, head).
//!
//! The forward saves the probabilities `P [batch, heads, seq_q, seq_k]` (zeros at masked keys). Work is split over
//! (batch, head) pairs; within a pair every sum runs in a fixed sequential order, so results do not depend on the
//! thread count.

use rayon::prelude::*;

use crate::backend::{Attention, Float};
use crate::error::{check_len, check_min_len, Error, Result};

/// Elements of `saved`: the probabilities `[batch, heads, seq_q, seq_k]`.
pub fn saved_len(spec: &Attention) -> usize {
    spec.batch * spec.heads * spec.seq_q * spec.seq_k
}

/// Start of the head-`h` slice of Q for query `i` of batch `b`.
fn q_at(spec: &Attention, b: usize, i: usize, h: usize) -> usize {
    spec.q_offset + (b * spec.seq_q + i) * spec.q_row_stride + h * spec.head_dim
}
/// Start of the head-`h` slice of K for key `j` of batch `b`.
fn k_at(spec: &Attention, b: usize, j: usize, h: usize) -> usize {
    spec.k_offset + (b * spec.seq_k + j) * spec.kv_row_stride + h * spec.head_dim
}
/// Start of the head-`h` slice of V for key `j` of batch `b`.
fn v_at(spec: &Attention, b: usize, j: usize, h: usize) -> usize {
    spec.v_offset + (b * spec.seq_k + j) * spec.kv_row_stride + h * spec.head_dim
}

fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    a.iter().zip(b).map(|(&a, &b)| a * b).sum()
}

/// Checks the layout against a QKV-shaped buffer `arg` of `qkv_len` elements, and the key padding mask.
fn check_layout(
    op: &'static str,
    arg: &'static str,
    spec: &Attention,
    qkv_len: usize,
    key_padding: Option<&[u8]>,
) -> Result<()> {
    let width = spec.width();
    let (q_rows, kv_rows) = (spec.batch * spec.seq_q, spec.batch * spec.seq_k);
    // Overlapping rows would make the gradients written into them depend on the write order.
    if q_rows > 1 && spec.q_row_stride < width {
        let msg = format!("q_row_stride {} is smaller than the width {width}", spec.q_row_stride);
        return Err(Error::Invalid { op, msg });
    }
    if kv_rows > 1 && spec.kv_row_stride < width {
        let msg = format!("kv_row_stride {} is smaller than the width {width}", spec.kv_row_stride);
        return Err(Error::Invalid { op, msg });
    }
    // One past the last element a region of `rows` rows uses.
    let end =
        |offset: usize, rows: usize, stride: usize| if rows == 0 { 0 } else { offset + (rows - 1) * stride + width };
    let needed = end(spec.q_offset, q_rows, spec.q_row_stride)
        .max(end(spec.k_offset, kv_rows, spec.kv_row_stride))
        .max(end(spec.v_offset, kv_rows, spec.kv_row_stride));
    check_min_len(op, arg, qkv_len, needed)?;
    if let Some(mask) = key_padding {
        check_len(op, "key_padding", mask.len(), kv_rows)?;
    }
    Ok(())
}

/// Whether query `i` of batch `b` attends to key `j`: allowed by the causal rule and not padding.
fn visible(spec: &Attention, key_padding: Option<&[u8]>, b: usize, i: usize, j: usize) -> bool {
    spec.visible(i, j) && key_padding.is_none_or(|mask| mask[b * spec.seq_k + j] == 0)
}

/// Forward of one (batch, head) pair: writes its probabilities `p [seq_q, seq_k]` and returns its output
/// `[seq_q, head_dim]`.
fn head_forward<F: Float>(
    spec: &Attention,
    qkv: &[F],
    key_padding: Option<&[u8]>,
    b: usize,
    h: usize,
    p: &mut [F],
) -> Vec<F> {
    let (sk, hd) = (spec.seq_k, spec.head_dim);
    let scale = F::of_f64(spec.scale);
    let mut o_all = vec![F::zero(); spec.seq_q * hd];
    for (i, p) in p.chunks_mut(sk).enumerate() {
        let o = &mut o_all[i * hd..(i + 1) * hd];
        let q = &qkv[q_at(spec, b, i, h)..][..hd];
        // Scores, −∞ at masked keys, and the softmax with the row maximum subtracted.
        let mut max = F::neg_infinity();
        for (j, p) in p.iter_mut().enumerate() {
            *p = if visible(spec, key_padding, b, i, j) {
                scale * dot(q, &qkv[k_at(spec, b, j, h)..][..hd])
            } else {
                F::neg_infinity()
            };
            max = max.max(*p);
        }
        if max == F::neg_infinity() {
            // No visible key: zero probabilities and a zero output row (never 0/0).
            p.fill(F::zero());
            continue;
        }
        let mut total = F::zero();
        for p in p.iter_mut() {
            *p = (*p - max).exp();
            total += *p;
        }
        for p in p.iter_mut() {
            *p /= total;
        }
        // o_i = Σ_j P_ij·v_j.
        for (j, &p) in p.iter().enumerate() {
            if p != F::zero() {
                for (o, &v) in o.iter_mut().zip(&qkv[v_at(spec, b, j, h)..][..hd]) {
                    *o += p * v;
                }
            }
        }
    }
    o_all
}

/// `out = softmax(scale·QKᵀ + masks)·V` per (batch, head); `out [batch, seq_q, heads·head_dim]`; saves P.
pub fn forward<F: Float>(
    spec: &Attention,
    qkv: &[F],
    key_padding: Option<&[u8]>,
    out: &mut [F],
    saved: &mut [F],
) -> Result<()> {
    const OP: &str = "attention_forward";
    check_layout(OP, "qkv", spec, qkv.len(), key_padding)?;
    check_len(OP, "out", out.len(), spec.out_len())?;
    check_len(OP, "saved", saved.len(), saved_len(spec))?;
    let (heads, hd, width) = (spec.heads, spec.head_dim, spec.width());
    let probs = spec.seq_q * spec.seq_k;
    if probs == 0 {
        // No query, or no key for any query: every output row is zero.
        out.fill(F::zero());
        return Ok(());
    }
    let per_head: Vec<Vec<F>> = saved
        .par_chunks_mut(probs)
        .enumerate()
        .map(|(bh, p)| head_forward(spec, qkv, key_padding, bh / heads, bh % heads, p))
        .collect();
    if width == 0 {
        return Ok(());
    }
    // Interleave the heads into rows (b, i) of the output.
    out.par_chunks_mut(width).enumerate().for_each(|(row, out)| {
        let (b, i) = (row / spec.seq_q, row % spec.seq_q);
        for (h, out) in out.chunks_mut(hd).enumerate() {
            out.copy_from_slice(&per_head[b * heads + h][i * hd..(i + 1) * hd]);
        }
    });
    Ok(())
}

/// Gradients `(dq [seq_q, head_dim], dk [seq_k, head_dim], dv [seq_k, head_dim])` of one (batch, head) pair:
///
/// ```text
/// dV_j = Σ_i P_ij·dO_i        dP_ij = ⟨dO_i, V_j⟩        dS_ij = P_ij·(dP_ij − Σ_j' P_ij'·dP_ij')
/// dQ_i = scale·Σ_j dS_ij·K_j  dK_j = scale·Σ_i dS_ij·Q_i
/// ```
///
/// Keys with zero probability (masked) contribute nothing, so a query that sees no key gets a zero gradient.
fn head_backward<F: Float>(
    spec: &Attention,
    qkv: &[F],
    p: &[F],
    dout: &[F],
    b: usize,
    h: usize,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let (sq, sk, hd, width) = (spec.seq_q, spec.seq_k, spec.head_dim, spec.width());
    let scale = F::of_f64(spec.scale);
    let mut dq = vec![F::zero(); sq * hd];
    let mut dk = vec![F::zero(); sk * hd];
    let mut dv = vec![F::zero(); sk * hd];
    let mut ds = vec![F::zero(); sk];
    for i in 0..sq {
        let p = &p[i * sk..(i + 1) * sk];
        let d_o = &dout[(b * sq + i) * width + h * hd..][..hd];
        let q = &qkv[q_at(spec, b, i, h)..][..hd];
        for (j, ds) in ds.iter_mut().enumerate() {
            *ds = if p[j] != F::zero() { dot(d_o, &qkv[v_at(spec, b, j, h)..][..hd]) } else { F::zero() };
        }
        let inner: F = p.iter().zip(&ds).map(|(&p, &dp)| p * dp).sum();
        for (ds, &p) in ds.iter_mut().zip(p) {
            *ds = p * (*ds - inner);
        }
        let dq_i = &mut dq[i * hd..(i + 1) * hd];
        for (j, (&ds, &p)) in ds.iter().zip(p).enumerate() {
            if p == F::zero() {
                continue;
            }
            let k = &qkv[k_at(spec, b, j, h)..][..hd];
            let (dk_j, dv_j) = (&mut dk[j * hd..(j + 1) * hd], &mut dv[j * hd..(j + 1) * hd]);
            for d in 0..hd {
                dq_i[d] += scale * ds * k[d];
                dk_j[d] += scale * ds * q[d];
                dv_j[d] += p * d_o[d];
            }
        }
    }
    (dq, dk, dv)
}

/// Writes dQ, dK, dV into `dqkv` at the offsets and strides of Q, K, V (overwriting them; the elements between are
/// left as they are), from the probabilities the forward saved. `out` is not needed: `Σ_j P_ij·dP_ij` is summed
/// directly.
pub fn backward<F: Float>(
    spec: &Attention,
    qkv: &[F],
    key_padding: Option<&[u8]>,
    out: &[F],
    saved: &[F],
    dout: &[F],
    dqkv: &mut [F],
) -> Result<()> {
    const OP: &str = "attention_backward";
    check_layout(OP, "qkv", spec, qkv.len(), key_padding)?;
    check_len(OP, "out", out.len(), spec.out_len())?;
    check_len(OP, "saved", saved.len(), saved_len(spec))?;
    check_len(OP, "dout", dout.len(), spec.out_len())?;
    check_layout(OP, "dqkv", spec, dqkv.len(), None)?;
    let (heads, hd) = (spec.heads, spec.head_dim);
    let probs = spec.seq_q * spec.seq_k;
    let per_head: Vec<(Vec<F>, Vec<F>, Vec<F>)> = (0..spec.batch * heads)
        .into_par_iter()
        .map(|bh| head_backward(spec, qkv, &saved[bh * probs..(bh + 1) * probs], dout, bh / heads, bh % heads))
        .collect();
    // Scatter into the strided layout: a plain copy, done in order.
    for (bh, (dq, dk, dv)) in per_head.iter().enumerate() {
        let (b, h) = (bh / heads, bh % heads);
        for i in 0..spec.seq_q {
            dqkv[q_at(spec, b, i, h)..][..hd].copy_from_slice(&dq[i * hd..(i + 1) * hd]);
        }
        for j in 0..spec.seq_k {
            dqkv[k_at(spec, b, j, h)..][..hd].copy_from_slice(&dk[j * hd..(j + 1) * hd]);
            dqkv[v_at(spec, b, j, h)..][..hd].copy_from_slice(&dv[j * hd..(j + 1) * hd]);
        }
    }
    Ok(())
}
