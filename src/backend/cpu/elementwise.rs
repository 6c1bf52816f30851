//! Element-wise arithmetic, casts, layout copies and whole-buffer reductions.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::backend::{DType, Float};
use crate::error::{check_len, check_min_len, Error, Result};

/// Elements per rayon task for the element-wise maps.
const CHUNK: usize = 1 << 14;

/// Elements per partial sum of the reductions. Fixed, so the partials and the order they are added in (sequential)
/// do not depend on the thread count: the result is bit-identical however many threads run.
const REDUCE_BLOCK: usize = 1 << 12;

/// `out = a + b`.
pub fn add<F: Float>(a: &[F], b: &[F], out: &mut [F]) -> Result<()> {
    check_len("add", "b", b.len(), a.len())?;
    check_len("add", "out", out.len(), a.len())?;
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((out, a), b)| {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    });
    Ok(())
}

/// `y += alpha·x`, in place.
pub fn axpy<F: Float>(alpha: f64, x: &[F], y: &mut [F]) -> Result<()> {
    check_len("axpy", "y", y.len(), x.len())?;
    let alpha = F::of_f64(alpha);
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y += alpha * x;
        }
    });
    Ok(())
}

/// `y *= alpha`, in place.
pub fn scale<F: Float>(alpha: f64, y: &mut [F]) -> Result<()> {
    let alpha = F::of_f64(alpha);
    y.par_chunks_mut(CHUNK).for_each(|y| {
        for y in y {
            *y *= alpha;
        }
    });
    Ok(())
}

/// `y[i] = convert(x[i])` over equal-length slices, in parallel.
fn map_into<A: Copy + Send + Sync, B: Send>(op: &'static str, x: &[A], y: &mut [B], convert: fn(A) -> B) -> Result<()> {
    check_len(op, "y", y.len(), x.len())?;
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = convert(x);
        }
    });
    Ok(())
}

// The narrowing casts round to nearest even. An f32 goes through `from_f32` (one rounding, as the trait documents);
// an f64 through `from_f64`, never via f32, which would round twice. Known limit: half 2.7's `from_f64` ignores the
// low 32 mantissa bits when breaking ties, so an f64 within 2⁻³² (relative) above a tie rounds to even; f32 inputs,
// the training dtype, are exact.

fn to_bf16<F: Float>(x: F) -> bf16 {
    match F::DTYPE {
        DType::F32 => bf16::from_f32(x.as_f64() as f32),
        _ => bf16::from_f64(x.as_f64()),
    }
}

fn to_f16<F: Float>(x: F) -> f16 {
    match F::DTYPE {
        DType::F32 => f16::from_f32(x.as_f64() as f32),
        _ => f16::from_f64(x.as_f64()),
    }
}

/// Round to nearest even, as `half::bf16::from_f32`.
pub fn cast_to_bf16<F: Float>(x: &[F], y: &mut [bf16]) -> Result<()> {
    map_into("cast_to_bf16", x, y, to_bf16::<F>)
}

/// Exact (every bf16 is an f32 and an f64).
pub fn cast_from_bf16<F: Float>(x: &[bf16], y: &mut [F]) -> Result<()> {
    map_into("cast_from_bf16", x, y, |x| F::of_f64(x.to_f64()))
}

/// Round to nearest even, as `half::f16::from_f32`.
pub fn cast_to_f16<F: Float>(x: &[F], y: &mut [f16]) -> Result<()> {
    map_into("cast_to_f16", x, y, to_f16::<F>)
}

/// Exact (every f16 is an f32 and an f64).
pub fn cast_from_f16<F: Float>(x: &[f16], y: &mut [F]) -> Result<()> {
    map_into("cast_from_f16", x, y, |x| F::of_f64(x.to_f64()))
}

/// `y[b] = x[b]ᵀ`: `x [batch, rows, cols]` → `y [batch, cols, rows]`.
pub fn transpose<F: Float>(x: &[F], y: &mut [F], batch: usize, rows: usize, cols: usize) -> Result<()> {
    let len = batch * rows * cols;
    check_len("transpose", "x", x.len(), len)?;
    check_len("transpose", "y", y.len(), len)?;
    if rows == 0 {
        return Ok(());
    }
    // One task per output row (b, c): it gathers column c of x[b].
    y.par_chunks_mut(rows).enumerate().for_each(|(bc, y_row)| {
        let (b, c) = (bc / cols, bc % cols);
        let x_b = &x[b * rows * cols..(b + 1) * rows * cols];
        for (r, y) in y_row.iter_mut().enumerate() {
            *y = x_b[r * cols + c];
        }
    });
    Ok(())
}

/// Copies `rows` rows of `cols` elements: row r of `src` starts at `r·src_stride`, of `dst` at `r·dst_stride`; the
/// other elements of `dst` are left as they are.
pub fn copy_rows<F: Float>(
    src: &[F],
    src_stride: usize,
    dst: &mut [F],
    dst_stride: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    // Rows that overlap in dst would make the result depend on the copy order.
    if rows > 1 && dst_stride < cols {
        return Err(Error::Invalid {
            op: "copy_rows",
            msg: format!("dst_stride {dst_stride} is smaller than cols {cols}: the destination rows would overlap"),
        });
    }
    check_min_len("copy_rows", "src", src.len(), (rows - 1) * src_stride + cols)?;
    check_min_len("copy_rows", "dst", dst.len(), (rows - 1) * dst_stride + cols)?;
    // A memory copy: one thread is as fast as several.
    for r in 0..rows {
        dst[r * dst_stride..r * dst_stride + cols].copy_from_slice(&src[r * src_stride..r * src_stride + cols]);
    }
    Ok(())
}

/// `Σ f(x)` in f64: fixed blocks summed in parallel, then the partials summed in order.
fn reduce<F: Float>(x: &[F], f: fn(f64) -> f64) -> f64 {
    let partials: Vec<f64> =
        x.par_chunks(REDUCE_BLOCK).map(|block| block.iter().map(|v| f(v.as_f64())).sum()).collect();
    partials.iter().sum()
}

/// `Σ x²` in f64 (global gradient norm).
pub fn sum_squares<F: Float>(x: &[F]) -> f64 {
    reduce(x, |v| v * v)
}

/// `Σ x` in f64 (loss reductions).
pub fn sum<F: Float>(x: &[F]) -> f64 {
    reduce(x, |v| v)
}
