//! Tests of backend::cpu::optim.

use cliprt::backend::cpu::{optim, CpuBackend};
use cliprt::backend::{AdamW, Backend, DecaySegment};
use cliprt::testing::{self, assert_close, normal};
use cliprt::Error;

/// One AdamW step on one scalar, as the brief states it (PyTorch's `torch.optim.AdamW`).
fn scalar_adamw(hp: &AdamW, decay: bool, p: &mut f64, g: f64, m: &mut f64, v: &mut f64) {
    if decay {
        *p -= hp.lr * hp.weight_decay * *p;
    }
    *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
    *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
    let m_hat = *m / (1.0 - hp.beta1.powi(hp.step as i32));
    let v_hat = *v / (1.0 - hp.beta2.powi(hp.step as i32));
    *p -= hp.lr * m_hat / (v_hat.sqrt() + hp.eps);
}

fn hp(step: u64) -> AdamW {
    AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.98, eps: 1e-8, weight_decay: 0.1, step }
}

/// Segments of the given lengths, decaying every other one (the first decays).
fn segments(lens: &[usize]) -> Vec<DecaySegment> {
    let mut start = 0;
    lens.iter()
        .enumerate()
        .map(|(i, &len)| {
            let seg = DecaySegment { start, len, decay: i % 2 == 0 };
            start += len;
            seg
        })
        .collect()
}

#[test]
fn adamw_one_step_matches_scalar_formula() {
    // A hand case: p = 1, g = 0.5, m = v = 0 at step 1 with decay: p·(1 − lr·wd) − lr·ĝ/(|ĝ| + eps).
    let h = hp(1);
    let (mut p, mut m, mut v) = ([1.0f64], [0.0f64], [0.0f64]);
    let seg = [DecaySegment { start: 0, len: 1, decay: true }];
    optim::adamw_update(&h, &seg, &mut p, &[0.5], &mut m, &mut v).unwrap();
    let want = 1.0 - 1e-2 * 0.1 - 1e-2 * 0.5 / (0.5 + 1e-8);
    assert!((p[0] - want).abs() < 1e-15, "{} vs {want}", p[0]);
    assert!((m[0] - 0.05).abs() < 1e-16 && (v[0] - 0.02 * 0.25).abs() < 1e-16);

    let seed = testing::seed(501);
    let mut rng = testing::rng(seed);
    for lens in [vec![1usize], vec![3, 4], vec![5, 0, 7, 1], vec![20_000, 17]] {
        let n: usize = lens.iter().sum();
        let segs = segments(&lens);
        let mut p: Vec<f64> = normal(&mut rng, n, 1.0);
        let g: Vec<f64> = normal(&mut rng, n, 1.0);
        let mut m: Vec<f64> = normal(&mut rng, n, 0.1);
        let mut v: Vec<f64> = normal(&mut rng, n, 0.1).iter().map(|x: &f64| x * x).collect();
        let h = hp(3);
        let (mut p_ref, mut m_ref, mut v_ref) = (p.clone(), m.clone(), v.clone());
        for seg in &segs {
            for i in seg.start..seg.start + seg.len {
                scalar_adamw(&h, seg.decay, &mut p_ref[i], g[i], &mut m_ref[i], &mut v_ref[i]);
            }
        }
        optim::adamw_update(&h, &segs, &mut p, &g, &mut m, &mut v).unwrap();
        assert_close(&format!("params {lens:?}"), seed, &p, &p_ref, 1e-14, 1e-15);
        assert_close(&format!("m {lens:?}"), seed, &m, &m_ref, 1e-14, 1e-16);
        assert_close(&format!("v {lens:?}"), seed, &v, &v_ref, 1e-14, 1e-16);
    }
}

#[test]
fn adamw_several_steps_decay_only_where_the_segment_says() {
    let seed = testing::seed(502);
    let mut rng = testing::rng(seed);
    let lens = [4usize, 3, 5];
    let segs = segments(&lens);
    let n = 12;
    let mut p: Vec<f64> = normal(&mut rng, n, 1.0);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let (mut p_ref, mut m_ref, mut v_ref) = (p.clone(), m.clone(), v.clone());
    for step in 1..=6 {
        let h = hp(step);
        let g: Vec<f64> = normal(&mut rng, n, 1.0);
        optim::adamw_update(&h, &segs, &mut p, &g, &mut m, &mut v).unwrap();
        for seg in &segs {
            for i in seg.start..seg.start + seg.len {
                scalar_adamw(&h, seg.decay, &mut p_ref[i], g[i], &mut m_ref[i], &mut v_ref[i]);
            }
        }
        assert_close(&format!("params after step {step}"), seed, &p, &p_ref, 1e-13, 1e-15);
    }
    // With zero gradients and moments, only decaying segments move: p·(1 − lr·wd).
    let h = hp(1);
    let mut p = vec![2.0f64; n];
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    optim::adamw_update(&h, &segs, &mut p, &vec![0.0; n], &mut m, &mut v).unwrap();
    for seg in &segs {
        let want = if seg.decay { 2.0 * (1.0 - 1e-2 * 0.1) } else { 2.0 };
        assert!(p[seg.start..seg.start + seg.len].iter().all(|&x| x == want), "segment {seg:?}: {p:?}");
    }
    // f32 through the trait, with the shadow copy, agrees with the f64 formula.
    let h = hp(2);
    let p0: Vec<f64> = normal(&mut rng, n, 1.0);
    let g: Vec<f64> = normal(&mut rng, n, 1.0);
    let (mut p_ref, mut m_ref, mut v_ref) = (p0.clone(), vec![0.01; n], vec![0.02; n]);
    for seg in &segs {
        for i in seg.start..seg.start + seg.len {
            scalar_adamw(&h, seg.decay, &mut p_ref[i], g[i], &mut m_ref[i], &mut v_ref[i]);
        }
    }
    let mut p32: Vec<f32> = p0.iter().map(|&x| x as f32).collect();
    let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
    let (mut m32, mut v32) = (vec![0.01f32; n], vec![0.02f32; n]);
    let mut shadow = vec![f32::NAN; n];
    CpuBackend::<f32>::new().adamw_update(&h, &segs, &mut p32, &g32, &mut m32, &mut v32, Some(&mut shadow)).unwrap();
    let want: Vec<f32> = p_ref.iter().map(|&x| x as f32).collect();
    assert_close("f32 params", seed, &p32, &want, 1e-6, 1e-7);
    assert_eq!(shadow, p32);
}

#[test]
fn adamw_bad_segments_and_step_are_errors() {
    let h = hp(1);
    let n = 6;
    let run = |segs: &[DecaySegment], h: &AdamW| {
        let (mut p, mut m, mut v) = (vec![1.0f32; n], vec![0.0; n], vec![0.0; n]);
        let result = optim::adamw_update(h, segs, &mut p, &[1.0; 6], &mut m, &mut v);
        if result.is_err() {
            assert_eq!(p, vec![1.0; n], "nothing is updated on error");
        }
        result
    };
    let seg = |start, len| DecaySegment { start, len, decay: true };
    assert!(run(&[seg(0, 2), seg(2, 4)], &h).is_ok());
    for bad in [
        vec![seg(0, 2), seg(3, 3)], // gap
        vec![seg(0, 3), seg(2, 4)], // overlap
        vec![seg(0, 5)],            // short
        vec![seg(0, 4), seg(4, 3)], // past the end
        vec![seg(1, 5)],            // does not start at 0
        vec![seg(2, 4), seg(0, 2)], // out of order
        vec![],
    ] {
        assert!(matches!(run(&bad, &h), Err(Error::Invalid { .. })), "{bad:?}");
    }
    assert!(matches!(run(&[seg(0, 6)], &hp(0)), Err(Error::Invalid { .. })), "step 0");
    let (mut p, mut m, mut v) = (vec![1.0f32; n], vec![0.0; n], vec![0.0; 5]);
    assert!(matches!(
        optim::adamw_update(&h, &[seg(0, 6)], &mut p, &[1.0; 6], &mut m, &mut v),
        Err(Error::Shape { .. })
    ));
}
