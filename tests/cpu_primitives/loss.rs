//! Tests of backend::cpu::loss.

use cliprt::backend::cpu::{loss, CpuBackend};
use cliprt::backend::{Backend, ClipLoss};
use cliprt::testing::{self, assert_close, check_gradient, indices, normal, poisoned};
use cliprt::Error;

const IGNORE: i32 = -100;

fn lse(x: &[f64]) -> f64 {
    let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    max + x.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Cross-entropy of one row against a full target distribution: `Σ_j y_j·(lse − x_j)`.
fn soft_ce(x: &[f64], y: &[f64]) -> f64 {
    let l = lse(x);
    x.iter().zip(y).map(|(x, y)| y * (l - x)).sum()
}

/// `(1−ε)·onehot(t) + ε/classes`.
fn smoothed(t: usize, classes: usize, eps: f64) -> Vec<f64> {
    (0..classes).map(|j| eps / classes as f64 + if j == t { 1.0 - eps } else { 0.0 }).collect()
}

#[test]
fn cross_entropy_forward_matches_hand_values() {
    // Row 0: logits (1, 2, 3), target 2: lse = ln(e + e² + e³) = 3.4076059644443806.
    // Row 1: ignored. Row 2: logits (0, 0, 0), target 0: ln 3.
    let logits = [1.0f64, 2.0, 3.0, 5.0, -1.0, 0.0, 0.0, 0.0, 0.0];
    let targets = [2, IGNORE, 0];
    let l0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    assert!((l0 - 3.40760596444438).abs() < 1e-13);
    for eps in [0.0, 0.1] {
        let mut losses = poisoned::<f64>(3);
        let mut lses = poisoned::<f64>(3);
        loss::cross_entropy_forward(&logits, &targets, &mut losses, &mut lses, 3, 3, IGNORE, eps).unwrap();
        // (1−ε)(lse − x_t) + ε(lse − mean x).
        let want = [(1.0 - eps) * (l0 - 3.0) + eps * (l0 - 2.0), 0.0, 3f64.ln()];
        assert_close(&format!("losses eps {eps}"), 0, &losses, &want, 1e-14, 1e-15);
        assert!((lses[0] - l0).abs() < 1e-14 && (lses[2] - 3f64.ln()).abs() < 1e-15);
        assert!(lses[1].is_finite(), "an ignored row still gets a finite lse");
    }
}

#[test]
fn cross_entropy_forward_matches_soft_target_formula() {
    let seed = testing::seed(601);
    let mut rng = testing::rng(seed);
    for &(rows, classes, eps) in &[(1usize, 1usize, 0.0), (1, 4, 0.1), (6, 5, 0.0), (9, 13, 0.2), (4, 1000, 0.1)] {
        // Large logits: only a max-subtracted lse stays finite in f32.
        let logits: Vec<f32> = normal(&mut rng, rows * classes, 30.0);
        let mut targets = indices(&mut rng, rows, classes);
        if rows > 2 {
            targets[1] = IGNORE;
        }
        let mut losses = poisoned::<f32>(rows);
        let mut lses = poisoned::<f32>(rows);
        CpuBackend::<f32>::new()
            .cross_entropy_forward(&logits, &targets, &mut losses, &mut lses, rows, classes, IGNORE, eps)
            .unwrap();
        let want: Vec<f32> = (0..rows)
            .map(|r| {
                if targets[r] == IGNORE {
                    return 0.0;
                }
                let x: Vec<f64> = logits[r * classes..(r + 1) * classes].iter().map(|&v| v as f64).collect();
                soft_ce(&x, &smoothed(targets[r] as usize, classes, eps)) as f32
            })
            .collect();
        assert_close(&format!("ce {rows}x{classes} eps {eps}"), seed, &losses, &want, 1e-5, 1e-5);
    }
}

#[test]
fn cross_entropy_grad_matches_finite_differences() {
    let seed = testing::seed(602);
    let mut rng = testing::rng(seed);
    for &(rows, classes, eps) in &[(1usize, 1usize, 0.0), (1, 3, 0.0), (5, 4, 0.0), (7, 6, 0.1), (3, 9, 0.3)] {
        let logits: Vec<f64> = normal(&mut rng, rows * classes, 2.0);
        let mut targets = indices(&mut rng, rows, classes);
        if rows > 2 {
            targets[rows - 1] = IGNORE;
        }
        let count = targets.iter().filter(|&&t| t != IGNORE).count();
        let grad_scale = 1.0 / count as f64;
        let mut losses = poisoned::<f64>(rows);
        let mut lses = poisoned::<f64>(rows);
        loss::cross_entropy_forward(&logits, &targets, &mut losses, &mut lses, rows, classes, IGNORE, eps).unwrap();
        let mut dlogits = poisoned::<f64>(rows * classes);
        loss::cross_entropy_backward(&logits, &targets, &lses, &mut dlogits, rows, classes, IGNORE, eps, grad_scale)
            .unwrap();
        if rows > 2 {
            assert!(dlogits[(rows - 1) * classes..].iter().all(|&d| d == 0.0), "ignored row has zero gradient");
        }
        // The mean loss over the rows that count.
        check_gradient(&format!("ce {rows}x{classes} eps {eps}"), seed, &logits, &dlogits, 100, |x| {
            let mut losses = poisoned::<f64>(rows);
            let mut lses = poisoned::<f64>(rows);
            loss::cross_entropy_forward(x, &targets, &mut losses, &mut lses, rows, classes, IGNORE, eps).unwrap();
            losses.iter().sum::<f64>() * grad_scale
        });
    }
}

#[test]
fn cross_entropy_bad_targets_and_shapes_are_errors() {
    let logits = [0.0f32; 6];
    let (mut losses, mut lses) = ([0.0f32; 2], [0.0f32; 2]);
    for bad in [3, -1] {
        let err =
            loss::cross_entropy_forward(&logits, &[0, bad], &mut losses, &mut lses, 2, 3, IGNORE, 0.0).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }) && err.to_string().contains(&bad.to_string()), "{err}");
        let mut d = [0.0f32; 6];
        assert!(loss::cross_entropy_backward(&logits, &[bad, 0], &lses, &mut d, 2, 3, IGNORE, 0.0, 1.0).is_err());
    }
    assert!(loss::cross_entropy_forward(&logits, &[0, 1], &mut losses, &mut lses, 2, 3, IGNORE, 1.5).is_err());
    assert!(matches!(
        loss::cross_entropy_forward(&logits, &[0, 1], &mut losses, &mut lses, 3, 2, IGNORE, 0.0),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        loss::cross_entropy_backward(&logits, &[0, 1], &lses[..1], &mut [0.0; 6], 2, 3, IGNORE, 0.0, 1.0),
        Err(Error::Shape { .. })
    ));
}

/// SPEC §1.1 written out: normalise, materialise Λ, smoothed CE of the rows and of the columns, averaged.
fn clip_loss_naive(image: &[f64], text: &[f64], t: f64, n: usize, dim: usize, eps: f64) -> f64 {
    let normalise = |x: &[f64]| -> Vec<f64> {
        x.chunks(dim)
            .flat_map(|r| {
                let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                r.iter().map(move |v| v / norm)
            })
            .collect()
    };
    let (a, b) = (normalise(image), normalise(text));
    let logit = |i: usize, j: usize| t.exp() * (0..dim).map(|d| a[i * dim + d] * b[j * dim + d]).sum::<f64>();
    let mut total = 0.0;
    for i in 0..n {
        let row: Vec<f64> = (0..n).map(|j| logit(i, j)).collect();
        let col: Vec<f64> = (0..n).map(|j| logit(j, i)).collect();
        total += soft_ce(&row, &smoothed(i, n, eps)) + soft_ce(&col, &smoothed(i, n, eps));
    }
    total / (2.0 * n as f64)
}

fn clip_forward(spec: &ClipLoss, image: &[f64], text: &[f64], t: f64) -> (f64, Vec<f64>) {
    let mut out = poisoned::<f64>(1);
    let mut saved = poisoned::<f64>(loss::clip_loss_saved_len(spec));
    loss::clip_loss_forward(spec, image, text, &[t], &mut out, &mut saved).unwrap();
    (out[0], saved)
}

#[test]
fn clip_loss_forward_matches_materialised_formula() {
    let seed = testing::seed(603);
    let mut rng = testing::rng(seed);
    for &(n, dim, eps) in &[(1usize, 1usize, 0.0), (2, 3, 0.0), (3, 1, 0.1), (8, 5, 0.0), (13, 16, 0.1)] {
        let image: Vec<f64> = normal(&mut rng, n * dim, 2.0);
        let text: Vec<f64> = normal(&mut rng, n * dim, 0.5);
        let t = (1.0f64 / 0.07).ln();
        let spec = ClipLoss::symmetric(n, dim).with_label_smoothing(eps);
        let (got, saved) = clip_forward(&spec, &image, &text, t);
        let want = clip_loss_naive(&image, &text, t, n, dim, eps);
        assert_close(&format!("clip {n}x{dim} eps {eps}"), seed, &[got], &[want], 1e-12, 1e-14);
        assert_eq!(saved.len(), 4 * n);
        assert!(saved.iter().all(|v| v.is_finite()), "saved fully written (seed {seed})");
        // The saved norms are the row norms.
        let norms: Vec<f64> = image.chunks(dim).map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt()).collect();
        assert_close("image norms", seed, &saved[2 * n..3 * n], &norms, 1e-14, 0.0);

        // f32 through the trait.
        let (i32_, t32_): (Vec<f32>, Vec<f32>) =
            (image.iter().map(|&v| v as f32).collect(), text.iter().map(|&v| v as f32).collect());
        let cpu = CpuBackend::<f32>::new();
        let mut out = [f32::NAN];
        let mut saved32 = poisoned::<f32>(cpu.clip_loss_saved_len(&spec));
        cpu.clip_loss_forward(&spec, &i32_, &t32_, &[t as f32], &mut out, &mut saved32).unwrap();
        assert_close(&format!("clip f32 {n}x{dim}"), seed, &out, &[want as f32], 2e-5, 1e-5);
    }
}

#[test]
fn clip_loss_hand_cases() {
    // n = 1: one class, so the loss is 0 whatever the scale or smoothing.
    for eps in [0.0, 0.1] {
        let spec = ClipLoss::symmetric(1, 3).with_label_smoothing(eps);
        let (l, _) = clip_forward(&spec, &[1.0, 2.0, 3.0], &[-1.0, 0.5, 4.0], 4.0);
        assert!(l.abs() < 1e-15, "n = 1 loss {l}");
    }
    // Orthogonal pairs (scaled unit vectors, image i ∥ text i): Λ = s·I, every row and column has the same CE,
    // ln(e^s + 2) − s with s = 10.
    let spec = ClipLoss::symmetric(3, 3);
    let image = [2.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 7.0];
    let text = [3.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.25];
    let s: f64 = 10.0;
    let (l, saved) = clip_forward(&spec, &image, &text, s.ln());
    let want = (s.exp() + 2.0).ln() - s;
    assert!((l - want).abs() < 1e-14, "{l} vs {want}");
    assert_close("row lse", 0, &saved[..3], &[(s.exp() + 2.0).ln(); 3], 1e-14, 0.0);
    assert_close("norms", 0, &saved[6..], &[2.0, 0.5, 7.0, 3.0, 1.0, 0.25], 1e-15, 0.0);
    // Smoothed: 0.9·(lse − s) + 0.1·(lse − s/3).
    let spec = ClipLoss { label_smoothing: 0.1, ..spec };
    let (l, _) = clip_forward(&spec, &image, &text, s.ln());
    let lse = (s.exp() + 2.0).ln();
    let want = 0.9 * (lse - s) + 0.1 * (lse - s / 3.0);
    assert!((l - want).abs() < 1e-13, "{l} vs {want}");
}

/// Gradient check of the CLIP loss for image, text and the log scale together.
fn check_clip_grad(seed: u64, eps: f64) {
    let mut rng = testing::rng(seed);
    for &(n, dim) in &[(1usize, 2usize), (2, 1), (3, 4), (6, 5)] {
        let spec = ClipLoss::symmetric(n, dim).with_label_smoothing(eps);
        let image: Vec<f64> = normal(&mut rng, n * dim, 1.5);
        let text: Vec<f64> = normal(&mut rng, n * dim, 0.7);
        let t = 1.2;
        let dloss = 0.7;
        let (_, saved) = clip_forward(&spec, &image, &text, t);
        let mut dimage = poisoned::<f64>(n * dim);
        let mut dtext = poisoned::<f64>(n * dim);
        let mut dt = [0.25]; // accumulated into
        loss::clip_loss_backward(&spec, &image, &text, &[t], &saved, dloss, &mut dimage, Some(&mut dtext), &mut dt)
            .unwrap();
        let label = |what: &str| format!("clip {what} {n}x{dim} eps {eps}");
        check_gradient(&label("image"), seed, &image, &dimage, 100, |x| dloss * clip_forward(&spec, x, &text, t).0);
        check_gradient(&label("text"), seed, &text, &dtext, 100, |x| dloss * clip_forward(&spec, &image, x, t).0);
        check_gradient(&label("log_scale"), seed, &[t], &[dt[0] - 0.25], 1, |x| {
            dloss * clip_forward(&spec, &image, &text, x[0]).0
        });
    }
}

#[test]
fn clip_loss_grad_matches_finite_differences_for_image_text_and_scale() {
    check_clip_grad(testing::seed(604), 0.0);
}

#[test]
fn clip_loss_label_smoothing_grad_matches_finite_differences() {
    check_clip_grad(testing::seed(605), 0.1);
}

#[test]
fn clip_loss_bad_shapes_are_errors() {
    let spec = ClipLoss::symmetric(2, 3);
    let x = [1.0f32; 6];
    let (mut out, mut saved) = ([0.0f32], [0.0f32; 8]);
    assert!(loss::clip_loss_forward(&spec, &x, &x, &[1.0], &mut out, &mut saved).is_ok());
    assert!(matches!(
        loss::clip_loss_forward(&spec, &x[..5], &x, &[1.0], &mut out, &mut saved),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        loss::clip_loss_forward(&spec, &x, &x, &[1.0], &mut out, &mut saved[..7]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(loss::clip_loss_forward(&spec, &x, &x, &[], &mut out, &mut saved), Err(Error::Shape { .. })));
    let empty = ClipLoss::symmetric(0, 3);
    assert!(loss::clip_loss_forward(&empty, &[], &[], &[1.0f32], &mut out, &mut []).is_err());
    let (mut di, mut dt, mut ds) = ([0.0f32; 6], [0.0f32; 6], [0.0f32]);
    assert!(loss::clip_loss_backward(&spec, &x, &x, &[1.0], &saved, 1.0, &mut di, Some(&mut dt[..4]), &mut ds).is_err());
    assert!(loss::clip_loss_backward(&spec, &x, &x, &[1.0], &saved[..4], 1.0, &mut di, Some(&mut dt), &mut ds).is_err());
    let bad = ClipLoss { label_smoothing: -0.1, ..spec };
    assert!(loss::clip_loss_forward(&bad, &x, &x, &[1.0], &mut out, &mut saved).is_err());
}

#[test]
fn clip_loss_is_bit_identical_across_thread_counts() {
    let seed = testing::seed(606);
    let mut rng = testing::rng(seed);
    let spec = ClipLoss::symmetric(37, 24).with_label_smoothing(0.1);
    let image: Vec<f32> = normal(&mut rng, spec.rows * spec.dim, 1.0);
    let text: Vec<f32> = normal(&mut rng, spec.rows * spec.dim, 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let (mut out, mut saved) = ([f32::NAN], poisoned::<f32>(loss::clip_loss_saved_len(&spec)));
            loss::clip_loss_forward(&spec, &image, &text, &[2.0], &mut out, &mut saved).unwrap();
            let (mut di, mut dt, mut ds) = (poisoned::<f32>(image.len()), poisoned::<f32>(text.len()), [0.0f32]);
            loss::clip_loss_backward(&spec, &image, &text, &[2.0], &saved, 1.0, &mut di, Some(&mut dt), &mut ds)
                .unwrap();
            [out.to_vec(), saved, di, dt, ds.to_vec()].concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        })
    };
    assert_eq!(run(1), run(3), "seed {seed}");
}
