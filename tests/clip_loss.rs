//! CPU tests of the generalised CLIP loss (issue #6): `ClipLoss` (symmetric, one-way, row offset, non-square, label
//! smoothing, weights), the CPU reference's gradients by central differences in f64 (image, text, log scale; with and
//! without `dtext`), the saved state, validation errors, and open_clip's local loss (`objective::local_loss`) split
//! over simulated ranks against the global symmetric loss. Every test name contains `clip_loss`.

use cliprt::backend::cpu::{loss, CpuBackend};
use cliprt::backend::ClipLoss;
use cliprt::objective::local_loss::{GatheredGrads, LocalLoss, LocalLossSpec};
use cliprt::testing::{self, assert_close, check_gradient, normal, poisoned};
use cliprt::Error;

type Cpu = CpuBackend<f64>;

fn forward(spec: &ClipLoss, x: &[f64], y: &[f64], t: f64) -> (f64, Vec<f64>) {
    let mut out = poisoned::<f64>(1);
    let mut saved = poisoned::<f64>(loss::clip_loss_saved_len(spec));
    loss::clip_loss_forward(spec, x, y, &[t], &mut out, &mut saved).unwrap();
    (out[0], saved)
}

/// The loss straight from its definition (f64, materialised, no shared code with the reference).
fn definition(spec: &ClipLoss, x: &[f64], y: &[f64], t: f64) -> f64 {
    let (r, c, d) = (spec.rows, spec.cols, spec.dim);
    let unit = |v: &[f64]| {
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        v.iter().map(|a| a / n).collect::<Vec<_>>()
    };
    let xs: Vec<Vec<f64>> = x.chunks(d).map(unit).collect();
    let ys: Vec<Vec<f64>> = y.chunks(d).map(unit).collect();
    let l = |i: usize, j: usize| t.exp() * xs[i].iter().zip(&ys[j]).map(|(a, b)| a * b).sum::<f64>();
    let eps = spec.label_smoothing;
    let ce = |logits: &[f64], target: usize| {
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let k = logits.len() as f64;
        logits
            .iter()
            .enumerate()
            .map(|(j, v)| ((if j == target { 1.0 - eps } else { 0.0 }) + eps / k) * (lse - v))
            .sum::<f64>()
    };
    let mut total = 0.0;
    for i in 0..r {
        let row: Vec<f64> = (0..c).map(|j| l(i, j)).collect();
        total += spec.row_weight * ce(&row, spec.row_offset + i) / r as f64;
    }
    if spec.col_weight != 0.0 {
        for j in 0..c {
            let col: Vec<f64> = (0..r).map(|i| l(i, j)).collect();
            total += spec.col_weight * ce(&col, j) / c as f64;
        }
    }
    total
}

fn specs() -> Vec<(&'static str, ClipLoss)> {
    vec![
        ("symmetric", ClipLoss::symmetric(5, 4)),
        ("symmetric smoothed", ClipLoss::symmetric(6, 3).with_label_smoothing(0.1)),
        ("one-way", ClipLoss::one_way(5, 5, 0, 4)),
        ("one-way offset", ClipLoss::one_way(3, 7, 2, 5).with_label_smoothing(0.1)),
        ("one-way offset last", ClipLoss::one_way(2, 6, 4, 3).with_weights(0.5, 0.0)),
        ("weighted", ClipLoss::symmetric(4, 3).with_weights(0.3, 1.2).with_label_smoothing(0.2)),
        ("n = 1", ClipLoss::one_way(1, 4, 3, 2)),
    ]
}

#[test]
fn clip_loss_forward_matches_the_definition_for_every_form() {
    let seed = testing::seed(6100);
    let mut rng = testing::rng(seed);
    for (name, spec) in specs() {
        let x: Vec<f64> = normal(&mut rng, spec.rows * spec.dim, 1.3);
        let y: Vec<f64> = normal(&mut rng, spec.cols * spec.dim, 0.8);
        let (got, saved) = forward(&spec, &x, &y, 1.7);
        assert_close(&format!("clip_loss {name}"), seed, &[got], &[definition(&spec, &x, &y, 1.7)], 1e-12, 1e-14);
        assert_eq!(saved.len(), 2 * (spec.rows + spec.cols));
        let norms: Vec<f64> = y.chunks(spec.dim).map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt()).collect();
        assert_close("y norms", seed, &saved[2 * spec.rows + spec.cols..], &norms, 1e-14, 0.0);
    }
}

/// Central differences of `dloss·L` for x, y and t, with and without dtext.
#[test]
fn clip_loss_gradients_match_finite_differences_for_every_form() {
    let seed = testing::seed(6101);
    let mut rng = testing::rng(seed);
    let (t, dloss) = (1.2, 0.7);
    for (name, spec) in specs() {
        let x: Vec<f64> = normal(&mut rng, spec.rows * spec.dim, 1.5);
        let y: Vec<f64> = normal(&mut rng, spec.cols * spec.dim, 0.7);
        let (_, saved) = forward(&spec, &x, &y, t);
        let mut dx = poisoned::<f64>(x.len());
        let mut dy = poisoned::<f64>(y.len());
        let mut dt = [0.25];
        loss::clip_loss_backward(&spec, &x, &y, &[t], &saved, dloss, &mut dx, Some(&mut dy), &mut dt).unwrap();
        let f = |x: &[f64], y: &[f64], t: f64| dloss * forward(&spec, x, y, t).0;
        check_gradient(&format!("clip_loss {name} dx"), seed, &x, &dx, 100, |v| f(v, &y, t));
        check_gradient(&format!("clip_loss {name} dy"), seed, &y, &dy, 100, |v| f(&x, v, t));
        check_gradient(&format!("clip_loss {name} dt"), seed, &[t], &[dt[0] - 0.25], 1, |v| f(&x, &y, v[0]));

        // dtext = None: the same dx and dt, nothing else touched.
        let mut dx2 = poisoned::<f64>(x.len());
        let mut dt2 = [0.25];
        loss::clip_loss_backward(&spec, &x, &y, &[t], &saved, dloss, &mut dx2, None, &mut dt2).unwrap();
        assert_eq!(dx, dx2, "clip_loss {name}: dx without dtext (seed {seed})");
        assert_eq!(dt, dt2, "clip_loss {name}: dt without dtext (seed {seed})");
    }
}

#[test]
fn clip_loss_symmetric_is_the_mean_of_two_one_way_terms() {
    // symmetric(n) = ½·one_way(x, y) + ½·one_way(y, x).
    let seed = testing::seed(6102);
    let mut rng = testing::rng(seed);
    let (n, d) = (6, 5);
    let x: Vec<f64> = normal(&mut rng, n * d, 1.0);
    let y: Vec<f64> = normal(&mut rng, n * d, 1.0);
    for eps in [0.0, 0.1] {
        let sym = forward(&ClipLoss::symmetric(n, d).with_label_smoothing(eps), &x, &y, 2.0).0;
        let one = ClipLoss::one_way(n, n, 0, d).with_label_smoothing(eps);
        let halves = 0.5 * (forward(&one, &x, &y, 2.0).0 + forward(&one, &y, &x, 2.0).0);
        assert!((sym - halves).abs() < 1e-13, "clip_loss {sym} vs {halves} (seed {seed})");
    }
}

#[test]
fn clip_loss_validation_names_the_field() {
    let bad = [
        (ClipLoss::symmetric(0, 3), "empty"),
        (ClipLoss::one_way(3, 0, 0, 3), "empty"),
        (ClipLoss::symmetric(3, 0), "empty"),
        (ClipLoss::one_way(3, 4, 2, 3), "row_offset"),
        (ClipLoss::one_way(3, 4, usize::MAX, 3), "row_offset"),
        (ClipLoss::one_way(3, 4, 0, 3).with_weights(0.5, 0.5), "col_weight"),
        (ClipLoss::one_way(3, 3, 0, 3).with_weights(0.5, 0.5), "ok"),
        (ClipLoss { row_offset: 1, ..ClipLoss::symmetric(3, 3) }, "row_offset"),
        (ClipLoss::symmetric(3, 3).with_label_smoothing(1.0), "label_smoothing"),
        (ClipLoss::symmetric(3, 3).with_label_smoothing(-0.1), "label_smoothing"),
        (ClipLoss::symmetric(3, 3).with_weights(f64::NAN, 0.5), "row_weight"),
        (ClipLoss::symmetric(3, 3).with_weights(0.5, f64::INFINITY), "col_weight"),
    ];
    for (spec, field) in bad {
        let r = spec.validate("clip_loss_test");
        if field == "ok" {
            assert!(r.is_ok(), "clip_loss {spec:?}: {r:?}");
            continue;
        }
        match r {
            Err(Error::Invalid { op: "clip_loss_test", msg }) => {
                assert!(msg.contains(field), "clip_loss {spec:?}: message {msg:?} does not name {field}")
            }
            other => panic!("clip_loss {spec:?}: expected Invalid naming {field}, got {other:?}"),
        }
    }
    // The reference checks too, before any shape.
    let spec = ClipLoss::one_way(2, 3, 2, 2);
    let (mut out, mut saved) = ([0.0], vec![0.0; 10]);
    let err = loss::clip_loss_forward(&spec, &[1.0; 4], &[1.0; 6], &[0.0], &mut out, &mut saved).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "clip_loss {err:?}");
    // Shapes follow rows and cols.
    let spec = ClipLoss::one_way(2, 3, 1, 2);
    let err = loss::clip_loss_forward(&spec, &[1.0; 4], &[1.0; 4], &[0.0], &mut out, &mut saved).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "text", .. }), "clip_loss {err:?}");
    let mut saved = vec![0.0; 10];
    loss::clip_loss_forward(&spec, &[1.0; 4], &[1.0; 6], &[0.0], &mut out, &mut saved).unwrap();
    let (mut dx, mut dy, mut dt) = (vec![0.0; 4], vec![0.0; 5], [0.0]);
    let err =
        loss::clip_loss_backward(&spec, &[1.0; 4], &[1.0; 6], &[0.0], &saved, 1.0, &mut dx, Some(&mut dy), &mut dt)
            .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "dtext", .. }), "clip_loss {err:?}");
}

/// open_clip's local loss over R simulated ranks of B pairs each equals the global symmetric loss: the loss is the
/// mean over ranks, and each row's gradient (its rank's local gradient plus its share of the all-gradients summed over
/// ranks — the all-gather's backward), averaged over ranks as DDP does, is the global gradient; dt likewise.
#[test]
fn clip_loss_local_loss_over_ranks_equals_the_global_loss() {
    let seed = testing::seed(6103);
    let mut rng = testing::rng(seed);
    let (ranks, b, d) = (3usize, 5usize, 4usize);
    let n = ranks * b;
    let t = 2.3;
    let cpu = Cpu::new();
    for eps in [0.0, 0.1] {
        let image: Vec<f64> = normal(&mut rng, n * d, 1.0);
        let text: Vec<f64> = normal(&mut rng, n * d, 1.0);

        let global = ClipLoss::symmetric(n, d).with_label_smoothing(eps);
        let (want_loss, saved) = forward(&global, &image, &text, t);
        let (mut want_di, mut want_dt, mut want_ds) = (vec![0.0; n * d], vec![0.0; n * d], [0.0]);
        loss::clip_loss_backward(
            &global,
            &image,
            &text,
            &[t],
            &saved,
            1.0,
            &mut want_di,
            Some(&mut want_dt),
            &mut want_ds,
        )
        .unwrap();

        let mut loss_sum = 0.0;
        let (mut di, mut dt_) = (vec![0.0; n * d], vec![0.0; n * d]);
        let (mut di_all_sum, mut dt_all_sum) = (vec![0.0; n * d], vec![0.0; n * d]);
        let mut ds = [0.0];
        for r in 0..ranks {
            let rows = r * b * d..(r + 1) * b * d;
            let spec =
                LocalLossSpec { local: b, global: n, offset: r * b, dim: d, label_smoothing: eps, gather_grad: true };
            let mut term = LocalLoss::<Cpu>::new(spec);
            loss_sum += term.forward(&cpu, &image[rows.clone()], &text[rows.clone()], &image, &text, &[t]).unwrap();
            let (mut dil, mut dtl) = (poisoned::<f64>(b * d), poisoned::<f64>(b * d));
            let (mut dia, mut dta) = (poisoned::<f64>(n * d), poisoned::<f64>(n * d));
            term.backward(
                &cpu,
                &image[rows.clone()],
                &text[rows.clone()],
                &image,
                &text,
                &[t],
                1.0,
                &mut dil,
                &mut dtl,
                Some(GatheredGrads { d_image_all: &mut dia, d_text_all: &mut dta }),
                &mut ds,
            )
            .unwrap();
            di[rows.clone()].copy_from_slice(&dil);
            dt_[rows.clone()].copy_from_slice(&dtl);
            for k in 0..n * d {
                di_all_sum[k] += dia[k];
                dt_all_sum[k] += dta[k];
            }
        }
        let r = ranks as f64;
        assert_close("clip_loss local: loss", seed, &[loss_sum / r], &[want_loss], 1e-12, 1e-15);
        let got_di: Vec<f64> = di.iter().zip(&di_all_sum).map(|(a, b)| (a + b) / r).collect();
        let got_dt: Vec<f64> = dt_.iter().zip(&dt_all_sum).map(|(a, b)| (a + b) / r).collect();
        assert_close("clip_loss local: d image", seed, &got_di, &want_di, 1e-11, 1e-15);
        assert_close("clip_loss local: d text", seed, &got_dt, &want_dt, 1e-11, 1e-15);
        assert_close("clip_loss local: dt", seed, &[ds[0] / r], &want_ds, 1e-11, 1e-15);
    }
}

/// Without gradient through the gather (clip-rocket) the gathered keys are constants: the local gradients are those
/// of the one-way terms with `dtext = None`, and passing gathered buffers is an error.
#[test]
fn clip_loss_local_loss_without_gather_gradient() {
    let seed = testing::seed(6104);
    let mut rng = testing::rng(seed);
    let (b, n, d, off) = (3usize, 9usize, 4usize, 3usize);
    let cpu = Cpu::new();
    let image: Vec<f64> = normal(&mut rng, n * d, 1.0);
    let text: Vec<f64> = normal(&mut rng, n * d, 1.0);
    let rows = off * d..(off + b) * d;
    let spec = LocalLossSpec { local: b, global: n, offset: off, dim: d, label_smoothing: 0.1, gather_grad: false };
    let mut term = LocalLoss::<Cpu>::new(spec);
    let got = term.forward(&cpu, &image[rows.clone()], &text[rows.clone()], &image, &text, &[1.5]).unwrap();
    let (mut dil, mut dtl, mut ds) = (poisoned::<f64>(b * d), poisoned::<f64>(b * d), [0.0]);
    term.backward(
        &cpu,
        &image[rows.clone()],
        &text[rows.clone()],
        &image,
        &text,
        &[1.5],
        1.0,
        &mut dil,
        &mut dtl,
        None,
        &mut ds,
    )
    .unwrap();
    // Finite differences of the local loss in the local rows only (the gathered copies held fixed).
    let f = |il: &[f64], tl: &[f64]| {
        let one = spec.term();
        0.5 * definition(&ClipLoss { row_weight: 1.0, ..one }, il, &text, 1.5)
            + 0.5 * definition(&ClipLoss { row_weight: 1.0, ..one }, tl, &image, 1.5)
    };
    assert_close(
        "clip_loss local no-grad: loss",
        seed,
        &[got],
        &[f(&image[rows.clone()], &text[rows.clone()])],
        1e-12,
        0.0,
    );
    check_gradient("clip_loss local no-grad d image", seed, &image[rows.clone()], &dil, 100, |v| {
        f(v, &text[rows.clone()])
    });
    check_gradient("clip_loss local no-grad d text", seed, &text[rows.clone()], &dtl, 100, |v| {
        f(&image[rows.clone()], v)
    });
    let (mut dia, mut dta) = (vec![0.0; n * d], vec![0.0; n * d]);
    let err = term
        .backward(
            &cpu,
            &image[rows.clone()],
            &text[rows.clone()],
            &image,
            &text,
            &[1.5],
            1.0,
            &mut dil,
            &mut dtl,
            Some(GatheredGrads { d_image_all: &mut dia, d_text_all: &mut dta }),
            &mut ds,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "clip_loss {err:?}");
}
