//! Matrix products through the `gemm` crate, row-vector broadcast and its backward (row sums).

use gemm::Parallelism;
use rayon::prelude::*;

use crate::backend::{Float, Gemm};
use crate::error::{check_len, Error, Result};

/// Products with more multiply-adds than this are split over threads inside the `gemm` crate; below it the threads
/// cost more than they save.
const PARALLEL_MACS: usize = 64 * 64 * 64;

/// Columns per task of [`sum_rows`].
const SUM_ROWS_CHUNK: usize = 64;

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
/// block of [`gemm`] and of the convolutions. Slice lengths are the caller's to check; they are asserted here because
/// the `gemm` crate reads through raw pointers.
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
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm_single: operand too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == F::zero() {
        // No product to add (BLAS does not read A and B then): C = beta·C, and beta = 0 clears C even of NaN.
        let c = &mut c[..m * n];
        if beta == F::zero() {
            c.fill(F::zero());
        } else {
            c.iter_mut().for_each(|v| *v *= beta);
        }
        return;
    }
    // Row and column strides of each row-major operand; a transposed operand swaps them.
    let (a_rs, a_cs) = if trans_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if trans_b { (1, k) } else { (n, 1) };
    let parallelism = if m * n * k > PARALLEL_MACS { Parallelism::Rayon(0) } else { Parallelism::None };
    // SAFETY: the operands hold op(a) [m, k], op(b) [k, n] and c [m, n] at these strides (asserted above), c is a
    // unique borrow that aliases neither input, and F is f32 or f64, types the crate supports.
    unsafe {
        // The crate computes dst = alpha·dst + beta·lhs·rhs: its alpha is our beta and vice versa. With
        // read_dst = false it never reads dst.
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
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

/// `out[c] (+)= Σ_r x[r, c]` over `x [rows, cols]`. Threads split the columns; each column is summed over the rows
/// in order, so the result is the same whatever the number of threads.
pub fn sum_rows<F: Float>(x: &[F], out: &mut [F], rows: usize, cols: usize, accumulate: bool) -> Result<()> {
    check_len("sum_rows", "x", x.len(), rows * cols)?;
    check_len("sum_rows", "out", out.len(), cols)?;
    out.par_chunks_mut(SUM_ROWS_CHUNK).enumerate().for_each(|(chunk, out)| {
        let c0 = chunk * SUM_ROWS_CHUNK;
        let mut sums = vec![F::zero(); out.len()];
        for row in x.chunks_exact(cols).take(rows) {
            sums.iter_mut().zip(&row[c0..c0 + out.len()]).for_each(|(s, &v)| *s += v);
        }
        // The column sum is formed first and then added, so accumulating gives old + (the sum written otherwise).
        for (o, s) in out.iter_mut().zip(sums) {
            *o = if accumulate { *o + s } else { s };
        }
    });
    Ok(())
}
