//! Tests of backend::cpu::attention.

use cliprt::backend::cpu::{attention, CpuBackend};
use cliprt::backend::{Attention, Backend};
use cliprt::testing::{self, assert_close, check_gradient, dot, normal, poisoned};
use cliprt::Error;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Buffer index of element `d` of head `h` of row `row` (`b·seq + s`) of the region at `offset`.
fn at(spec: &Attention, offset: usize, stride: usize, row: usize, h: usize, d: usize) -> usize {
    offset + row * stride + h * spec.head_dim + d
}

/// Every buffer index that holds an element of Q, K or V.
fn qkv_positions(spec: &Attention) -> Vec<usize> {
    let mut positions = Vec::new();
    for (offset, stride, rows) in [
        (spec.q_offset, spec.q_row_stride, spec.batch * spec.seq_q),
        (spec.k_offset, spec.kv_row_stride, spec.batch * spec.seq_k),
        (spec.v_offset, spec.kv_row_stride, spec.batch * spec.seq_k),
    ] {
        for row in 0..rows {
            for e in 0..spec.width() {
                positions.push(offset + row * stride + e);
            }
        }
    }
    positions
}

/// The definition, one (batch, head, query) at a time: scores of the visible keys, softmax, weighted sum of V.
fn naive(spec: &Attention, qkv: &[f64], mask: Option<&[u8]>) -> Vec<f64> {
    let (sq, sk, hd, width) = (spec.seq_q, spec.seq_k, spec.head_dim, spec.width());
    let mut out = vec![0.0; spec.out_len()];
    for b in 0..spec.batch {
        for h in 0..spec.heads {
            for i in 0..sq {
                let visible: Vec<usize> = (0..sk)
                    .filter(|&j| (!spec.causal || j + sq <= i + sk) && mask.is_none_or(|m| m[b * sk + j] == 0))
                    .collect();
                if visible.is_empty() {
                    continue;
                }
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        let q = (0..hd).map(|d| qkv[at(spec, spec.q_offset, spec.q_row_stride, b * sq + i, h, d)]);
                        let k = (0..hd).map(|d| qkv[at(spec, spec.k_offset, spec.kv_row_stride, b * sk + j, h, d)]);
                        spec.scale * q.zip(k).map(|(q, k)| q * k).sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (&j, s) in visible.iter().zip(&scores) {
                    let p = (s - max).exp() / total;
                    for d in 0..hd {
                        out[(b * sq + i) * width + h * hd + d] +=
                            p * qkv[at(spec, spec.v_offset, spec.kv_row_stride, b * sk + j, h, d)];
                    }
                }
            }
        }
    }
    out
}

/// Random key padding `[batch, seq_k]` (about a third masked) with batch row `full` masked entirely.
fn padding(rng: &mut ChaCha8Rng, batch: usize, seq_k: usize, full: Option<usize>) -> Vec<u8> {
    (0..batch * seq_k).map(|e| u8::from(Some(e / seq_k) == full || rng.random_range(0..3) == 0)).collect()
}

/// Forward in f64 and f32 against the naive loop; the saved probabilities sum to 1 per row (0 for a row that sees no
/// key).
fn check_forward(label: &str, seed: u64, rng: &mut ChaCha8Rng, spec: &Attention, mask: Option<&[u8]>) {
    let qkv: Vec<f64> = normal(rng, spec.qkv_len(), 1.0);
    let mut out = poisoned::<f64>(spec.out_len());
    let mut saved = poisoned::<f64>(attention::saved_len(spec));
    attention::forward(spec, &qkv, mask, &mut out, &mut saved).unwrap();
    let want = naive(spec, &qkv, mask);
    assert_close(label, seed, &out, &want, 1e-12, 1e-14);
    for (r, row) in saved.chunks(spec.seq_k).enumerate() {
        let sum: f64 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-12 || sum == 0.0, "{label}: probability row {r} sums to {sum} (seed {seed})");
    }

    let cpu = CpuBackend::<f32>::new();
    let qkv32: Vec<f32> = qkv.iter().map(|&v| v as f32).collect();
    let mut out32 = poisoned::<f32>(spec.out_len());
    let mut saved32 = poisoned::<f32>(cpu.attention_saved_len(spec));
    cpu.attention_forward(spec, &qkv32, mask, &mut out32, &mut saved32).unwrap();
    let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    assert_close(&format!("{label} f32"), seed, &out32, &want32, 1e-5, 1e-6);
}

/// Gradient check of dQ, dK, dV together (loss `⟨w, out⟩`); returns dqkv. The Q/K/V elements of dqkv are poisoned
/// before the backward, so one it forgets fails; the elements between them start at 0, their true gradient.
fn check_grad(label: &str, seed: u64, rng: &mut ChaCha8Rng, spec: &Attention, mask: Option<&[u8]>) -> Vec<f64> {
    let qkv: Vec<f64> = normal(rng, spec.qkv_len(), 1.0);
    let w: Vec<f64> = normal(rng, spec.out_len(), 1.0);
    let mut out = poisoned::<f64>(spec.out_len());
    let mut saved = poisoned::<f64>(attention::saved_len(spec));
    attention::forward(spec, &qkv, mask, &mut out, &mut saved).unwrap();
    let mut dqkv = vec![0.0; qkv.len()];
    for p in qkv_positions(spec) {
        dqkv[p] = f64::NAN;
    }
    attention::backward(spec, &qkv, mask, &out, &saved, &w, &mut dqkv).unwrap();
    check_gradient(label, seed, &qkv, &dqkv, 600, |x| {
        let mut out = poisoned::<f64>(spec.out_len());
        let mut saved = poisoned::<f64>(attention::saved_len(spec));
        attention::forward(spec, x, mask, &mut out, &mut saved).unwrap();
        dot(&w, &out)
    });
    dqkv
}

const PACKED: [(usize, usize, usize, usize); 5] =
    [(1, 1, 1, 1), (2, 5, 3, 4), (3, 7, 2, 1), (1, 4, 1, 6), (2, 3, 4, 3)];

#[test]
fn attention_forward_matches_naive_packed_self() {
    let seed = testing::seed(701);
    let mut rng = testing::rng(seed);
    for &(batch, seq, heads, hd) in &PACKED {
        let spec = Attention::packed_self(batch, seq, heads, hd, false);
        check_forward(&format!("packed {batch}x{seq}x{heads}x{hd}"), seed, &mut rng, &spec, None);
    }
    // A hand case: one query, two keys with scores 0 and ln 3 → weights 1/4, 3/4 of V.
    // Layout [q | k | v] per row, width 1, scale 1: row s = (q_s, k_s, v_s).
    let mut spec = Attention::packed_self(1, 2, 1, 1, false);
    spec.scale = 1.0;
    let qkv = [1.0, 0.0, 10.0, 0.0, 3f64.ln(), 20.0];
    let mut out = [f64::NAN; 2];
    let mut saved = [f64::NAN; 4];
    attention::forward(&spec, &qkv, None, &mut out, &mut saved).unwrap();
    assert_close("hand out", 0, &out, &[0.25 * 10.0 + 0.75 * 20.0, 15.0], 1e-15, 1e-15);
    assert_close("hand probabilities", 0, &saved, &[0.25, 0.75, 0.5, 0.5], 1e-15, 1e-16);
}

#[test]
fn attention_forward_matches_naive_causal() {
    let seed = testing::seed(702);
    let mut rng = testing::rng(seed);
    for &(batch, seq, heads, hd) in &PACKED {
        let spec = Attention::packed_self(batch, seq, heads, hd, true);
        check_forward(&format!("causal {batch}x{seq}x{heads}x{hd}"), seed, &mut rng, &spec, None);
    }
    // The first query sees only the first key: its output is V_0 exactly.
    let spec = Attention::packed_self(1, 3, 1, 2, true);
    let qkv: Vec<f64> = normal(&mut rng, spec.qkv_len(), 1.0);
    let mut out = poisoned::<f64>(spec.out_len());
    let mut saved = poisoned::<f64>(9);
    attention::forward(&spec, &qkv, None, &mut out, &mut saved).unwrap();
    assert_eq!(&out[..2], &qkv[4..6]);
    assert_eq!(&saved[..3], &[1.0, 0.0, 0.0]);
}

#[test]
fn attention_forward_key_padding_fully_masked_row_outputs_zeros() {
    let seed = testing::seed(703);
    let mut rng = testing::rng(seed);
    for causal in [false, true] {
        for &(batch, seq, heads, hd) in &[(3usize, 5usize, 2usize, 3usize), (2, 1, 1, 1), (4, 6, 3, 2)] {
            let spec = Attention::packed_self(batch, seq, heads, hd, causal);
            let mask = padding(&mut rng, batch, seq, Some(1));
            let label = format!("padding causal {causal} {batch}x{seq}x{heads}x{hd}");
            check_forward(&label, seed, &mut rng, &spec, Some(&mask));
            // Batch row 1 sees no key: zeros, not NaN.
            let qkv: Vec<f32> = normal(&mut rng, spec.qkv_len(), 1.0);
            let mut out = poisoned::<f32>(spec.out_len());
            let mut saved = poisoned::<f32>(attention::saved_len(&spec));
            attention::forward(&spec, &qkv, Some(&mask), &mut out, &mut saved).unwrap();
            let row = seq * spec.width();
            assert!(out[row..2 * row].iter().all(|&v| v == 0.0), "{label}: masked batch row (seed {seed})");
            assert!(out.iter().chain(&saved).all(|v| v.is_finite()), "{label}: NaN (seed {seed})");
        }
    }
}

#[test]
fn attention_forward_separate_one_query_five_keys() {
    let seed = testing::seed(704);
    let mut rng = testing::rng(seed);
    for &(batch, seq_q, seq_k, heads, hd) in
        &[(2usize, 1usize, 5usize, 3usize, 2usize), (1, 3, 4, 1, 1), (3, 5, 2, 2, 3)]
    {
        let spec = Attention::separate(batch, seq_q, seq_k, heads, hd);
        let label = format!("separate {batch}x{seq_q}x{seq_k}x{heads}x{hd}");
        check_forward(&label, seed, &mut rng, &spec, None);
        let mask = padding(&mut rng, batch, seq_k, None);
        check_forward(&format!("{label} padded"), seed, &mut rng, &spec, Some(&mask));
        // The causal rule aligned to the end when seq_q ≠ seq_k: query i sees keys j ≤ i + seq_k − seq_q.
        let causal = Attention { causal: true, ..spec };
        check_forward(&format!("{label} causal"), seed, &mut rng, &causal, None);
    }
}

#[test]
fn attention_grad_packed_self() {
    let seed = testing::seed(705);
    let mut rng = testing::rng(seed);
    for &(batch, seq, heads, hd) in &PACKED {
        let spec = Attention::packed_self(batch, seq, heads, hd, false);
        check_grad(&format!("packed {batch}x{seq}x{heads}x{hd}"), seed, &mut rng, &spec, None);
    }
}

#[test]
fn attention_grad_causal() {
    let seed = testing::seed(706);
    let mut rng = testing::rng(seed);
    for &(batch, seq, heads, hd) in &PACKED {
        let spec = Attention::packed_self(batch, seq, heads, hd, true);
        check_grad(&format!("causal {batch}x{seq}x{heads}x{hd}"), seed, &mut rng, &spec, None);
    }
}

#[test]
fn attention_grad_key_padding_with_fully_masked_row() {
    let seed = testing::seed(707);
    let mut rng = testing::rng(seed);
    for causal in [false, true] {
        let (batch, seq, heads, hd) = (3, 4, 2, 3);
        let spec = Attention::packed_self(batch, seq, heads, hd, causal);
        let mask = padding(&mut rng, batch, seq, Some(2));
        let dqkv = check_grad(&format!("padding causal {causal}"), seed, &mut rng, &spec, Some(&mask));
        // Batch row 2 sees nothing and is seen by nobody: zero gradient for its Q, K and V.
        let row = 3 * spec.width();
        assert!(dqkv[2 * seq * row..].iter().all(|&g| g == 0.0), "masked batch row gradient (seed {seed})");
    }
}

#[test]
fn attention_grad_separate_one_query_five_keys() {
    let seed = testing::seed(708);
    let mut rng = testing::rng(seed);
    for &(batch, seq_q, seq_k, heads, hd) in
        &[(2usize, 1usize, 5usize, 3usize, 2usize), (1, 3, 4, 1, 1), (2, 5, 2, 2, 3)]
    {
        let spec = Attention::separate(batch, seq_q, seq_k, heads, hd);
        let label = format!("separate {batch}x{seq_q}x{seq_k}x{heads}x{hd}");
        check_grad(&label, seed, &mut rng, &spec, None);
        let mask = padding(&mut rng, batch, seq_k, Some(0));
        check_grad(&format!("{label} padded"), seed, &mut rng, &spec, Some(&mask));
        check_grad(&format!("{label} causal"), seed, &mut rng, &Attention { causal: true, ..spec }, None);
    }
}

#[test]
fn attention_grad_head_dim_one_and_odd_sizes() {
    let seed = testing::seed(709);
    let mut rng = testing::rng(seed);
    for &(batch, seq, heads, hd, causal) in
        &[(1usize, 7usize, 3usize, 1usize, false), (3, 5, 1, 1, true), (1, 9, 5, 3, true)]
    {
        let spec = Attention::packed_self(batch, seq, heads, hd, causal);
        check_grad(&format!("{batch}x{seq}x{heads}x{hd} causal {causal}"), seed, &mut rng, &spec, None);
    }
}

#[test]
fn attention_grad_strided_layout_leaves_gaps_untouched() {
    let seed = testing::seed(710);
    let mut rng = testing::rng(seed);
    // Rows of [pad, Q, pad, K, pad, V, pad]: stride 3·width + 4.
    let (batch, seq, heads, hd) = (2, 3, 2, 2);
    let width = heads * hd;
    let spec = Attention {
        q_offset: 1,
        k_offset: width + 2,
        v_offset: 2 * width + 3,
        q_row_stride: 3 * width + 4,
        kv_row_stride: 3 * width + 4,
        ..Attention::packed_self(batch, seq, heads, hd, true)
    };
    check_forward("strided", seed, &mut rng, &spec, None);
    check_grad("strided", seed, &mut rng, &spec, None);

    let qkv: Vec<f64> = normal(&mut rng, spec.qkv_len(), 1.0);
    let dout: Vec<f64> = normal(&mut rng, spec.out_len(), 1.0);
    let mut out = poisoned::<f64>(spec.out_len());
    let mut saved = poisoned::<f64>(attention::saved_len(&spec));
    attention::forward(&spec, &qkv, None, &mut out, &mut saved).unwrap();
    let mut dqkv = vec![42.0; qkv.len() + 5];
    attention::backward(&spec, &qkv, None, &out, &saved, &dout, &mut dqkv).unwrap();
    let positions = qkv_positions(&spec);
    for (e, &g) in dqkv.iter().enumerate() {
        if positions.contains(&e) {
            assert!(g.is_finite() && g != 42.0, "element {e} not written");
        } else {
            assert_eq!(g, 42.0, "gap element {e} overwritten");
        }
    }
}

#[test]
fn attention_bad_shapes_are_errors() {
    let spec = Attention::packed_self(2, 3, 2, 2, false);
    let qkv = vec![0.0f32; spec.qkv_len()];
    let mut out = vec![0.0f32; spec.out_len()];
    let mut saved = vec![0.0f32; attention::saved_len(&spec)];
    assert!(attention::forward(&spec, &qkv, None, &mut out, &mut saved).is_ok());
    let short = &qkv[..qkv.len() - 1];
    assert!(matches!(attention::forward(&spec, short, None, &mut out, &mut saved), Err(Error::Shape { .. })));
    assert!(matches!(attention::forward(&spec, &qkv, None, &mut out[1..], &mut saved), Err(Error::Shape { .. })));
    assert!(matches!(attention::forward(&spec, &qkv, None, &mut out, &mut saved[1..]), Err(Error::Shape { .. })));
    assert!(matches!(attention::forward(&spec, &qkv, Some(&[0u8; 5]), &mut out, &mut saved), Err(Error::Shape { .. })));
    let overlapping = Attention { q_row_stride: 3, ..spec };
    assert!(matches!(attention::forward(&overlapping, &qkv, None, &mut out, &mut saved), Err(Error::Invalid { .. })));
    let dout = out.clone();
    let mut dqkv = vec![0.0f32; qkv.len()];
    assert!(attention::backward(&spec, &qkv, None, &out, &saved, &dout, &mut dqkv).is_ok());
    assert!(attention::backward(&spec, &qkv, None, &out, &saved, &dout[1..], &mut dqkv).is_err());
    assert!(attention::backward(&spec, &qkv, None, &out, &saved, &dout, &mut dqkv[1..]).is_err());
}

#[test]
fn attention_is_bit_identical_across_thread_counts() {
    let seed = testing::seed(711);
    let mut rng = testing::rng(seed);
    let spec = Attention::packed_self(3, 17, 4, 8, true);
    let mask = padding(&mut rng, 3, 17, None);
    let qkv: Vec<f32> = normal(&mut rng, spec.qkv_len(), 1.0);
    let dout: Vec<f32> = normal(&mut rng, spec.out_len(), 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut out = poisoned::<f32>(spec.out_len());
            let mut saved = poisoned::<f32>(attention::saved_len(&spec));
            attention::forward(&spec, &qkv, Some(&mask), &mut out, &mut saved).unwrap();
            let mut dqkv = poisoned::<f32>(qkv.len());
            attention::backward(&spec, &qkv, Some(&mask), &out, &saved, &dout, &mut dqkv).unwrap();
            (out, dqkv)
        })
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (out1, d1) = run(1);
    let (out3, d3) = run(3);
    assert_eq!(bits(&out1), bits(&out3), "forward (seed {seed})");
    assert_eq!(bits(&d1), bits(&d3), "backward (seed {seed})");
}
