//! The contrastive compositions of issue #9: one-way InfoNCE, MVS, CL2L, NNS — gradient checks in f64 against central
//! differences for every embedding and log scale, and identities with the symmetric CLIP loss.

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::{Backend, ClipLoss};
use cliprt::objective::contrastive::{Cl2l, Cl2lConfig, Mvs, Nns, OneWayInfoNce, MAX_LOGIT_SCALE};
use cliprt::testing::{self, check_gradient};

type Cpu = CpuBackend<f64>;
const N: usize = 5;
const D: usize = 4;

fn unit_rows(x: &[f64], dim: usize) -> Vec<f64> {
    x.chunks(dim)
        .flat_map(|r| {
            let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
            r.iter().map(move |v| v / norm).collect::<Vec<_>>()
        })
        .collect()
}

fn clip_loss(b: &Cpu, image: &[f64], text: &[f64], t: f64, eps: f64) -> f64 {
    let spec = ClipLoss::symmetric(image.len() / D, D).with_label_smoothing(eps);
    let mut loss = [0.0];
    let mut saved = vec![0.0; b.clip_loss_saved_len(&spec)];
    b.clip_loss_forward(&spec, image, text, &[t], &mut loss, &mut saved).unwrap();
    loss[0]
}

fn one_way(b: &Cpu, f: &[f64], text: &[f64], t: f64, eps: f64, clamp: bool) -> f64 {
    OneWayInfoNce::<Cpu>::new(eps, clamp).forward(b, f, text, &[t], f.len() / D, D).unwrap()
}

#[test]
fn one_way_gradients() {
    let seed = testing::seed(901);
    let mut rng = testing::rng(seed);
    let b = Cpu::new();
    let f = unit_rows(&testing::normal::<f64>(&mut rng, N * D, 1.0), D);
    let text = testing::normal::<f64>(&mut rng, N * D, 1.0);
    let t = 1.3;
    for eps in [0.0, 0.1] {
        let mut term = OneWayInfoNce::<Cpu>::new(eps, true);
        term.forward(&b, &f, &text, &[t], N, D).unwrap();
        let (mut df, mut dtext, mut dt) = (vec![f64::NAN; N * D], vec![f64::NAN; N * D], [0.5]);
        term.backward(&b, &f, &text, 2.0, &mut df, Some(&mut dtext), &mut dt).unwrap();
        let loss = |f: &[f64], text: &[f64], t: f64| 2.0 * one_way(&b, f, text, t, eps, true);
        check_gradient("one_way df", seed, &f, &df, 100, |x| loss(x, &text, t));
        check_gradient("one_way dT", seed, &text, &dtext, 100, |x| loss(&f, x, t));
        check_gradient("one_way dt", seed, &[t], &[dt[0] - 0.5], 1, |x| loss(&f, &text, x[0]));
    }
}

#[test]
fn one_way_is_the_row_term_of_clip_loss() {
    let seed = testing::seed(902);
    let mut rng = testing::rng(seed);
    let b = Cpu::new();
    let f = unit_rows(&testing::normal::<f64>(&mut rng, N * D, 1.0), D);
    let text = unit_rows(&testing::normal::<f64>(&mut rng, N * D, 1.0), D);
    for eps in [0.0, 0.2] {
        // clip = ½(rows + columns), and the column term of (f, T) is the row term of (T, f).
        let rows = one_way(&b, &f, &text, 2.0, eps, false);
        let cols = one_way(&b, &text, &f, 2.0, eps, false);
        let clip = clip_loss(&b, &f, &text, 2.0, eps);
        assert!((0.5 * rows + 0.5 * cols - clip).abs() < 1e-12, "{rows} {cols} {clip}");
        // With T = f the logits are symmetric, so the one-way loss is the whole CLIP loss.
        let same = one_way(&b, &f, &f, 2.0, eps, false);
        assert!((same - clip_loss(&b, &f, &f, 2.0, eps)).abs() < 1e-12);
    }
}

#[test]
fn label_smoothing_follows_the_formula() {
    let seed = testing::seed(903);
    let mut rng = testing::rng(seed);
    let b = Cpu::new();
    let f = unit_rows(&testing::normal::<f64>(&mut rng, N * D, 1.0), D);
    let text = unit_rows(&testing::normal::<f64>(&mut rng, N * D, 1.0), D);
    let (t, eps) = (1.7f64, 0.3);
    let s = t.exp();
    let mut want = 0.0;
    for i in 0..N {
        let logits: Vec<f64> =
            (0..N).map(|j| s * (0..D).map(|k| f[i * D + k] * text[j * D + k]).sum::<f64>()).collect();
        let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
        // −Σ_j y_j log p_j with y = (1−ε)·onehot + ε/n.
        want += (0..N)
            .map(|j| -((1.0 - eps) * if i == j { 1.0 } else { 0.0 } + eps / N as f64) * (logits[j] - lse))
            .sum::<f64>();
    }
    want /= N as f64;
    let got = one_way(&b, &f, &text, t, eps, false);
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    assert!((one_way(&b, &f, &text, t, 0.0, false) - got).abs() > 1e-3);
}

#[test]
fn clamp_caps_the_scale_and_stops_its_gradient() {
    let seed = testing::seed(904);
    let mut rng = testing::rng(seed);
    let b = Cpu::new();
    let f = unit_rows(&testing::normal::<f64>(&mut rng, N * D, 1.0), D);
    let text = unit_rows(&testing::normal::<f64>(&mut rng, N * D, 1.0), D);
    let big = 200f64.ln();
    let capped = one_way(&b, &f, &text, MAX_LOGIT_SCALE.ln(), 0.0, false);
    assert!((one_way(&b, &f, &text, big, 0.0, true) - capped).abs() < 1e-12);
    assert!((one_way(&b, &f, &text, big, 0.0, false) - capped).abs() > 1e-6);
    let mut term = OneWayInfoNce::<Cpu>::new(0.0, true);
    term.forward(&b, &f, &text, &[big], N, D).unwrap();
    let (mut df, mut dt) = (vec![0.0; N * D], [0.0]);
    term.backward(&b, &f, &text, 1.0, &mut df, None, &mut dt).unwrap();
    assert_eq!(dt[0], 0.0);
}

fn views(rng: &mut rand_chacha::ChaCha8Rng, k: usize, dim: usize) -> Vec<Vec<f64>> {
    (0..k).map(|_| testing::normal::<f64>(rng, N * dim, 1.0)).collect()
}

#[test]
fn mvs_gradients_and_identical_views() {
    let seed = testing::seed(905);
    let mut rng = testing::rng(seed);
    let b = Cpu::new();
    let v = views(&mut rng, 4, D);
    let t = 1.1;
    let loss =
        |v: &[Vec<f64>], t: f64| Mvs::<Cpu>::new(true).forward(&b, [&v[0], &v[1]], [&v[2], &v[3]], &[t], N, D).unwrap();
    let mut mvs = Mvs::<Cpu>::new(true);
    mvs.forward(&b, [&v[0], &v[1]], [&v[2], &v[3]], &[t], N, D).unwrap();
    let mut d = vec![vec![f64::NAN; N * D]; 4];
    let mut dt = [0.0];
    {
        let [d0, d1, d2, d3] = &mut d[..] else { unreachable!() };
        mvs.backward(&b, [&v[0], &v[1]], [&v[2], &v[3]], 1.5, [d0, d1], [d2, d3], &mut dt).unwrap();
    }
    for k in 0..4 {
        check_gradient(&format!("mvs d{k}"), seed, &v[k], &d[k], 100, |x| {
            let mut w = v.clone();
            w[k] = x.to_vec();
            1.5 * loss(&w, t)
        });
    }
    check_gradient("mvs dt", seed, &[t], &dt, 1, |x| 1.5 * loss(&v, x[0]));
    // Identical views: the mean of four equal terms is the single CLIP loss.
    let same = Mvs::<Cpu>::new(true).forward(&b, [&v[0], &v[0]], [&v[2], &v[2]], &[t], N, D).unwrap();
    assert!((same - clip_loss(&b, &v[0], &v[2], t, 0.0)).abs() < 1e-12);
}

#[test]
fn cl2l_gradients_and_weights() {
    let seed = testing::seed(906);
    let mut rng = testing::rng(seed);
    let b = Cpu::new();
    let (dg, dl) = (D, 3);
    let g = views(&mut rng, 2, dg);
    let l = views(&mut rng, 4, dl);
    let (tg, tl) = (1.2, 10f64.ln());
    let loss = |g: &[Vec<f64>], l: &[Vec<f64>], tg: f64, tl: f64| {
        Cl2l::<Cpu>::new(Cl2lConfig::default())
            .forward(&b, [&g[0], &g[1]], [&l[0], &l[1]], [&l[2], &l[3]], &[tg], &[tl], N, dg, dl)
            .unwrap()
    };
    // L = ⅔·clip_global + ⅓·Σ_local clip (ε = 0.1 on the local pairs).
    let spec = |dim| ClipLoss::symmetric(N, dim).with_label_smoothing(0.1);
    let local = |i: &[f64], t: &[f64]| {
        let mut out = [0.0];
        let mut saved = vec![0.0; b.clip_loss_saved_len(&spec(dl))];
        b.clip_loss_forward(&spec(dl), i, t, &[tl], &mut out, &mut saved).unwrap();
        out[0]
    };
    let want = 2.0 / 3.0 * clip_loss(&b, &g[0], &g[1], tg, 0.0)
        + (local(&l[0], &l[2]) + local(&l[0], &l[3]) + local(&l[1], &l[2]) + local(&l[1], &l[3])) / 3.0;
    assert!((loss(&g, &l, tg, tl) - want).abs() < 1e-12);

    let mut cl2l = Cl2l::<Cpu>::new(Cl2lConfig::default());
    cl2l.forward(&b, [&g[0], &g[1]], [&l[0], &l[1]], [&l[2], &l[3]], &[tg], &[tl], N, dg, dl).unwrap();
    let mut dgv = vec![vec![f64::NAN; N * dg]; 2];
    let mut dlv = vec![vec![f64::NAN; N * dl]; 4];
    let (mut dtg, mut dtl) = ([0.0], [0.0]);
    {
        let [a, c] = &mut dgv[..] else { unreachable!() };
        let [l0, l1, l2, l3] = &mut dlv[..] else { unreachable!() };
        cl2l.backward(
            &b,
            [&g[0], &g[1]],
            [&l[0], &l[1]],
            [&l[2], &l[3]],
            1.0,
            [a, c],
            [l0, l1],
            [l2, l3],
            &mut dtg,
            &mut dtl,
        )
        .unwrap();
    }
    for k in 0..2 {
        check_gradient(&format!("cl2l global d{k}"), seed, &g[k], &dgv[k], 100, |x| {
            let mut w = g.clone();
            w[k] = x.to_vec();
            loss(&w, &l, tg, tl)
        });
    }
    for k in 0..4 {
        check_gradient(&format!("cl2l local d{k}"), seed, &l[k], &dlv[k], 100, |x| {
            let mut w = l.clone();
            w[k] = x.to_vec();
            loss(&g, &w, tg, tl)
        });
    }
    check_gradient("cl2l dt global", seed, &[tg], &dtg, 1, |x| loss(&g, &l, x[0], tl));
    check_gradient("cl2l dt local", seed, &[tl], &dtl, 1, |x| loss(&g, &l, tg, x[0]));
}

#[test]
fn nns_gradients() {
    let seed = testing::seed(907);
    let mut rng = testing::rng(seed);
    let b = Cpu::new();
    let img = views(&mut rng, 2, D);
    let nn: Vec<Vec<f64>> = views(&mut rng, 2, D).iter().map(|x| unit_rows(x, D)).collect();
    let t = 0.9;
    let loss = |img: &[Vec<f64>], t: f64| {
        Nns::<Cpu>::new(0.0, true).forward(&b, [&img[0], &img[1]], [&nn[0], &nn[1]], &[t], N, D).unwrap()
    };
    // L_NNS = mean over views of ½[CE(f_v, NN(t)) + CE(f_v, NN(t′))].
    let f: Vec<Vec<f64>> = img.iter().map(|x| unit_rows(x, D)).collect();
    let want = 0.25
        * (one_way(&b, &f[0], &nn[0], t, 0.0, true)
            + one_way(&b, &f[0], &nn[1], t, 0.0, true)
            + one_way(&b, &f[1], &nn[0], t, 0.0, true)
            + one_way(&b, &f[1], &nn[1], t, 0.0, true));
    assert!((loss(&img, t) - want).abs() < 1e-12);

    let mut nns = Nns::<Cpu>::new(0.0, true);
    nns.forward(&b, [&img[0], &img[1]], [&nn[0], &nn[1]], &[t], N, D).unwrap();
    let mut d = vec![vec![f64::NAN; N * D]; 2];
    let mut dt = [0.0];
    {
        let [d0, d1] = &mut d[..] else { unreachable!() };
        nns.backward(&b, [&nn[0], &nn[1]], 0.7, [d0, d1], &mut dt).unwrap();
    }
    for k in 0..2 {
        check_gradient(&format!("nns d{k}"), seed, &img[k], &d[k], 100, |x| {
            let mut w = img.clone();
            w[k] = x.to_vec();
            0.7 * loss(&w, t)
        });
    }
    check_gradient("nns dt", seed, &[t], &dt, 1, |x| 0.7 * loss(&img, x[0]));
}
