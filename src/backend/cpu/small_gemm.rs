//! Products of tiny matrices — attention's per-head ones, 17×17×64 for tiny-ViT — without the fixed cost of a call
//! into the `gemm` crate (dispatch and packing: about a microsecond, as much as the arithmetic at these sizes).
//!
//! A register tile of `MR` rows × `NR` columns of C is accumulated over the whole inner dimension: each step
//! broadcasts one element of A per row and multiply-adds it with one row of B, so every element of C is the sum of its
//! products in inner-dimension order, whatever the shape around it.

use super::simd::multiversion;
use crate::backend::Float;

/// Columns per register tile: two AVX registers of f32. The column count of every product is a multiple of it.
pub const NR: usize = 16;

/// Rows per register tile: 6·NR accumulators (twelve AVX registers of f32, six AVX-512 ones), enough independent
/// multiply-add chains to hide their latency.
const MR: usize = 6;

/// An operand read element by element at any row and column strides (a transposed matrix swaps them).
#[derive(Clone, Copy)]
pub struct Strided<'a, F> {
    pub data: &'a [F],
    pub rs: usize,
    pub cs: usize,
}

/// Copies rows `i0..i0 + MR` of A `[m, k]` into `pack [k, MR]` (inner index first), zero past row m: the tile loop then
/// reads A without strides or bounds checks, and a partial tile at the bottom costs nothing special.
#[inline(always)]
fn pack_rows<F: Float>(a: Strided<'_, F>, i0: usize, m: usize, k: usize, pack: &mut [F]) {
    for (kk, pack) in pack.chunks_exact_mut(MR).take(k).enumerate() {
        for (r, p) in pack.iter_mut().enumerate() {
            let i = i0 + r;
            *p = if i < m { a.data[i * a.rs + kk * a.cs] } else { F::zero() };
        }
    }
}

/// `acc[r][j] = Σ_kk pack[kk·MR + r]·b[kk·b_rs + j]` for one MR×NR tile, the inner index in order.
#[inline(always)]
fn tile<F: Float>(pack: &[F], b: &[F], b_rs: usize) -> [[F; NR]; MR] {
    let mut acc = [[F::zero(); NR]; MR];
    for (kk, a) in pack.chunks_exact(MR).enumerate() {
        let b: &[F; NR] = b[kk * b_rs..][..NR].try_into().expect("NR columns");
        for (acc, &a) in acc.iter_mut().zip(a) {
            for (acc, &b) in acc.iter_mut().zip(b) {
                *acc = a.mul_add(b, *acc);
            }
        }
    }
    acc
}

multiversion! {
    /// `c[i·c_rs + j] = alpha·Σ_kk a(i, kk)·b[kk·b_rs + j]` for `i < m`, `j < n`: C `[m, n]` (rows at stride `c_rs`, the
    /// elements between rows left as they are) from A `[m, k]` at any strides and B `[k, n]` with contiguous rows at
    /// stride `b_rs`. `n` must be a multiple of [`NR`] (callers pad); `pack` is scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn small_gemm<F: Float>(
        m: usize,
        n: usize,
        k: usize,
        a: Strided<'_, F>,
        b: &[F],
        b_rs: usize,
        c: &mut [F],
        c_rs: usize,
        alpha: F,
        pack: &mut Vec<F>,
    ) {
        assert!(n.is_multiple_of(NR), "small_gemm: {n} columns, not a multiple of {NR}");
        pack.resize(k * MR, F::zero());
        for i0 in (0..m).step_by(MR) {
            pack_rows(a, i0, m, k, pack);
            for j0 in (0..n).step_by(NR) {
                let acc = tile(&pack[..k * MR], &b[j0..], b_rs);
                for (r, acc) in acc.iter().enumerate().take(m - i0) {
                    for (c, &acc) in c[(i0 + r) * c_rs + j0..][..NR].iter_mut().zip(acc) {
                        *c = alpha * acc;
                    }
                }
            }
        }
    }
}
