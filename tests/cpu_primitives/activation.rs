//! Tests of backend::cpu::activation.

use cliprt::backend::cpu::activation;
use cliprt::backend::Activation;
use cliprt::testing::{self, assert_close, check_gradient, dot, normal, normal_away_from, poisoned};

const KINDS: [Activation; 3] = [Activation::Relu, Activation::Gelu, Activation::QuickGelu];

/// The definitions, written out in f64.
fn naive(kind: Activation, x: f64) -> f64 {
    match kind {
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())),
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }
}

#[test]
fn activation_forward_matches_hand_values() {
    let x = [-2.0, -1.0, 0.0, 0.5, 1.0, 3.0];
    let want: [(Activation, [f64; 6]); 3] = [
        (Activation::Relu, [0.0, 0.0, 0.0, 0.5, 1.0, 3.0]),
        // ½x(1 + erf(x/√2)) = x·Φ(x): Φ(1) = 0.8413447460685429, Φ(2) = 0.9772498680518208, Φ(0.5) = 0.6914624612740131.
        (
            Activation::Gelu,
            [
                -2.0 * (1.0 - 0.9772498680518208),
                -(1.0 - 0.8413447460685429),
                0.0,
                0.5 * 0.6914624612740131,
                0.8413447460685429,
                3.0 * 0.9986501019683699,
            ],
        ),
        // x·σ(1.702x): σ(1.702) = 0.8457957...
        (
            Activation::QuickGelu,
            [
                -2.0 / (1.0 + 3.404f64.exp()),
                -1.0 / (1.0 + 1.702f64.exp()),
                0.0,
                0.5 / (1.0 + (-0.851f64).exp()),
                1.0 / (1.0 + (-1.702f64).exp()),
                3.0 / (1.0 + (-5.106f64).exp()),
            ],
        ),
    ];
    for (kind, want) in want {
        let mut y = poisoned::<f64>(x.len());
        activation::forward(kind, &x, &mut y).unwrap();
        assert_close(&format!("{kind:?} f64"), 0, &y, &want, 1e-14, 1e-15);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        let mut y32 = poisoned::<f32>(x.len());
        activation::forward(kind, &x32, &mut y32).unwrap();
        assert_close(&format!("{kind:?} f32"), 0, &y32, &want32, 1e-6, 1e-7);
    }
    assert!((naive(Activation::QuickGelu, 1.0) - 0.845_795_7).abs() < 1e-6);
}

#[test]
fn activation_forward_matches_naive_on_random_inputs() {
    let seed = testing::seed(101);
    let mut rng = testing::rng(seed);
    for &len in &[1usize, 7, 1000, 40_000] {
        let x: Vec<f32> = normal(&mut rng, len, 3.0);
        for kind in KINDS {
            let mut y = poisoned::<f32>(len);
            activation::forward(kind, &x, &mut y).unwrap();
            let want: Vec<f32> = x.iter().map(|&v| naive(kind, v as f64) as f32).collect();
            assert_close(&format!("{kind:?} len {len}"), seed, &y, &want, 1e-6, 1e-6);
        }
    }
}

/// Gradient check of one activation on several lengths, away from ReLU's kink.
fn check_activation_grad(kind: Activation, seed: u64) {
    let mut rng = testing::rng(seed);
    for &len in &[1usize, 2, 13, 100] {
        let x = normal_away_from(&mut rng, len, &[0.0], 1e-3);
        let w: Vec<f64> = normal(&mut rng, len, 1.0);
        let mut dx = poisoned::<f64>(len);
        activation::backward(kind, &x, &w, &mut dx).unwrap();
        check_gradient(&format!("{kind:?} len {len}"), seed, &x, &dx, 100, |x| {
            let mut y = poisoned::<f64>(len);
            activation::forward(kind, x, &mut y).unwrap();
            dot(&w, &y)
        });
    }
}

#[test]
fn relu_grad_matches_finite_differences() {
    check_activation_grad(Activation::Relu, testing::seed(102));
}

#[test]
fn gelu_grad_matches_finite_differences() {
    check_activation_grad(Activation::Gelu, testing::seed(103));
}

#[test]
fn quick_gelu_grad_matches_finite_differences() {
    check_activation_grad(Activation::QuickGelu, testing::seed(104));
}

#[test]
fn softmax_forward_rows_sum_to_one_and_match_naive() {
    let seed = testing::seed(105);
    let mut rng = testing::rng(seed);
    for &(rows, cols) in &[(1usize, 1usize), (1, 5), (4, 1), (3, 7), (17, 33)] {
        // Large logits: only a max-subtracted softmax stays finite.
        let x: Vec<f64> = normal(&mut rng, rows * cols, 300.0);
        let mut y = poisoned::<f64>(rows * cols);
        activation::softmax_forward(&x, &mut y, rows, cols).unwrap();
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = row.iter().map(|v| (v - max).exp()).sum();
            let want: Vec<f64> = row.iter().map(|v| (v - max).exp() / total).collect();
            assert_close(
                &format!("softmax {rows}x{cols} row {r}"),
                seed,
                &y[r * cols..(r + 1) * cols],
                &want,
                1e-14,
                1e-300,
            );
            let sum: f64 = y[r * cols..(r + 1) * cols].iter().sum();
            assert!((sum - 1.0).abs() < 1e-12, "row {r} sums to {sum} (seed {seed})");
        }
    }
    // A hand case: softmax(0, ln 3) = (1/4, 3/4).
    let mut y = [f32::NAN; 2];
    activation::softmax_forward(&[0.0f32, 3f32.ln()], &mut y, 1, 2).unwrap();
    assert_close("softmax hand", 0, &y, &[0.25, 0.75], 1e-6, 1e-7);
}

#[test]
fn softmax_grad_matches_finite_differences() {
    let seed = testing::seed(106);
    let mut rng = testing::rng(seed);
    for &(rows, cols) in &[(1usize, 1usize), (1, 6), (5, 3), (4, 11)] {
        let x: Vec<f64> = normal(&mut rng, rows * cols, 2.0);
        let w: Vec<f64> = normal(&mut rng, rows * cols, 1.0);
        let mut y = poisoned::<f64>(rows * cols);
        activation::softmax_forward(&x, &mut y, rows, cols).unwrap();
        let mut dx = poisoned::<f64>(rows * cols);
        activation::softmax_backward(&y, &w, &mut dx, rows, cols).unwrap();
        check_gradient(&format!("softmax {rows}x{cols}"), seed, &x, &dx, 100, |x| {
            let mut y = poisoned::<f64>(rows * cols);
            activation::softmax_forward(x, &mut y, rows, cols).unwrap();
            dot(&w, &y)
        });
    }
}

#[test]
fn activation_shape_mismatch_is_error() {
    let x = [1.0f32; 6];
    let mut short = [0.0f32; 5];
    assert!(activation::forward(Activation::Gelu, &x, &mut short).is_err());
    assert!(activation::backward(Activation::Relu, &x, &x[..5], &mut [0.0; 6]).is_err());
    assert!(activation::softmax_forward(&x, &mut [0.0; 6], 4, 2).is_err());
    assert!(activation::softmax_backward(&x, &x, &mut short, 2, 3).is_err());
}
