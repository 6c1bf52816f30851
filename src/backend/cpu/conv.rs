//! Convolution (im2col + GEMM) and average pooling over NCHW tensors.
//!
//! A convolution of one image is the product `Y [c_out, P] = W [c_out, K] · col [K, P]`, where `K = c_in·kh·kw`,
//! `P = out_h·out_w` and `col` ("im2col") holds, for each output pixel, the input values under the kernel (zero in
//! the padding). The backward passes are the two other products of the same three matrices.

use rayon::prelude::*;

use super::matmul::gemm_single;
use crate::backend::{Conv2d, Float, Pool2d};
use crate::error::{check_len, Error, Result};

/// The input coordinate that output coordinate `o` reads at kernel offset `k`, or `None` in the zero padding.
fn input_index(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let i = (o * stride + k).checked_sub(pad)?;
    (i < size).then_some(i)
}

/// Rejects descriptors whose output size is undefined (`out_h` would divide by zero or underflow).
fn check_window(
    op: &'static str,
    kernel_h: usize,
    kernel_w: usize,
    stride: usize,
    h: usize,
    w: usize,
    pad: usize,
) -> Result<()> {
    if kernel_h == 0 || kernel_w == 0 || stride == 0 {
        return Err(Error::Invalid {
            op,
            msg: format!("kernel {kernel_h}×{kernel_w} and stride {stride} must be ≥ 1"),
        });
    }
    if h + 2 * pad < kernel_h || w + 2 * pad < kernel_w {
        return Err(Error::Invalid {
            op,
            msg: format!(
                "kernel {kernel_h}×{kernel_w} is larger than the padded input {}×{}",
                h + 2 * pad,
                w + 2 * pad
            ),
        });
    }
    Ok(())
}

fn check_conv(op: &'static str, spec: &Conv2d) -> Result<()> {
    check_window(op, spec.kernel_h, spec.kernel_w, spec.stride, spec.h, spec.w, spec.pad)
}

/// A 1×1 convolution with stride 1 and no padding: `col` is the image itself, no copy needed.
fn is_pointwise(spec: &Conv2d) -> bool {
    spec.kernel_h == 1 && spec.kernel_w == 1 && spec.stride == 1 && spec.pad == 0
}

/// `col [c_in·kh·kw, out_h·out_w]` of one image `x [c_in, h, w]`; row `(ci·kh + ki)·kw + kj` matches the weight
/// layout `[c_out, c_in, kh, kw]`.
fn im2col<F: Float>(spec: &Conv2d, x: &[F], col: &mut [F]) {
    let (out_h, out_w) = (spec.out_h(), spec.out_w());
    let mut rows = col.chunks_exact_mut(out_h * out_w);
    for ci in 0..spec.c_in {
        let plane = &x[ci * spec.h * spec.w..(ci + 1) * spec.h * spec.w];
        for ki in 0..spec.kernel_h {
            for kj in 0..spec.kernel_w {
                let row = rows.next().expect("col has c_in·kh·kw rows");
                for oy in 0..out_h {
                    let iy = input_index(oy, ki, spec.stride, spec.pad, spec.h);
                    for ox in 0..out_w {
                        let ix = input_index(ox, kj, spec.stride, spec.pad, spec.w);
                        row[oy * out_w + ox] = match (iy, ix) {
                            (Some(iy), Some(ix)) => plane[iy * spec.w + ix],
                            _ => F::zero(),
                        };
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `dx [c_in, h, w] = Σ` of the `col` entries that read each input value (overwrites
/// dx; the sum runs in a fixed order).
fn col2im<F: Float>(spec: &Conv2d, col: &[F], dx: &mut [F]) {
    let (out_h, out_w) = (spec.out_h(), spec.out_w());
    dx.fill(F::zero());
    let mut rows = col.chunks_exact(out_h * out_w);
    for ci in 0..spec.c_in {
        let plane = &mut dx[ci * spec.h * spec.w..(ci + 1) * spec.h * spec.w];
        for ki in 0..spec.kernel_h {
            for kj in 0..spec.kernel_w {
                let row = rows.next().expect("col has c_in·kh·kw rows");
                for oy in 0..out_h {
                    let Some(iy) = input_index(oy, ki, spec.stride, spec.pad, spec.h) else { continue };
                    for ox in 0..out_w {
                        if let Some(ix) = input_index(ox, kj, spec.stride, spec.pad, spec.w) {
                            plane[iy * spec.w + ix] += row[oy * out_w + ox];
                        }
                    }
                }
            }
        }
    }
}

/// Output pixels per image below which the images are convolved in groups by one GEMM each (the ViT patch embedding:
/// 16 pixels of 192 values per image); above it, one GEMM per image is large enough on its own.
const BATCHED_MAX_PIXELS: usize = 64;

/// Elements of one group's transposed im2col in the batched path (4 MiB of f32): bounds the scratch whatever the
/// batch size.
const GROUP_ELEMS: usize = 1 << 20;

/// Whether the convolution runs image groups through one GEMM each ([`conv2d_forward`]).
fn batched(spec: &Conv2d) -> bool {
    spec.out_h() * spec.out_w() <= BATCHED_MAX_PIXELS
}

/// Images per group of the batched path: a fixed function of the shape (the groups are part of the summation order
/// of the filter gradient).
fn group_images(spec: &Conv2d) -> usize {
    let per_image = spec.out_h() * spec.out_w() * spec.c_in * spec.kernel_h * spec.kernel_w;
    (GROUP_ELEMS / per_image.max(1)).clamp(1, spec.n.max(1))
}

/// The transposed im2col `colt [out_h·out_w, c_in·kh·kw]` of one image `x [c_in, h, w]`: one row per output pixel,
/// holding the values under the kernel (zero in the padding) in the weight layout's order.
fn im2col_t<F: Float>(spec: &Conv2d, x: &[F], colt: &mut [F]) {
    let (out_w, kw) = (spec.out_w(), spec.kernel_w);
    let kk = spec.c_in * spec.kernel_h * kw;
    for (pixel, row) in colt.chunks_exact_mut(kk).enumerate() {
        let (oy, ox) = (pixel / out_w, pixel % out_w);
        // Where the window's rows start in the input, and whether they lie wholly inside it (no padding): then each
        // is one slice copy (always so for ViT patches).
        let x0 = (ox * spec.stride).checked_sub(spec.pad).filter(|&x0| x0 + kw <= spec.w);
        for (ci_ki, dst) in row.chunks_exact_mut(kw).enumerate() {
            let (ci, ki) = (ci_ki / spec.kernel_h, ci_ki % spec.kernel_h);
            let plane = &x[ci * spec.h * spec.w..(ci + 1) * spec.h * spec.w];
            match (input_index(oy, ki, spec.stride, spec.pad, spec.h), x0) {
                (None, _) => dst.fill(F::zero()),
                (Some(iy), Some(x0)) => dst.copy_from_slice(&plane[iy * spec.w + x0..][..kw]),
                (Some(iy), None) => {
                    for (kj, d) in dst.iter_mut().enumerate() {
                        let ix = input_index(ox, kj, spec.stride, spec.pad, spec.w);
                        *d = ix.map_or(F::zero(), |ix| plane[iy * spec.w + ix]);
                    }
                }
            }
        }
    }
}

/// `dst [cols, rows] = srcᵀ` for one `src [rows, cols]`.
fn transpose_into<F: Float>(src: &[F], rows: usize, cols: usize, dst: &mut [F]) {
    for (c, dst) in dst.chunks_exact_mut(rows).enumerate() {
        for (r, d) in dst.iter_mut().enumerate() {
            *d = src[r * cols + c];
        }
    }
}

/// The transposed im2col of a group of images `x [g, c_in, h, w]`: `colt [g·pixels, kk]`, images in parallel.
fn group_im2col_t<F: Float>(spec: &Conv2d, x: &[F], colt: &mut [F]) {
    let (in_len, per_image) =
        (spec.c_in * spec.h * spec.w, spec.out_h() * spec.out_w() * spec.c_in * spec.kernel_h * spec.kernel_w);
    colt.par_chunks_mut(per_image).zip(x.par_chunks(in_len)).for_each(|(colt, x)| im2col_t(spec, x, colt));
}

/// Batched forward: per group, `Yᵀ [g·pixels, c_out] = colt · Wᵀ` in one GEMM, then each image's `[pixels, c_out]`
/// transposed into its NCHW output.
fn conv2d_forward_batched<F: Float>(spec: &Conv2d, x: &[F], w: &[F], y: &mut [F]) {
    let (in_len, out_len) = (spec.c_in * spec.h * spec.w, spec.c_out * spec.out_h() * spec.out_w());
    let (kk, p, g) = (spec.c_in * spec.kernel_h * spec.kernel_w, spec.out_h() * spec.out_w(), group_images(spec));
    let mut colt = vec![F::zero(); g * p * kk];
    let mut yt = vec![F::zero(); g * out_len];
    for (x, y) in x.chunks(g * in_len).zip(y.chunks_mut(g * out_len)) {
        let images = x.len() / in_len;
        let (colt, yt) = (&mut colt[..images * p * kk], &mut yt[..images * out_len]);
        group_im2col_t(spec, x, colt);
        gemm_single(images * p, spec.c_out, kk, colt, false, w, true, yt, F::one(), F::zero());
        y.par_chunks_mut(out_len).zip(yt.par_chunks(out_len)).for_each(|(y, yt)| transpose_into(yt, p, spec.c_out, y));
    }
}

/// Batched filter gradient: per group in order, `dW += dYᵀ·colt` with `dYᵀ [g·pixels, c_out]` (each image's output
/// gradient transposed) — one GEMM per group.
fn conv2d_backward_filter_batched<F: Float>(spec: &Conv2d, dy: &[F], x: &[F], dw: &mut [F]) {
    let (in_len, out_len) = (spec.c_in * spec.h * spec.w, spec.c_out * spec.out_h() * spec.out_w());
    let (kk, p, g) = (spec.c_in * spec.kernel_h * spec.kernel_w, spec.out_h() * spec.out_w(), group_images(spec));
    let mut colt = vec![F::zero(); g * p * kk];
    let mut dyt = vec![F::zero(); g * out_len];
    for (x, dy) in x.chunks(g * in_len).zip(dy.chunks(g * out_len)) {
        let images = x.len() / in_len;
        let (colt, dyt) = (&mut colt[..images * p * kk], &mut dyt[..images * out_len]);
        group_im2col_t(spec, x, colt);
        dyt.par_chunks_mut(out_len)
            .zip(dy.par_chunks(out_len))
            .for_each(|(dyt, dy)| transpose_into(dy, spec.c_out, p, dyt));
        gemm_single(spec.c_out, kk, images * p, dyt, true, colt, false, dw, F::one(), F::one());
    }
}

/// `y [n, c_out, out_h, out_w] = conv(x [n, c_in, h, w], w [c_out, c_in, kh, kw])`, images in parallel (small outputs:
/// groups of images through one GEMM each).
pub fn conv2d_forward<F: Float>(spec: &Conv2d, x: &[F], w: &[F], y: &mut [F]) -> Result<()> {
    check_conv("conv2d_forward", spec)?;
    check_len("conv2d_forward", "x", x.len(), spec.input_len())?;
    check_len("conv2d_forward", "w", w.len(), spec.weight_len())?;
    check_len("conv2d_forward", "y", y.len(), spec.output_len())?;
    let (in_len, out_len) = (spec.c_in * spec.h * spec.w, spec.c_out * spec.out_h() * spec.out_w());
    let (kk, p) = (spec.c_in * spec.kernel_h * spec.kernel_w, spec.out_h() * spec.out_w());
    let col_len = if is_pointwise(spec) { 0 } else { kk * p };
    if y.is_empty() {
        return Ok(());
    }
    if batched(spec) {
        conv2d_forward_batched(spec, x, w, y);
        return Ok(());
    }
    y.par_chunks_mut(out_len).enumerate().for_each_init(
        || vec![F::zero(); col_len],
        |col, (i, y)| {
            let x = &x[i * in_len..(i + 1) * in_len];
            let col: &[F] = if is_pointwise(spec) {
                x
            } else {
                im2col(spec, x, col);
                col
            };
            gemm_single(spec.c_out, p, kk, w, false, col, false, y, F::one(), F::zero());
        },
    );
    Ok(())
}

/// `dx = ∂L/∂x` (overwritten): `col = Wᵀ·dy` per image, then [`col2im`] sums the columns back onto the pixels.
pub fn conv2d_backward_data<F: Float>(spec: &Conv2d, dy: &[F], w: &[F], dx: &mut [F]) -> Result<()> {
    check_conv("conv2d_backward_data", spec)?;
    check_len("conv2d_backward_data", "dy", dy.len(), spec.output_len())?;
    check_len("conv2d_backward_data", "w", w.len(), spec.weight_len())?;
    check_len("conv2d_backward_data", "dx", dx.len(), spec.input_len())?;
    let (in_len, out_len) = (spec.c_in * spec.h * spec.w, spec.c_out * spec.out_h() * spec.out_w());
    let (kk, p) = (spec.c_in * spec.kernel_h * spec.kernel_w, spec.out_h() * spec.out_w());
    let col_len = if is_pointwise(spec) { 0 } else { kk * p };
    if dx.is_empty() {
        return Ok(());
    }
    dx.par_chunks_mut(in_len).enumerate().for_each_init(
        || vec![F::zero(); col_len],
        |col, (i, dx)| {
            let dy = &dy[i * out_len..(i + 1) * out_len];
            if is_pointwise(spec) {
                gemm_single(spec.c_in, p, spec.c_out, w, true, dy, false, dx, F::one(), F::zero());
            } else {
                gemm_single(kk, p, spec.c_out, w, true, dy, false, col, F::one(), F::zero());
                col2im(spec, col, dx);
            }
        },
    );
    Ok(())
}

/// `dw += ∂L/∂w = Σ_i dy_i · col_iᵀ`, added image after image (or group after group in the batched path) so that
/// the sum runs in a fixed order (each product is split over threads inside the GEMM when it is large).
pub fn conv2d_backward_filter<F: Float>(spec: &Conv2d, dy: &[F], x: &[F], dw: &mut [F]) -> Result<()> {
    check_conv("conv2d_backward_filter", spec)?;
    check_len("conv2d_backward_filter", "dy", dy.len(), spec.output_len())?;
    check_len("conv2d_backward_filter", "x", x.len(), spec.input_len())?;
    check_len("conv2d_backward_filter", "dw", dw.len(), spec.weight_len())?;
    let (in_len, out_len) = (spec.c_in * spec.h * spec.w, spec.c_out * spec.out_h() * spec.out_w());
    let (kk, p) = (spec.c_in * spec.kernel_h * spec.kernel_w, spec.out_h() * spec.out_w());
    if batched(spec) {
        conv2d_backward_filter_batched(spec, dy, x, dw);
        return Ok(());
    }
    let mut col = vec![F::zero(); if is_pointwise(spec) { 0 } else { kk * p }];
    for i in 0..spec.n {
        let x = &x[i * in_len..(i + 1) * in_len];
        let dy = &dy[i * out_len..(i + 1) * out_len];
        let col: &[F] = if is_pointwise(spec) {
            x
        } else {
            im2col(spec, x, &mut col);
            &col
        };
        gemm_single(spec.c_out, kk, p, dy, false, col, true, dw, F::one(), F::one());
    }
    Ok(())
}

fn check_pool(op: &'static str, spec: &Pool2d) -> Result<()> {
    check_window(op, spec.kernel, spec.kernel, spec.stride, spec.h, spec.w, spec.pad)
}

/// `y [n, c, out_h, out_w]`: the mean of each `kernel×kernel` window, zero padding included in the count (always
/// divided by kernel²), planes in parallel.
pub fn avgpool2d_forward<F: Float>(spec: &Pool2d, x: &[F], y: &mut [F]) -> Result<()> {
    check_pool("avgpool2d_forward", spec)?;
    check_len("avgpool2d_forward", "x", x.len(), spec.input_len())?;
    check_len("avgpool2d_forward", "y", y.len(), spec.output_len())?;
    let (h, w, k, s, pad) = (spec.h, spec.w, spec.kernel, spec.stride, spec.pad);
    let (out_h, out_w) = (spec.out_h(), spec.out_w());
    let area = F::of_f64((k * k) as f64);
    if y.is_empty() {
        return Ok(());
    }
    y.par_chunks_mut(out_h * out_w).enumerate().for_each(|(plane, y)| {
        let x = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..out_h {
            for ox in 0..out_w {
                let mut sum = F::zero();
                for iy in (0..k).filter_map(|ki| input_index(oy, ki, s, pad, h)) {
                    for ix in (0..k).filter_map(|kj| input_index(ox, kj, s, pad, w)) {
                        sum += x[iy * w + ix];
                    }
                }
                y[oy * out_w + ox] = sum / area;
            }
        }
    });
    Ok(())
}

/// `dx` (overwritten): each output's gradient, divided by kernel², spread over the input pixels of its window.
pub fn avgpool2d_backward<F: Float>(spec: &Pool2d, dy: &[F], dx: &mut [F]) -> Result<()> {
    check_pool("avgpool2d_backward", spec)?;
    check_len("avgpool2d_backward", "dy", dy.len(), spec.output_len())?;
    check_len("avgpool2d_backward", "dx", dx.len(), spec.input_len())?;
    let (h, w, k, s, pad) = (spec.h, spec.w, spec.kernel, spec.stride, spec.pad);
    let (out_h, out_w) = (spec.out_h(), spec.out_w());
    let area = F::of_f64((k * k) as f64);
    if dx.is_empty() {
        return Ok(());
    }
    dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, dx)| {
        let dy = &dy[plane * out_h * out_w..(plane + 1) * out_h * out_w];
        dx.fill(F::zero());
        for oy in 0..out_h {
            for ox in 0..out_w {
                let g = dy[oy * out_w + ox] / area;
                for iy in (0..k).filter_map(|ki| input_index(oy, ki, s, pad, h)) {
                    for ix in (0..k).filter_map(|kj| input_index(ox, kj, s, pad, w)) {
                        dx[iy * w + ix] += g;
                    }
                }
            }
        }
    });
    Ok(())
}
