//! Tests of backend::cpu::norm.

use cliprt::backend::cpu::norm;
use cliprt::backend::BatchNorm;
use cliprt::testing::{assert_close, check_gradient, dot, normal, poisoned, rng, seed, uniform};
use cliprt::Error;

/// `(rows, cols)` with size-1 rows and columns and odd sizes; 70 columns cross a 64-column chunk.
const ROWS: [(usize, usize); 5] = [(1, 1), (1, 6), (4, 1), (5, 7), (3, 70)];

/// LayerNorm by its definition, in f64: `(y, mean, rstd)`.
fn layernorm_ref(x: &[f64], gamma: &[f64], beta: &[f64], cols: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut y, mut means, mut rstds) = (vec![], vec![], vec![]);
    for row in x.chunks(cols) {
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        y.extend(row.iter().enumerate().map(|(j, v)| (v - mean) * rstd * gamma[j] + beta[j]));
        means.push(mean);
        rstds.push(rstd);
    }
    (y, means, rstds)
}

#[test]
fn layernorm_forward_matches_formula() {
    let s = seed(301);
    let mut r = rng(s);
    for (rows, cols) in ROWS {
        let x: Vec<f64> = normal(&mut r, rows * cols, 2.0);
        let gamma: Vec<f64> = normal(&mut r, cols, 1.0);
        let beta: Vec<f64> = normal(&mut r, cols, 1.0);
        let (mut y, mut mean, mut rstd) = (poisoned(rows * cols), poisoned(rows), poisoned(rows));
        norm::layernorm_forward(&x, &gamma, &beta, &mut y, &mut mean, &mut rstd, rows, cols, 1e-5).unwrap();
        let (y_ref, mean_ref, rstd_ref) = layernorm_ref(&x, &gamma, &beta, cols, 1e-5);
        let label = format!("layernorm {rows}×{cols}");
        assert_close(&format!("{label} y"), s, &y, &y_ref, 1e-12, 1e-12);
        assert_close(&format!("{label} mean"), s, &mean, &mean_ref, 1e-12, 1e-12);
        assert_close(&format!("{label} rstd"), s, &rstd, &rstd_ref, 1e-12, 1e-12);

        // The f32 path against the same reference.
        let to32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let (x32, g32, b32) = (to32(&x), to32(&gamma), to32(&beta));
        let (mut y, mut mean, mut rstd) = (poisoned(rows * cols), poisoned(rows), poisoned(rows));
        norm::layernorm_forward(&x32, &g32, &b32, &mut y, &mut mean, &mut rstd, rows, cols, 1e-5).unwrap();
        let x32_64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
        let g32_64: Vec<f64> = g32.iter().map(|&v| v as f64).collect();
        let b32_64: Vec<f64> = b32.iter().map(|&v| v as f64).collect();
        let (y_ref, _, _) = layernorm_ref(&x32_64, &g32_64, &b32_64, cols, 1e-5);
        assert_close(&format!("{label} f32 y"), s, &y, &to32(&y_ref), 1e-5, 1e-5);
    }
}

#[test]
fn layernorm_grad_matches_finite_differences() {
    let s = seed(302);
    let mut r = rng(s);
    let eps = 1e-5;
    for (rows, cols) in ROWS {
        let x: Vec<f64> = normal(&mut r, rows * cols, 1.0);
        let gamma: Vec<f64> = normal(&mut r, cols, 1.0);
        let beta: Vec<f64> = normal(&mut r, cols, 1.0);
        let w: Vec<f64> = normal(&mut r, rows * cols, 1.0);
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
            let (mut y, mut mean, mut rstd) = (poisoned(rows * cols), poisoned(rows), poisoned(rows));
            norm::layernorm_forward(x, gamma, beta, &mut y, &mut mean, &mut rstd, rows, cols, eps).unwrap();
            dot(&w, &y)
        };
        let (mut y, mut mean, mut rstd) = (poisoned(rows * cols), poisoned(rows), poisoned(rows));
        norm::layernorm_forward(&x, &gamma, &beta, &mut y, &mut mean, &mut rstd, rows, cols, eps).unwrap();
        // dgamma and dbeta accumulate: start from random contents and check what was added.
        let (dgamma0, dbeta0): (Vec<f64>, Vec<f64>) = (normal(&mut r, cols, 1.0), normal(&mut r, cols, 1.0));
        let (mut dx, mut dgamma, mut dbeta) = (poisoned(rows * cols), dgamma0.clone(), dbeta0.clone());
        norm::layernorm_backward(&w, &x, &gamma, &mean, &rstd, &mut dx, &mut dgamma, &mut dbeta, rows, cols).unwrap();
        let added = |d: &[f64], d0: &[f64]| d.iter().zip(d0).map(|(a, b)| a - b).collect::<Vec<_>>();
        let label = format!("layernorm {rows}×{cols}");
        check_gradient(&format!("{label} dx"), s, &x, &dx, 60, |x| loss(x, &gamma, &beta));
        check_gradient(&format!("{label} dgamma"), s, &gamma, &added(&dgamma, &dgamma0), 60, |g| loss(&x, g, &beta));
        check_gradient(&format!("{label} dbeta"), s, &beta, &added(&dbeta, &dbeta0), 60, |b| loss(&x, &gamma, b));
    }
}

/// `(n, channels, spatial)`: BatchNorm1d (spatial 1), BatchNorm2d, a single channel, a single image.
const BATCHES: [(usize, usize, usize); 5] = [(2, 1, 1), (5, 3, 1), (2, 4, 6), (1, 2, 9), (3, 1, 5)];

fn bn_spec((n, channels, spatial): (usize, usize, usize)) -> BatchNorm {
    BatchNorm { n, channels, spatial, eps: 1e-5, momentum: 0.1 }
}

/// The values of channel `c`.
fn channel_values(spec: &BatchNorm, x: &[f64], c: usize) -> Vec<f64> {
    (0..spec.n)
        .flat_map(|i| (0..spec.spatial).map(move |p| (i, p)))
        .map(|(i, p)| x[(i * spec.channels + c) * spec.spatial + p])
        .collect()
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64)
}

/// Training-mode forward on scratch running statistics: `(y, save_mean, save_rstd)`.
fn bn_train(
    spec: &BatchNorm,
    x: &[f64],
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = spec.channels;
    let (mut y, mut mean, mut rstd) = (poisoned(spec.len()), poisoned(c), poisoned(c));
    let (mut running_mean, mut running_var) = (vec![0.0; c], vec![1.0; c]);
    norm::batchnorm_forward_train(
        spec,
        x,
        gamma,
        beta,
        &mut y,
        &mut mean,
        &mut rstd,
        &mut running_mean,
        &mut running_var,
    )
    .unwrap();
    (y, mean, rstd)
}

#[test]
fn batchnorm_train_normalises_each_channel() {
    let s = seed(303);
    let mut r = rng(s);
    for shape in BATCHES {
        let spec = BatchNorm { eps: 0.0, ..bn_spec(shape) };
        // Shifted and scaled inputs: every channel comes out with mean 0 and (biased) variance 1.
        let x: Vec<f64> = normal::<f64>(&mut r, spec.len(), 3.0).iter().map(|v| v + 2.0).collect();
        let ones = vec![1.0; spec.channels];
        let zeros = vec![0.0; spec.channels];
        let (y, mean, rstd) = bn_train(&spec, &x, Some(&ones), Some(&zeros));
        for c in 0..spec.channels {
            let (m, v) = mean_var(&channel_values(&spec, &y, c));
            assert!(m.abs() < 1e-12, "channel {c} of {spec:?}: mean {m} (seed {s})");
            assert!((v - 1.0).abs() < 1e-10, "channel {c} of {spec:?}: variance {v} (seed {s})");
            let (m, v) = mean_var(&channel_values(&spec, &x, c));
            assert_close(&format!("{spec:?} save_mean[{c}]"), s, &mean[c..c + 1], &[m], 1e-12, 1e-12);
            assert_close(&format!("{spec:?} save_rstd[{c}]"), s, &rstd[c..c + 1], &[1.0 / v.sqrt()], 1e-10, 1e-10);
        }
        // With gamma and beta: y = gamma·x̂ + beta, x̂ from the affine=False forward.
        let spec = bn_spec(shape);
        let gamma: Vec<f64> = normal(&mut r, spec.channels, 1.0);
        let beta: Vec<f64> = normal(&mut r, spec.channels, 1.0);
        let (y, _, _) = bn_train(&spec, &x, Some(&gamma), Some(&beta));
        let (xhat, _, _) = bn_train(&spec, &x, None, None);
        let want: Vec<f64> = xhat
            .iter()
            .enumerate()
            .map(|(i, v)| v * gamma[(i / spec.spatial) % spec.channels] + beta[(i / spec.spatial) % spec.channels])
            .collect();
        assert_close(&format!("batchnorm affine {spec:?}"), s, &y, &want, 1e-12, 1e-12);
    }
}

#[test]
fn batchnorm_running_stats_follow_pytorch_update() {
    let s = seed(304);
    let mut r = rng(s);
    // (1, 2, 1) has one value per channel: the biased variance (0) stands in for the undefined unbiased one.
    for shape in BATCHES.into_iter().chain([(1, 2, 1)]) {
        let spec = BatchNorm { momentum: 0.3, ..bn_spec(shape) };
        let c = spec.channels;
        let x: Vec<f64> = normal(&mut r, spec.len(), 2.0);
        let rm0: Vec<f64> = normal(&mut r, c, 1.0);
        let rv0: Vec<f64> = uniform(&mut r, c, 0.5, 2.0);
        let (mut running_mean, mut running_var) = (rm0.clone(), rv0.clone());
        let (mut y, mut mean, mut rstd) = (poisoned(spec.len()), poisoned(c), poisoned(c));
        norm::batchnorm_forward_train(
            &spec,
            &x,
            None,
            None,
            &mut y,
            &mut mean,
            &mut rstd,
            &mut running_mean,
            &mut running_var,
        )
        .unwrap();
        let count = spec.n * spec.spatial;
        for ch in 0..c {
            let (m, v) = mean_var(&channel_values(&spec, &x, ch));
            let unbiased = if count > 1 { v * count as f64 / (count - 1) as f64 } else { v };
            let want_mean = 0.7 * rm0[ch] + 0.3 * m;
            let want_var = 0.7 * rv0[ch] + 0.3 * unbiased;
            assert_close(
                &format!("{spec:?} running_mean[{ch}]"),
                s,
                &running_mean[ch..ch + 1],
                &[want_mean],
                1e-12,
                1e-12,
            );
            assert_close(
                &format!("{spec:?} running_var[{ch}]"),
                s,
                &running_var[ch..ch + 1],
                &[want_var],
                1e-12,
                1e-12,
            );
        }
    }
}

#[test]
fn batchnorm_eval_uses_running_stats() {
    let s = seed(305);
    let mut r = rng(s);
    for shape in BATCHES {
        let spec = bn_spec(shape);
        let c = spec.channels;
        let x: Vec<f64> = normal(&mut r, spec.len(), 2.0);
        let running_mean: Vec<f64> = normal(&mut r, c, 1.0);
        let running_var: Vec<f64> = uniform(&mut r, c, 0.5, 2.0);
        let gamma: Vec<f64> = normal(&mut r, c, 1.0);
        let beta: Vec<f64> = normal(&mut r, c, 1.0);
        for affine in [true, false] {
            let (g, b) = if affine { (Some(&gamma[..]), Some(&beta[..])) } else { (None, None) };
            let mut y = poisoned(spec.len());
            norm::batchnorm_forward_eval(&spec, &x, g, b, &running_mean, &running_var, &mut y).unwrap();
            let want: Vec<f64> = x
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let ch = (i / spec.spatial) % c;
                    let xhat = (v - running_mean[ch]) / (running_var[ch] + spec.eps).sqrt();
                    if affine {
                        xhat * gamma[ch] + beta[ch]
                    } else {
                        xhat
                    }
                })
                .collect();
            assert_close(&format!("batchnorm eval {spec:?} affine {affine}"), s, &y, &want, 1e-12, 1e-12);
        }
    }
}

#[test]
fn batchnorm_grad_matches_finite_differences() {
    let s = seed(306);
    let mut r = rng(s);
    for shape in BATCHES {
        let spec = bn_spec(shape);
        let c = spec.channels;
        let x: Vec<f64> = normal(&mut r, spec.len(), 1.5);
        let gamma: Vec<f64> = normal(&mut r, c, 1.0);
        let beta: Vec<f64> = normal(&mut r, c, 1.0);
        let w: Vec<f64> = normal(&mut r, spec.len(), 1.0);
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| dot(&w, &bn_train(&spec, x, Some(gamma), Some(beta)).0);
        let (_, mean, rstd) = bn_train(&spec, &x, Some(&gamma), Some(&beta));
        let (dgamma0, dbeta0): (Vec<f64>, Vec<f64>) = (normal(&mut r, c, 1.0), normal(&mut r, c, 1.0));
        let (mut dx, mut dgamma, mut dbeta) = (poisoned(spec.len()), dgamma0.clone(), dbeta0.clone());
        norm::batchnorm_backward(
            &spec,
            &w,
            &x,
            Some(&gamma),
            &mean,
            &rstd,
            &mut dx,
            Some(&mut dgamma),
            Some(&mut dbeta),
        )
        .unwrap();
        let added = |d: &[f64], d0: &[f64]| d.iter().zip(d0).map(|(a, b)| a - b).collect::<Vec<_>>();
        let label = format!("batchnorm {spec:?}");
        check_gradient(&format!("{label} dx"), s, &x, &dx, 60, |x| loss(x, &gamma, &beta));
        check_gradient(&format!("{label} dgamma"), s, &gamma, &added(&dgamma, &dgamma0), 60, |g| loss(&x, g, &beta));
        check_gradient(&format!("{label} dbeta"), s, &beta, &added(&dbeta, &dbeta0), 60, |b| loss(&x, &gamma, b));
    }
}

#[test]
fn batchnorm_without_affine_grad_matches_finite_differences() {
    let s = seed(307);
    let mut r = rng(s);
    for shape in BATCHES {
        let spec = bn_spec(shape);
        let x: Vec<f64> = normal(&mut r, spec.len(), 1.5);
        let w: Vec<f64> = normal(&mut r, spec.len(), 1.0);
        let (_, mean, rstd) = bn_train(&spec, &x, None, None);
        let mut dx = poisoned(spec.len());
        norm::batchnorm_backward(&spec, &w, &x, None, &mean, &rstd, &mut dx, None, None).unwrap();
        check_gradient(&format!("batchnorm affine=False {spec:?} dx"), s, &x, &dx, 60, |x| {
            dot(&w, &bn_train(&spec, x, None, None).0)
        });
    }
}

#[test]
fn l2norm_forward_gives_unit_rows() {
    let s = seed(308);
    let mut r = rng(s);
    for (rows, cols) in ROWS {
        let x: Vec<f32> = normal(&mut r, rows * cols, 3.0);
        let (mut y, mut norms) = (poisoned(rows * cols), poisoned(rows));
        norm::l2norm_forward(&x, &mut y, &mut norms, rows, cols).unwrap();
        for (i, (row, yrow)) in x.chunks(cols).zip(y.chunks(cols)).enumerate() {
            let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert_close(&format!("l2norm {rows}×{cols} norm[{i}]"), s, &norms[i..i + 1], &[norm as f32], 1e-6, 0.0);
            let unit: f64 = yrow.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!((unit - 1.0).abs() < 1e-6, "l2norm {rows}×{cols} row {i}: ‖y‖ = {unit} (seed {s})");
            let want: Vec<f32> = row.iter().map(|&v| (v as f64 / norm) as f32).collect();
            assert_close(&format!("l2norm {rows}×{cols} row {i}"), s, yrow, &want, 1e-6, 1e-7);
        }
    }
    // A zero row stays zero (norm 0, clamped to 1e-12); a tiny row is divided by 1e-12, not by its norm.
    let x = [0.0, 0.0, 3e-14, -4e-14];
    let (mut y, mut norms) = (poisoned(4), poisoned(2));
    norm::l2norm_forward(&x, &mut y, &mut norms, 2, 2).unwrap();
    assert_close("l2norm clamped norms", s, &norms, &[0.0, 5e-14], 1e-12, 0.0);
    assert_close("l2norm clamped y", s, &y, &[0.0, 0.0, 0.03, -0.04], 1e-12, 0.0);
}

#[test]
fn l2norm_grad_matches_finite_differences() {
    let s = seed(309);
    let mut r = rng(s);
    for (rows, cols) in ROWS {
        let x: Vec<f64> = normal(&mut r, rows * cols, 1.0);
        let w: Vec<f64> = normal(&mut r, rows * cols, 1.0);
        let forward = |x: &[f64]| {
            let (mut y, mut norms) = (poisoned(rows * cols), poisoned(rows));
            norm::l2norm_forward(x, &mut y, &mut norms, rows, cols).unwrap();
            (y, norms)
        };
        let (y, norms) = forward(&x);
        let mut dx = poisoned(rows * cols);
        norm::l2norm_backward(&w, &y, &norms, &mut dx, rows, cols).unwrap();
        check_gradient(&format!("l2norm {rows}×{cols} dx"), s, &x, &dx, 60, |x| dot(&w, &forward(x).0));
    }
    // Where the norm was clamped, y = x/1e-12 is linear: dx = dy/1e-12 (central differences cannot probe it, their
    // step of 1e-6 leaves the clamped region).
    let (y, norms) = ([0.0, 0.0, 0.03, -0.04], [0.0, 5e-14]);
    let dy = [1.0, -2.0, 0.5, 3.0];
    let mut dx = poisoned(4);
    norm::l2norm_backward(&dy, &y, &norms, &mut dx, 2, 2).unwrap();
    assert_close("l2norm clamped dx", s, &dx, &[1e12, -2e12, 0.5e12, 3e12], 1e-12, 0.0);
}

#[test]
fn norm_wrong_lengths_are_shape_errors() {
    let x = vec![0f32; 12];
    let (mut y, mut mean, mut rstd) = (vec![0f32; 12], vec![0f32; 3], vec![0f32; 2]);
    let r = norm::layernorm_forward(&x, &x[..4], &x[..4], &mut y, &mut mean, &mut rstd, 3, 4, 1e-5);
    assert!(matches!(r, Err(Error::Shape { arg: "rstd", got: 2, want: 3, .. })));
    let spec = BatchNorm { n: 2, channels: 3, spatial: 2, eps: 1e-5, momentum: 0.1 };
    let r = norm::batchnorm_forward_eval(&spec, &x, Some(&x[..2]), None, &x[..3], &x[..3], &mut y);
    assert!(matches!(r, Err(Error::Shape { arg: "gamma", .. })));
    let mut dgamma = vec![0f32; 4];
    let r = norm::batchnorm_backward(&spec, &x, &x, None, &x[..3], &x[..3], &mut y, Some(&mut dgamma), None);
    assert!(matches!(r, Err(Error::Shape { arg: "dgamma", .. })));
    let mut norms = vec![0f32; 4];
    assert!(matches!(norm::l2norm_forward(&x, &mut y, &mut norms, 3, 4), Err(Error::Shape { arg: "norms", .. })));
    assert!(matches!(norm::l2norm_backward(&x, &x, &norms, &mut y[..11], 4, 3), Err(Error::Shape { arg: "dx", .. })));
}
