//! Matrix products through the `gemm` crate, row-vector broadcast and its backward (row sums).

use gemm::Parallelism;
use rayon::prelude::*;

use super::simd::multiversion;
use crate::backend::{Float, Gemm};
use crate::error::{check_len, Error, Result};

/// Products with more multiply-adds than this are split over threads inside the `gemm` crate; below it the threads
/// cost more than they save.
const PARALLEL_MACS: usize = 64 * 64 * 64;

/// Rows per task of [`sum_rows`]; fixed, as it is part of the summation order.
const SUM_ROWS_BLOCK: usize = 64;

/// `C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b]` for every `b` of the batch (see [`Gemm`]).
///
/// The operands must hold exactly [`Gemm::required_lens`] elements, and the batch's C matrices must not overlap
/// (`stride_c ≥ m·n`: cuBLAS leaves overlapping outputs undefined, so the reference refuses them). The products run
/// in parallel over the batch. `beta = 0` ignores the old C (NaN included), as BLAS does.
pub fn gemm<F: Float>(spec: &Gemm, a: &[F], b: &[F], c: &mut [F]) -> Result<()> {
    let (len_a, len_b, len_c) = spec.required_lens();
    check_len("gemm", "a", a.len(), len_a)?;
    check_len("gemm", "b", b.len(), len_b)?;
    check_len("gemm", "c", c.len(), len_c)?;
    let Gemm { m, n, k, trans_a, trans_b, batch, stride_a, stride_b, stride_c, .. } = *spec;
    let (alpha, beta) = (F::of_f64(spec.alpha), F::of_f64(spec.beta));
    let mn = m * n;
    if batch > 1 && stride_c < mn {
        let msg = format!("stride_c {stride_c} < m·n = {mn}: the batch's outputs would overlap");
        return Err(Error::Invalid { op: "gemm", msg });
    }
    if batch == 0 || mn == 0 {
        return Ok(());
    }
    let product = |i: usize, c: &mut [F]| {
        let a = &a[i * stride_a..i * stride_a + m * k];
        let b = &b[i * stride_b..i * stride_b + k * n];
        gemm_single(m, n, k, a, trans_a, b, trans_b, c, alpha, beta);
    };
    // The last chunk may be shorter than stride_c, but it holds m·n elements (required_lens says so).
    c.par_chunks_mut(stride_c.max(mn)).take(batch).enumerate().for_each(|(i, c)| product(i, &mut c[..mn]));
    Ok(())
}

/// One row-major product `c = alpha·op(a)·op(b) + beta·c`, `c [m, n]`, `op(a) [m, k]`, `op(b) [k, n]`: the building
/// block of [`gemm`] and of the convolutions.
///
/// Each element's sum over `k` runs in an order fixed by the shape alone (the `gemm` crate splits threads over
/// blocks of C, never over k), so the result does not depend on the number of threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_single<F: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[F],
    trans_a: bool,
    b: &[F],
    trans_b: bool,
    c: &mut [F],
    alpha: F,
    beta: F,
) {
    // Row and column strides of each row-major operand; a transposed operand swaps them.
    let a_strides = if trans_a { (1, m) } else { (k, 1) };
    let b_strides = if trans_b { (1, k) } else { (n, 1) };
    gemm_strided(m, n, k, a, a_strides, b, b_strides, c, n, alpha, beta);
}

/// `c = alpha·a·b + beta·c` for `a [m, k]`, `b [k, n]` read at any (row, column) strides, and `c [m, n]` with row
/// stride `c_rs` ≥ n (contiguous rows, possibly with gaps between them, which are left as they are): the products
/// of attention, whose Q, K and V rows are interleaved in one buffer, read and written in place. Slice lengths are
/// asserted here because the `gemm` crate reads and writes through raw pointers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided<F: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[F],
    (a_rs, a_cs): (usize, usize),
    b: &[F],
    (b_rs, b_cs): (usize, usize),
    c: &mut [F],
    c_rs: usize,
    alpha: F,
    beta: F,
) {
    if m == 0 || n == 0 {
        return;
    }
    // One past the last element a [rows, cols] operand at these strides touches.
    let end = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
    assert!(c_rs >= n || m == 1, "gemm_strided: rows of c overlap (row stride {c_rs} < {n} columns)");
    assert!(c.len() >= end(m, n, c_rs, 1), "gemm_strided: c too short");
    if k == 0 || alpha == F::zero() {
        // No product to add (BLAS does not read A and B then): C = beta·C, and beta = 0 clears C even of NaN.
        for row in c.chunks_mut(c_rs.max(n)).take(m) {
            let row = &mut row[..n];
            if beta == F::zero() {
                row.fill(F::zero());
            } else {
                row.iter_mut().for_each(|v| *v *= beta);
            }
        }
        return;
    }
    assert!(a.len() >= end(m, k, a_rs, a_cs) && b.len() >= end(k, n, b_rs, b_cs), "gemm_strided: operand too short");
    let parts = k_parts(m, n, k);
    if parts > 1 {
        return gemm_split_k(m, n, k, parts, a, (a_rs, a_cs), b, (b_rs, b_cs), c, c_rs, alpha, beta);
    }
    let parallelism = if m * n * k > PARALLEL_MACS { Parallelism::Rayon(0) } else { Parallelism::None };
    // SAFETY: the bounds of a, b and c are asserted above and c's rows do not overlap.
    unsafe { gemm_raw(m, n, k, a, (a_rs, a_cs), b, (b_rs, b_cs), c, c_rs, alpha, beta, parallelism) };
}

/// In how many parts [`gemm_strided`] splits the inner dimension: the weight-gradient shape (`dW = dYᵀ·X`, a small
/// output summed over thousands of rows) gives the `gemm` crate's threads too few blocks of C to share, so the rows
/// are split into up to four fixed parts instead, multiplied in parallel and added in order. The split depends on
/// the shape alone, never on the thread count.
fn k_parts(m: usize, n: usize, k: usize) -> usize {
    if m * n * k > PARALLEL_MACS && k >= K_SPLIT_RATIO * m.max(n) {
        (k / K_SPLIT_MIN).clamp(1, 4)
    } else {
        1
    }
}

/// The inner dimension must be this many times the larger side of C for [`k_parts`] to split it…
const K_SPLIT_RATIO: usize = 8;
/// …and each part at least this long.
const K_SPLIT_MIN: usize = 1024;

/// [`gemm_strided`] with the inner dimension cut into `parts` equal runs (the last shorter): each run's product is
/// formed on one thread, then `c = alpha·(P₀ + P₁ + …) + beta·c`, the parts added in order.
#[allow(clippy::too_many_arguments)]
fn gemm_split_k<F: Float>(
    m: usize,
    n: usize,
    k: usize,
    parts: usize,
    a: &[F],
    (a_rs, a_cs): (usize, usize),
    b: &[F],
    (b_rs, b_cs): (usize, usize),
    c: &mut [F],
    c_rs: usize,
    alpha: F,
    beta: F,
) {
    let run = k.div_ceil(parts);
    let mut partials = vec![F::zero(); parts * m * n];
    partials.par_chunks_mut(m * n).enumerate().for_each(|(part, p)| {
        let (k0, len) = (part * run, run.min(k - part * run));
        let (a, b) = (&a[k0 * a_cs..], &b[k0 * b_rs..]);
        // SAFETY: a part reads rows k0..k0 + len of the inner dimension, inside the bounds gemm_strided asserted for
        // all k; p is a dense [m, n] buffer of its own.
        unsafe { gemm_raw(m, n, len, a, (a_rs, a_cs), b, (b_rs, b_cs), p, n, F::one(), F::zero(), Parallelism::None) };
    });
    for (i, c) in c.chunks_mut(c_rs.max(n)).take(m).enumerate() {
        for (j, c) in c[..n].iter_mut().enumerate() {
            let mut sum = partials[i * n + j];
            for p in partials[m * n..].chunks_exact(m * n) {
                sum += p[i * n + j];
            }
            *c = if beta == F::zero() { alpha * sum } else { alpha * sum + beta * *c };
        }
    }
}

/// The `gemm` crate's product `c = alpha·a·b + beta·c` at the given strides.
///
/// # Safety
/// Every element `a[i·a_rs + kk·a_cs]`, `b[kk·b_rs + j·b_cs]` and `c[i·c_rs + j]` (i < m, j < n, kk < k) must lie inside
/// its slice, and c's rows must not overlap (`c_rs ≥ n` or `m = 1`): the crate reads and writes through raw pointers.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw<F: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[F],
    (a_rs, a_cs): (usize, usize),
    b: &[F],
    (b_rs, b_cs): (usize, usize),
    c: &mut [F],
    c_rs: usize,
    alpha: F,
    beta: F,
    parallelism: Parallelism,
) {
    // SAFETY: the elements read and written lie inside a, b and c and c's rows do not overlap (this function's
    // contract), c is a unique borrow that aliases neither input, and F is f32 or f64, types the crate supports.
    unsafe {
        // The crate computes dst = alpha·dst + beta·lhs·rhs: its alpha is our beta and vice versa. With
        // read_dst = false it never reads dst.
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            beta != F::zero(),
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `y[r, :] += v` for every row of `y [rows, cols]`.
pub fn add_row_vector<F: Float>(y: &mut [F], v: &[F], rows: usize, cols: usize) -> Result<()> {
    check_len("add_row_vector", "y", y.len(), rows * cols)?;
    check_len("add_row_vector", "v", v.len(), cols)?;
    if cols == 0 {
        return Ok(());
    }
    y.par_chunks_mut(cols).for_each(|row| row.iter_mut().zip(v).for_each(|(y, &v)| *y += v));
    Ok(())
}

multiversion! {
    /// `partial[c] = Σ_r x[r, c]` over the rows of one block, in order.
    fn column_sums<F: Float>(x: &[F], partial: &mut [F]) {
        let cols = partial.len();
        partial.fill(F::zero());
        for row in x.chunks_exact(cols) {
            for (p, &v) in partial.iter_mut().zip(row) {
                *p += v;
            }
        }
    }
}

/// `out[c] (+)= Σ_r x[r, c]` over `x [rows, cols]`. Threads split the rows into blocks of SUM_ROWS_BLOCK; each block's
/// column sums are formed in row order and the blocks' sums added in block order, so the result is the same whatever
/// the number of threads.
pub fn sum_rows<F: Float>(x: &[F], out: &mut [F], rows: usize, cols: usize, accumulate: bool) -> Result<()> {
    check_len("sum_rows", "x", x.len(), rows * cols)?;
    check_len("sum_rows", "out", out.len(), cols)?;
    if cols == 0 {
        return Ok(());
    }
    let mut partials = vec![F::zero(); rows.div_ceil(SUM_ROWS_BLOCK) * cols];
    partials.par_chunks_mut(cols).zip(x.par_chunks(SUM_ROWS_BLOCK * cols)).for_each(|(p, x)| column_sums(x, p));
    let mut sums = vec![F::zero(); cols];
    for partial in partials.chunks_exact(cols) {
        sums.iter_mut().zip(partial).for_each(|(s, &p)| *s += p);
    }
    // The column sum is formed first and then added, so accumulating gives old + (the sum written otherwise).
    for (o, s) in out.iter_mut().zip(sums) {
        *o = if accumulate { *o + s } else { s };
    }
    Ok(())
}
