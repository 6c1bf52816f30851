//! Tests of backend::cpu::conv.

use cliprt::backend::cpu::conv;
use cliprt::backend::{Conv2d, Float, Pool2d};
use cliprt::testing::{assert_close, check_gradient, dot, normal, poisoned, rng, seed};
use cliprt::Error;

/// Shapes `(n, c_in, h, w, c_out, kernel_h, kernel_w, stride, pad)`: 1×1 (the im2col-free path and strided), 3×3 with
/// stride 1 and 2 and padding 0 and 1, a non-square kernel, non-square inputs, size-1 batches and channels, a kernel
/// as large as the padded input, ViT-style non-overlapping patches, and outputs of more than 64 pixels (one GEMM per
/// image instead of one per group of images).
const CONVS: [Conv2d; 13] = [
    conv_spec(1, 1, 1, 1, 1, 1, 1, 1, 0),
    conv_spec(2, 3, 5, 4, 4, 1, 1, 1, 0),
    conv_spec(2, 3, 5, 7, 2, 1, 1, 2, 0),
    conv_spec(1, 2, 6, 5, 3, 3, 3, 1, 1),
    conv_spec(3, 2, 7, 6, 3, 3, 3, 2, 1),
    conv_spec(2, 1, 5, 5, 2, 3, 3, 1, 0),
    conv_spec(1, 3, 8, 7, 2, 3, 3, 2, 0),
    conv_spec(2, 2, 4, 6, 3, 2, 3, 1, 1),
    conv_spec(1, 2, 3, 3, 1, 5, 5, 1, 1),
    conv_spec(2, 4, 9, 9, 5, 3, 3, 2, 1),
    conv_spec(3, 3, 8, 8, 4, 4, 4, 4, 0),
    conv_spec(2, 2, 10, 9, 3, 3, 3, 1, 1),
    conv_spec(2, 3, 9, 8, 2, 1, 1, 1, 0),
];

#[allow(clippy::too_many_arguments)]
const fn conv_spec(
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: usize,
    pad: usize,
) -> Conv2d {
    Conv2d { n, c_in, h, w, c_out, kernel_h, kernel_w, stride, pad }
}

/// The convolution as its definition: six nested loops over output and kernel, skipping the zero padding.
fn direct_conv<F: Float>(s: &Conv2d, x: &[F], w: &[F]) -> Vec<F> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut y = vec![F::zero(); s.output_len()];
    for i in 0..s.n {
        for co in 0..s.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for ci in 0..s.c_in {
                        for ky in 0..s.kernel_h {
                            for kx in 0..s.kernel_w {
                                let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xv = x[((i * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize].as_f64();
                                let wv = w[((co * s.c_in + ci) * s.kernel_h + ky) * s.kernel_w + kx].as_f64();
                                acc += xv * wv;
                            }
                        }
                    }
                    y[((i * s.c_out + co) * oh + oy) * ow + ox] = F::of_f64(acc);
                }
            }
        }
    }
    y
}

fn check_conv_forward<F: Float>(s: u64, rtol: f64) {
    let mut r = rng(s);
    for spec in CONVS {
        let x: Vec<F> = normal(&mut r, spec.input_len(), 1.0);
        let w: Vec<F> = normal(&mut r, spec.weight_len(), 1.0);
        let mut y = poisoned(spec.output_len());
        conv::conv2d_forward(&spec, &x, &w, &mut y).unwrap();
        assert_close(&format!("conv2d_forward {spec:?}"), s, &y, &direct_conv(&spec, &x, &w), rtol, rtol);
    }
}

#[test]
fn conv2d_forward_matches_direct_loops() {
    let s = seed(201);
    check_conv_forward::<f64>(s, 1e-12);
    check_conv_forward::<f32>(s, 1e-5);
}

#[test]
fn conv2d_backward_data_grad_matches_finite_differences() {
    let s = seed(202);
    let mut r = rng(s);
    for spec in CONVS {
        let x: Vec<f64> = normal(&mut r, spec.input_len(), 1.0);
        let w: Vec<f64> = normal(&mut r, spec.weight_len(), 1.0);
        let dy: Vec<f64> = normal(&mut r, spec.output_len(), 1.0);
        let mut dx = poisoned(spec.input_len());
        conv::conv2d_backward_data(&spec, &dy, &w, &mut dx).unwrap();
        check_gradient(&format!("conv2d dx {spec:?}"), s, &x, &dx, 60, |x| {
            let mut y = poisoned(spec.output_len());
            conv::conv2d_forward(&spec, x, &w, &mut y).unwrap();
            dot(&dy, &y)
        });
    }
}

#[test]
fn conv2d_backward_filter_grad_matches_finite_differences() {
    let s = seed(203);
    let mut r = rng(s);
    for spec in CONVS {
        let x: Vec<f64> = normal(&mut r, spec.input_len(), 1.0);
        let w: Vec<f64> = normal(&mut r, spec.weight_len(), 1.0);
        let dy: Vec<f64> = normal(&mut r, spec.output_len(), 1.0);
        // dw accumulates: start from random contents and check what was added.
        let dw0: Vec<f64> = normal(&mut r, spec.weight_len(), 1.0);
        let mut dw = dw0.clone();
        conv::conv2d_backward_filter(&spec, &dy, &x, &mut dw).unwrap();
        let added: Vec<f64> = dw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
        check_gradient(&format!("conv2d dw {spec:?}"), s, &w, &added, 60, |w| {
            let mut y = poisoned(spec.output_len());
            conv::conv2d_forward(&spec, &x, w, &mut y).unwrap();
            dot(&dy, &y)
        });
    }
}

#[test]
fn conv2d_is_bit_identical_across_thread_counts() {
    let s = seed(204);
    let mut r = rng(s);
    // One GEMM per image, and the ViT patch embedding (groups of images through one GEMM).
    let per_image = Conv2d { n: 4, c_in: 16, h: 15, w: 13, c_out: 24, kernel_h: 3, kernel_w: 3, stride: 1, pad: 1 };
    let patches = Conv2d { n: 64, c_in: 3, h: 32, w: 32, c_out: 40, kernel_h: 8, kernel_w: 8, stride: 8, pad: 0 };
    for spec in [per_image, patches] {
        let x: Vec<f32> = normal(&mut r, spec.input_len(), 1.0);
        let w: Vec<f32> = normal(&mut r, spec.weight_len(), 1.0);
        let dy: Vec<f32> = normal(&mut r, spec.output_len(), 1.0);
        let all = || {
            let mut y = poisoned(spec.output_len());
            let mut dx = poisoned(spec.input_len());
            let mut dw = vec![0f32; spec.weight_len()];
            conv::conv2d_forward(&spec, &x, &w, &mut y).unwrap();
            conv::conv2d_backward_data(&spec, &dy, &w, &mut dx).unwrap();
            conv::conv2d_backward_filter(&spec, &dy, &x, &mut dw).unwrap();
            [y, dx, dw]
        };
        let run = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(all);
        assert_eq!(run(1), run(3), "conv2d {spec:?} (seed {s})");
    }
}

/// Shapes `(n, c, h, w, kernel, stride, pad)`: kernel = stride = 2 (even and odd sizes, the odd edge dropped), overlapping
/// windows, padded windows.
const POOLS: [Pool2d; 6] = [
    pool_spec(1, 1, 2, 2, 2, 2, 0),
    pool_spec(2, 3, 4, 6, 2, 2, 0),
    pool_spec(1, 2, 5, 7, 2, 2, 0),
    pool_spec(2, 1, 5, 4, 3, 1, 1),
    pool_spec(1, 2, 6, 5, 3, 2, 1),
    pool_spec(1, 1, 1, 1, 1, 1, 0),
];

const fn pool_spec(n: usize, c: usize, h: usize, w: usize, kernel: usize, stride: usize, pad: usize) -> Pool2d {
    Pool2d { n, c, h, w, kernel, stride, pad }
}

#[test]
fn avgpool2d_forward_matches_hand_values() {
    // kernel = stride = 2 over one 2×4 plane: the means of the two 2×2 blocks.
    let spec = Pool2d { n: 1, c: 1, h: 2, w: 4, kernel: 2, stride: 2, pad: 0 };
    let mut y = poisoned(2);
    conv::avgpool2d_forward(&spec, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &mut y).unwrap();
    assert_eq!(y, vec![3.5, 5.5]);
    // 3×3 windows, stride 1, padding 1 over a 2×2 plane: every window holds the 4 values and 5 zeros, and the zeros
    // count (count_include_pad): (1 + 2 + 3 + 4)/9.
    let spec = Pool2d { n: 1, c: 1, h: 2, w: 2, kernel: 3, stride: 1, pad: 1 };
    let mut y = poisoned(4);
    conv::avgpool2d_forward(&spec, &[1.0, 2.0, 3.0, 4.0], &mut y).unwrap();
    assert_close("avgpool padded", 0, &y, &[10.0 / 9.0; 4], 1e-15, 0.0);

    // Random shapes against the definition.
    let s = seed(205);
    let mut r = rng(s);
    for spec in POOLS {
        let x: Vec<f64> = normal(&mut r, spec.input_len(), 1.0);
        let mut y = poisoned(spec.output_len());
        conv::avgpool2d_forward(&spec, &x, &mut y).unwrap();
        let (oh, ow, k) = (spec.out_h(), spec.out_w(), spec.kernel);
        let mut want = vec![0.0; spec.output_len()];
        for plane in 0..spec.n * spec.c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = 0.0;
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * spec.stride + ky) as isize - spec.pad as isize;
                            let ix = (ox * spec.stride + kx) as isize - spec.pad as isize;
                            if (0..spec.h as isize).contains(&iy) && (0..spec.w as isize).contains(&ix) {
                                sum += x[(plane * spec.h + iy as usize) * spec.w + ix as usize];
                            }
                        }
                    }
                    want[(plane * oh + oy) * ow + ox] = sum / (k * k) as f64;
                }
            }
        }
        assert_close(&format!("avgpool2d {spec:?}"), s, &y, &want, 1e-14, 1e-14);
    }
}

#[test]
fn avgpool2d_grad_matches_finite_differences() {
    let s = seed(206);
    let mut r = rng(s);
    for spec in POOLS {
        let x: Vec<f64> = normal(&mut r, spec.input_len(), 1.0);
        let dy: Vec<f64> = normal(&mut r, spec.output_len(), 1.0);
        let mut dx = poisoned(spec.input_len());
        conv::avgpool2d_backward(&spec, &dy, &mut dx).unwrap();
        check_gradient(&format!("avgpool2d dx {spec:?}"), s, &x, &dx, 60, |x| {
            let mut y = poisoned(spec.output_len());
            conv::avgpool2d_forward(&spec, x, &mut y).unwrap();
            dot(&dy, &y)
        });
    }
}

#[test]
fn conv_bad_shapes_are_errors() {
    let spec = Conv2d { n: 1, c_in: 2, h: 4, w: 4, c_out: 3, kernel_h: 3, kernel_w: 3, stride: 1, pad: 1 };
    let (x, w) = (vec![0f32; spec.input_len()], vec![0f32; spec.weight_len()]);
    let mut y = vec![0f32; spec.output_len() - 1];
    assert!(matches!(conv::conv2d_forward(&spec, &x, &w, &mut y), Err(Error::Shape { arg: "y", .. })));
    let mut dx = vec![0f32; spec.input_len()];
    assert!(matches!(conv::conv2d_backward_data(&spec, &y, &w, &mut dx), Err(Error::Shape { arg: "dy", .. })));
    let mut dw = vec![0f32; spec.weight_len() + 1];
    let dy = vec![0f32; spec.output_len()];
    assert!(matches!(conv::conv2d_backward_filter(&spec, &dy, &x, &mut dw), Err(Error::Shape { arg: "dw", .. })));
    // A kernel larger than the padded input, or a zero stride, has no output size.
    let big = Conv2d { kernel_h: 7, ..spec };
    assert!(matches!(conv::conv2d_forward(&big, &x, &w, &mut y), Err(Error::Invalid { .. })));
    let pool = Pool2d { n: 1, c: 2, h: 4, w: 4, kernel: 2, stride: 0, pad: 0 };
    assert!(matches!(conv::avgpool2d_forward(&pool, &x, &mut y), Err(Error::Invalid { .. })));
    let pool = Pool2d { stride: 2, ..pool };
    assert!(matches!(conv::avgpool2d_backward(&pool, &dy, &mut dx[..3]), Err(Error::Shape { arg: "dy", .. })));
}
