//! Multi-head scaled dot-product attention, reference form: materialised probabilities per (batch, head).
//!
//! The forward saves the probabilities `P [batch, heads, seq_q, seq_k]` (zeros at masked keys). Work is split over
//! batch items, one task each; within an item, each head's products (`Q·Kᵀ`, `P·V` and the backward's five) run as
//! small register-tiled matrix products ([`small_gemm`]) whose sums run in a fixed order, so results do not depend
//! on the thread count.

use rayon::prelude::*;

use super::matmul::gemm_strided;
use super::simd::{self, multiversion};
use super::small_gemm::{small_gemm, Strided, NR};
use crate::backend::{Attention, Float};
use crate::error::{check_len, Result};

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

/// Per-task scratch of the attention kernels: a transposed K or V of one head `[head_dim, seq_k_pad]`, and the scores
/// or their gradient for one head `[seq_q, seq_k_pad]`, padded with zero columns to a multiple of [`NR`].
#[derive(Default)]
struct Scratch<F> {
    transposed: Vec<F>,
    scores: Vec<F>,
    /// The packed rows of A of [`small_gemm`].
    pack: Vec<F>,
}

impl<F: Float> Scratch<F> {
    /// Sizes the buffers for `spec`; returns the padded key count.
    fn fit(&mut self, spec: &Attention) -> usize {
        let skp = spec.seq_k.div_ceil(NR) * NR;
        self.transposed.resize(spec.head_dim * skp, F::zero());
        self.scores.resize(spec.seq_q * skp, F::zero());
        skp
    }
}

/// `t [head_dim, skp] = Xᵀ` for the `seq_k` rows of one head of K or V starting at `x` (row stride `rs`); the padding
/// columns stay zero.
fn transpose_head<F: Float>(x: &[F], rs: usize, seq_k: usize, head_dim: usize, skp: usize, t: &mut [F]) {
    // Row by row of t: strided loads, contiguous stores.
    for (d, t) in t.chunks_exact_mut(skp).take(head_dim).enumerate() {
        for (j, t) in t[..seq_k].iter_mut().enumerate() {
            *t = x[j * rs + d];
        }
    }
}

/// `c = alpha·a·b` with b `[k, n]` rows at stride `b_rs` and c rows at stride `c_rs`: the register-tile kernel when
/// n is a multiple of its tile width, else the general GEMM.
#[allow(clippy::too_many_arguments)]
fn product<F: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_, F>,
    b: &[F],
    b_rs: usize,
    c: &mut [F],
    c_rs: usize,
    pack: &mut Vec<F>,
) {
    if n.is_multiple_of(NR) {
        small_gemm(m, n, k, a, b, b_rs, c, c_rs, F::one(), pack);
    } else {
        gemm_strided(m, n, k, a.data, (a.rs, a.cs), b, (b_rs, 1), c, c_rs, F::one(), F::zero());
    }
}

/// Forward of batch item `b`, every head: writes its output rows `out [seq_q, width]` and its probabilities
/// `p [heads, seq_q, seq_k]`. Per head: `S = scale·Q·Kᵀ` (with Kᵀ copied out, padded), the masked softmax of each
/// row into p, then `O = P·V` (into the head's columns of out).
#[allow(clippy::too_many_arguments)]
fn batch_forward<F: Float>(
    spec: &Attention,
    qkv: &[F],
    key_padding: Option<&[u8]>,
    b: usize,
    out: &mut [F],
    p: &mut [F],
    scratch: &mut Scratch<F>,
) {
    let (sq, sk, hd, width) = (spec.seq_q, spec.seq_k, spec.head_dim, spec.width());
    let (q_rs, kv_rs) = (spec.q_row_stride, spec.kv_row_stride);
    let skp = scratch.fit(spec);
    for (h, p) in p.chunks_exact_mut(sq * sk).enumerate() {
        let (q, k, v) = (&qkv[q_at(spec, b, 0, h)..], &qkv[k_at(spec, b, 0, h)..], &qkv[v_at(spec, b, 0, h)..]);
        transpose_head(k, kv_rs, sk, hd, skp, &mut scratch.transposed);
        let q = Strided { data: q, rs: q_rs, cs: 1 };
        let scale = F::of_f64(spec.scale);
        small_gemm(sq, skp, hd, q, &scratch.transposed, skp, &mut scratch.scores, skp, scale, &mut scratch.pack);
        for (i, (p, s)) in p.chunks_exact_mut(sk).zip(scratch.scores.chunks_exact(skp)).enumerate() {
            p.copy_from_slice(&s[..sk]);
            softmax_row(spec, key_padding, b, i, p);
        }
        let p = Strided { data: p, rs: sk, cs: 1 };
        product(sq, hd, sk, p, v, kv_rs, &mut out[h * hd..], width, &mut scratch.pack);
    }
}

multiversion! {
    /// Scores → probabilities for query `i` of batch item `b`, in place: −∞ at masked keys, the maximum subtracted.
    /// A query that sees no key gets zero probabilities (never 0/0), hence a zero output row.
    fn softmax_row<F: Float>(spec: &Attention, key_padding: Option<&[u8]>, b: usize, i: usize, p: &mut [F]) {
        // The causal rule hides a suffix of the keys (see `Attention::visible`), the padding mask single keys.
        let sk = p.len();
        let visible_end = if spec.causal { (i + sk + 1).saturating_sub(spec.seq_q).min(sk) } else { sk };
        p[visible_end..].fill(F::neg_infinity());
        if let Some(mask) = key_padding {
            for (p, &masked) in p.iter_mut().zip(&mask[b * sk..(b + 1) * sk]) {
                if masked != 0 {
                    *p = F::neg_infinity();
                }
            }
        }
        let max = p.iter().fold(F::neg_infinity(), |m, &v| m.max(v));
        if max == F::neg_infinity() {
            p.fill(F::zero());
            return;
        }
        // The exponentials in one loop (it vectorises), their sum in another (a serial chain).
        for p in p.iter_mut() {
            *p = simd::exp(*p - max);
        }
        let total = p.iter().fold(F::zero(), |t, &p| t + p);
        for p in p.iter_mut() {
            *p /= total;
        }
    }
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
    spec.check_layout(OP, "qkv", qkv.len(), key_padding.map(<[u8]>::len))?;
    check_len(OP, "out", out.len(), spec.out_len())?;
    check_len(OP, "saved", saved.len(), saved_len(spec))?;
    let probs = spec.heads * spec.seq_q * spec.seq_k;
    let rows = spec.seq_q * spec.width();
    if probs == 0 || rows == 0 {
        // No query, no key or no head: every output row is zero.
        out.fill(F::zero());
        return Ok(());
    }
    // One task per batch item: its output rows and its probabilities are contiguous.
    out.par_chunks_mut(rows)
        .zip(saved.par_chunks_mut(probs))
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (b, (out, p))| {
            batch_forward(spec, qkv, key_padding, b, out, p, scratch)
        });
    Ok(())
}

/// Where one batch item's gradients go: `dst`, with the head-0 start of row 0 of dQ, dK and dV and their row strides.
struct GradRows<'a, F> {
    dst: &'a mut [F],
    q: usize,
    k: usize,
    v: usize,
    q_rs: usize,
    kv_rs: usize,
}

/// Gradients of batch item `b`, every head, from its probabilities `p [heads, seq_q, seq_k]` and output gradient
/// `dout [seq_q, width]`; `ds [seq_q, seq_k]` is scratch. Per head, five small products:
///
/// ```text
/// dP = dO·Vᵀ    dS = scale·P∘(dP − rowsum(P∘dP))    dV = Pᵀ·dO    dQ = dS·K    dK = dSᵀ·Q
/// ```
///
/// Keys with zero probability (masked) contribute nothing, so a query that sees no key gets a zero gradient.
#[allow(clippy::too_many_arguments)]
fn batch_backward<F: Float>(
    spec: &Attention,
    qkv: &[F],
    p: &[F],
    dout: &[F],
    b: usize,
    to: GradRows<'_, F>,
    ds: &mut [F],
    scratch: &mut Scratch<F>,
) {
    let (sq, sk, hd, width) = (spec.seq_q, spec.seq_k, spec.head_dim, spec.width());
    let (q_rs, kv_rs) = (spec.q_row_stride, spec.kv_row_stride);
    if sq == 0 || sk == 0 {
        // Nothing attends to anything: zero gradients, and no rows to read (they may lie past the end of qkv).
        for (start, rows, rs) in [(to.q, sq, to.q_rs), (to.k, sk, to.kv_rs), (to.v, sk, to.kv_rs)] {
            for r in 0..rows {
                to.dst[start + r * rs..][..width].fill(F::zero());
            }
        }
        return;
    }
    let skp = scratch.fit(spec);
    for (h, p) in p.chunks_exact(sq * sk).enumerate() {
        let (q, k, v) = (&qkv[q_at(spec, b, 0, h)..], &qkv[k_at(spec, b, 0, h)..], &qkv[v_at(spec, b, 0, h)..]);
        let d_o = &dout[h * hd..];
        transpose_head(v, kv_rs, sk, hd, skp, &mut scratch.transposed);
        let d_o_rows = Strided { data: d_o, rs: width, cs: 1 };
        let dp = &mut scratch.scores;
        small_gemm(sq, skp, hd, d_o_rows, &scratch.transposed, skp, dp, skp, F::one(), &mut scratch.pack);
        for ((p, ds), dp) in p.chunks_exact(sk).zip(ds.chunks_exact_mut(sk)).zip(scratch.scores.chunks_exact(skp)) {
            ds.copy_from_slice(&dp[..sk]);
            scale_softmax_grad(p, ds, F::of_f64(spec.scale));
        }
        // Pᵀ and dSᵀ are P and dS read with their strides swapped.
        let (dst, at, pack) = (&mut *to.dst, h * hd, &mut scratch.pack);
        let (p_t, ds_rows, ds_t) = (
            Strided { data: p, rs: 1, cs: sk },
            Strided { data: &*ds, rs: sk, cs: 1 },
            Strided { data: &*ds, rs: 1, cs: sk },
        );
        product(sk, hd, sq, p_t, d_o, width, &mut dst[to.v + at..], to.kv_rs, pack);
        product(sq, hd, sk, ds_rows, k, kv_rs, &mut dst[to.q + at..], to.q_rs, pack);
        product(sk, hd, sq, ds_t, q, q_rs, &mut dst[to.k + at..], to.kv_rs, pack);
    }
}

multiversion! {
    /// `ds = scale·p∘(dp − Σ_j p_j·dp_j)` for one query row, in place (ds holds dp on entry).
    fn scale_softmax_grad<F: Float>(p: &[F], ds: &mut [F], scale: F) {
        let inner = simd::dot(p, ds);
        for (ds, &p) in ds.iter_mut().zip(p) {
            *ds = scale * (p * (*ds - inner));
        }
    }
}

/// Whether every batch item's Q, K and V rows lie in its own contiguous block of `seq·row_stride` elements (the
/// packed `[B, S, 3·width]` output of a fused projection): then the gradients are written block by block in
/// parallel.
fn packed_blocks(spec: &Attention) -> Option<usize> {
    let (stride, width) = (spec.q_row_stride, spec.width());
    let fits = |offset: usize| offset + width <= stride;
    let packed = spec.seq_q == spec.seq_k
        && spec.kv_row_stride == stride
        && fits(spec.q_offset)
        && fits(spec.k_offset)
        && fits(spec.v_offset);
    packed.then_some(spec.seq_q * stride)
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
    spec.check_layout(OP, "qkv", qkv.len(), key_padding.map(<[u8]>::len))?;
    check_len(OP, "out", out.len(), spec.out_len())?;
    check_len(OP, "saved", saved.len(), saved_len(spec))?;
    check_len(OP, "dout", dout.len(), spec.out_len())?;
    spec.check_layout(OP, "dqkv", dqkv.len(), None)?;
    let (sq, sk, width) = (spec.seq_q, spec.seq_k, spec.width());
    let probs = spec.heads * sq * sk;
    if spec.batch == 0 || width == 0 {
        return Ok(());
    }
    let (p_len, d_len) = (probs, sq * width);
    let (saved_of, dout_of) =
        (|b: usize| &saved[b * p_len..(b + 1) * p_len], |b: usize| &dout[b * d_len..(b + 1) * d_len]);
    match packed_blocks(spec) {
        Some(block) => {
            // Each batch item's block is written in place by one task.
            let init = || (vec![F::zero(); sq * sk], Scratch::default());
            dqkv.par_chunks_mut(block).take(spec.batch).enumerate().for_each_init(init, |(ds, scratch), (b, dst)| {
                let (q_rs, kv_rs) = (spec.q_row_stride, spec.kv_row_stride);
                let to = GradRows { dst, q: spec.q_offset, k: spec.k_offset, v: spec.v_offset, q_rs, kv_rs };
                batch_backward(spec, qkv, saved_of(b), dout_of(b), b, to, ds, scratch);
            });
        }
        None => {
            // A general layout: each batch item into dense `[dq | dk | dv]` rows in parallel, then scattered in order.
            let per_batch: Vec<Vec<F>> = (0..spec.batch)
                .into_par_iter()
                .map(|b| {
                    let mut dense = vec![F::zero(); (sq + 2 * sk) * width];
                    let mut ds = vec![F::zero(); sq * sk];
                    let (k, v) = (sq * width, (sq + sk) * width);
                    let to = GradRows { dst: &mut dense, q: 0, k, v, q_rs: width, kv_rs: width };
                    batch_backward(spec, qkv, saved_of(b), dout_of(b), b, to, &mut ds, &mut Scratch::default());
                    dense
                })
                .collect();
            for (b, dense) in per_batch.iter().enumerate() {
                let (dq, rest) = dense.split_at(sq * width);
                let (dk, dv) = rest.split_at(sk * width);
                let rows = [(dq, spec.q_offset + b * sq * spec.q_row_stride, spec.q_row_stride)];
                let kv = spec.kv_row_stride;
                let rows = rows
                    .into_iter()
                    .chain([(dk, spec.k_offset + b * sk * kv, kv), (dv, spec.v_offset + b * sk * kv, kv)]);
                for (dense, start, stride) in rows {
                    for (r, row) in dense.chunks_exact(width).enumerate() {
                        dqkv[start + r * stride..][..width].copy_from_slice(row);
                    }
                }
            }
        }
    }
    Ok(())
}
