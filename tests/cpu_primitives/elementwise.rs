//! Tests of backend::cpu::elementwise.

use cliprt::backend::cpu::{elementwise, CpuBackend};
use cliprt::backend::{Backend, Float};
use cliprt::testing::{self, normal, poisoned};
use half::{bf16, f16};

#[test]
fn add_axpy_scale_match_naive() {
    let seed = testing::seed(201);
    let mut rng = testing::rng(seed);
    for &len in &[1usize, 9, 20_001] {
        let a: Vec<f32> = normal(&mut rng, len, 1.0);
        let b: Vec<f32> = normal(&mut rng, len, 1.0);
        let mut out = poisoned::<f32>(len);
        elementwise::add(&a, &b, &mut out).unwrap();
        let want: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
        assert_eq!(out, want, "add len {len} (seed {seed})");

        let mut y = b.clone();
        elementwise::axpy(-0.75, &a, &mut y).unwrap();
        let want: Vec<f32> = a.iter().zip(&b).map(|(a, b)| b + -0.75 * a).collect();
        assert_eq!(y, want, "axpy len {len} (seed {seed})");

        let mut y = a.clone();
        elementwise::scale(2.5, &mut y).unwrap();
        let want: Vec<f32> = a.iter().map(|a| a * 2.5).collect();
        assert_eq!(y, want, "scale len {len} (seed {seed})");
    }
    // Through the trait, master buffers included.
    let cpu = CpuBackend::<f64>::new();
    let mut y = vec![1.0, -2.0];
    cpu.scale_master(0.5, &mut y).unwrap();
    assert_eq!(y, [0.5, -1.0]);
    assert!(elementwise::add(&[1.0f32; 3], &[1.0; 2], &mut [0.0; 3]).is_err());
    assert!(elementwise::axpy(1.0, &[1.0f32; 3], &mut [0.0; 4]).is_err());
}

/// Round trip through bf16 and f16 of values each format holds exactly, in F = f32 and f64.
fn check_round_trip<F: Float>() {
    let exact_both = [0.0, -0.0, 1.0, -2.5, 0.15625, 3.140625, 1024.0, -0.001953125, 96.0];
    let x: Vec<F> = exact_both.iter().map(|&v| F::of_f64(v)).collect();
    let mut b = vec![bf16::NAN; x.len()];
    elementwise::cast_to_bf16(&x, &mut b).unwrap();
    let mut back = poisoned::<F>(x.len());
    elementwise::cast_from_bf16(&b, &mut back).unwrap();
    assert_eq!(back, x, "bf16 round trip ({:?})", F::DTYPE);
    assert_eq!(b[6], bf16::from_f32(1024.0));

    // f16 holds 11 significant bits and reaches 65504; bf16 has the f32 range.
    let x16: Vec<F> = [65504.0, 1.0 + 1.0 / 1024.0, -6.103515625e-5, 2047.0].iter().map(|&v| F::of_f64(v)).collect();
    let mut h = vec![f16::NAN; x16.len()];
    elementwise::cast_to_f16(&x16, &mut h).unwrap();
    let mut back = poisoned::<F>(x16.len());
    elementwise::cast_from_f16(&h, &mut back).unwrap();
    assert_eq!(back, x16, "f16 round trip ({:?})", F::DTYPE);
    let big = [F::of_f64(3.0e38)];
    let mut b = [bf16::ZERO];
    elementwise::cast_to_bf16(&big, &mut b).unwrap();
    assert!((b[0].to_f64() / 3.0e38 - 1.0).abs() < 4e-3, "bf16 keeps the f32 range");
}

#[test]
fn bf16_and_f16_round_trip_exactly_representable_values() {
    check_round_trip::<f32>();
    check_round_trip::<f64>();
}

/// Ties go to the even neighbour; anything past the tie rounds up.
fn check_round_to_nearest_even<F: Float>() {
    // bf16 keeps 7 fraction bits: 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷ (odd), 1 + 3·2⁻⁸ halfway between
    // 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶ (even).
    let u = 2f64.powi(-8);
    let x: Vec<F> =
        [1.0 + u, 1.0 + 3.0 * u, -(1.0 + u), 1.0 + u + 2f64.powi(-20)].iter().map(|&v| F::of_f64(v)).collect();
    let mut y = vec![bf16::NAN; x.len()];
    elementwise::cast_to_bf16(&x, &mut y).unwrap();
    let got: Vec<f64> = y.iter().map(|v| v.to_f64()).collect();
    assert_eq!(got, [1.0, 1.0 + 4.0 * u, -1.0, 1.0 + 2.0 * u], "bf16 rounding ({:?})", F::DTYPE);

    // f16 keeps 10 fraction bits.
    let u = 2f64.powi(-11);
    let x: Vec<F> = [1.0 + u, 1.0 + 3.0 * u, 1.0 + u + 2f64.powi(-20)].iter().map(|&v| F::of_f64(v)).collect();
    let mut y = vec![f16::NAN; x.len()];
    elementwise::cast_to_f16(&x, &mut y).unwrap();
    let got: Vec<f64> = y.iter().map(|v| v.to_f64()).collect();
    assert_eq!(got, [1.0, 1.0 + 4.0 * u, 1.0 + 2.0 * u], "f16 rounding ({:?})", F::DTYPE);
}

#[test]
fn casts_round_to_nearest_even() {
    check_round_to_nearest_even::<f32>();
    check_round_to_nearest_even::<f64>();
    // Through the trait, and against half's own f32 conversion on random values.
    let seed = testing::seed(202);
    let mut rng = testing::rng(seed);
    let x: Vec<f32> = normal(&mut rng, 999, 10.0);
    let cpu = CpuBackend::<f32>::new();
    let mut b = vec![bf16::NAN; x.len()];
    cpu.cast_to_bf16(&x, &mut b).unwrap();
    let mut h = vec![f16::NAN; x.len()];
    cpu.cast_to_f16(&x, &mut h).unwrap();
    for (i, &v) in x.iter().enumerate() {
        assert_eq!(b[i].to_bits(), bf16::from_f32(v).to_bits(), "bf16 of {v} (seed {seed})");
        assert_eq!(h[i].to_bits(), f16::from_f32(v).to_bits(), "f16 of {v} (seed {seed})");
    }
    assert!(elementwise::cast_to_bf16(&x, &mut b[..5]).is_err());
    assert!(elementwise::cast_from_f16(&h, &mut [0.0f32; 3]).is_err());
}

#[test]
fn transpose_matches_naive_and_is_its_own_inverse() {
    let seed = testing::seed(203);
    let mut rng = testing::rng(seed);
    for &(batch, rows, cols) in &[(1usize, 1usize, 1usize), (1, 1, 6), (2, 5, 1), (3, 4, 7), (2, 33, 17)] {
        let x: Vec<f32> = normal(&mut rng, batch * rows * cols, 1.0);
        let mut y = poisoned::<f32>(x.len());
        elementwise::transpose(&x, &mut y, batch, rows, cols).unwrap();
        for b in 0..batch {
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        y[(b * cols + c) * rows + r],
                        x[(b * rows + r) * cols + c],
                        "({b},{r},{c}) (seed {seed})"
                    );
                }
            }
        }
        let mut back = poisoned::<f32>(x.len());
        elementwise::transpose(&y, &mut back, batch, cols, rows).unwrap();
        assert_eq!(back, x);
    }
    // [[1, 2, 3], [4, 5, 6]]ᵀ.
    let mut y = [0.0f64; 6];
    elementwise::transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut y, 1, 2, 3).unwrap();
    assert_eq!(y, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert!(elementwise::transpose(&[0.0f32; 6], &mut [0.0; 6], 1, 2, 4).is_err());
}

#[test]
fn copy_rows_writes_only_the_rows() {
    // Class token + patch tokens: copy 3 rows of 2 from a packed source into rows of stride 5 starting at 1.
    let src = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut dst = [-1.0f32; 16];
    elementwise::copy_rows(&src, 2, &mut dst[1..], 5, 3, 2).unwrap();
    let want = [-1.0, 1.0, 2.0, -1.0, -1.0, -1.0, 3.0, 4.0, -1.0, -1.0, -1.0, 5.0, 6.0, -1.0, -1.0, -1.0];
    assert_eq!(dst, want);
    // A strided source (every other row), and a single row with any stride.
    let mut dst = [0.0f32; 4];
    elementwise::copy_rows(&src, 3, &mut dst, 2, 2, 2).unwrap();
    assert_eq!(dst, [1.0, 2.0, 4.0, 5.0]);
    let mut dst = [0.0f32; 3];
    elementwise::copy_rows(&src[3..], 0, &mut dst, 0, 1, 3).unwrap();
    assert_eq!(dst, [4.0, 5.0, 6.0]);
    // Too short a source or destination, and overlapping destination rows.
    assert!(elementwise::copy_rows(&src, 2, &mut [0.0f32; 16], 5, 4, 2).is_err());
    assert!(elementwise::copy_rows(&src, 2, &mut [0.0f32; 11], 5, 3, 2).is_err());
    assert!(elementwise::copy_rows(&src, 2, &mut [0.0f32; 16], 1, 3, 2).is_err());
}

#[test]
fn sum_and_sum_squares_match_naive() {
    assert_eq!(elementwise::sum(&[1.0f32, 2.0, 3.0]), 6.0);
    assert_eq!(elementwise::sum_squares(&[1.0f32, 2.0, 3.0]), 14.0);
    assert_eq!(elementwise::sum::<f64>(&[]), 0.0);
    let seed = testing::seed(204);
    let mut rng = testing::rng(seed);
    for &len in &[1usize, 17, 4096, 4097, 50_001] {
        let x: Vec<f32> = normal(&mut rng, len, 1.0);
        let want_sum: f64 = x.iter().map(|&v| v as f64).sum();
        let want_sq: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let got_sum = elementwise::sum(&x);
        let got_sq = elementwise::sum_squares(&x);
        assert!((got_sum - want_sum).abs() <= 1e-12 * (1.0 + want_sq), "sum len {len}: {got_sum} vs {want_sum}");
        assert!((got_sq - want_sq).abs() <= 1e-12 * want_sq, "sum_squares len {len}: {got_sq} vs {want_sq}");
        // The same bits every time (fixed reduction order).
        assert_eq!(elementwise::sum(&x).to_bits(), got_sum.to_bits());
        let cpu = CpuBackend::<f32>::new();
        assert_eq!(cpu.sum_squares(&x).unwrap().to_bits(), got_sq.to_bits());
    }
}
