//! CPU tests of attention through `trait Backend` (they run everywhere, unlike tests/gpu/attention.rs):
//!
//! - central-difference gradient checks (f64 `CpuBackend`) of `attention_forward` / `attention_backward` for the
//!   shapes the fused CUDA kernel is built around: causal, key padding with a fully masked batch item, seq_q ≠ seq_k
//!   (the attention pool's one query over many keys; causal with more queries than keys), and a strided packed
//!   layout with gaps;
//! - the fused kernel's algorithm (kernels/attention.cu) mirrored on the host in f64 — key tiles of 64 with the
//!   online softmax in base 2, the saved row log-sum-exp, the backward recomputing P from it with
//!   D = rowsum(dO∘O), dQ summed over key tiles and dK/dV over query tiles — against the reference backend, so the
//!   maths the kernel implements is checked here even without a GPU.

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::{Attention, Backend};
use cliprt::testing::{assert_close, check_gradient, dot, normal, poisoned, rng, seed};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

type Cpu = CpuBackend<f64>;

/// Every buffer index that holds an element of Q, K or V.
fn qkv_positions(spec: &Attention) -> Vec<usize> {
    let mut positions = Vec::new();
    for (offset, stride, rows) in [
        (spec.q_offset, spec.q_row_stride, spec.batch * spec.seq_q),
        (spec.k_offset, spec.kv_row_stride, spec.batch * spec.seq_k),
        (spec.v_offset, spec.kv_row_stride, spec.batch * spec.seq_k),
    ] {
        for row in 0..rows {
            positions.extend(offset + row * stride..offset + row * stride + spec.width());
        }
    }
    positions
}

/// Key padding `[batch, seq_k]` masking about a quarter of the keys, and every key of batch item `full`.
fn padding(r: &mut ChaCha8Rng, spec: &Attention, full: Option<usize>) -> Vec<u8> {
    let sk = spec.seq_k;
    (0..spec.batch * sk).map(|e| u8::from(Some(e / sk) == full || r.random_range(0..4) == 0)).collect()
}

/// A packed layout with gaps: Q, K, V of a token at offsets 1, width + 3, 2·width + 4, row stride 3·width + 7.
fn strided_packed(batch: usize, seq: usize, heads: usize, head_dim: usize, causal: bool) -> Attention {
    let width = heads * head_dim;
    let mut spec = Attention::packed_self(batch, seq, heads, head_dim, causal);
    spec.q_offset = 1;
    spec.k_offset = width + 3;
    spec.v_offset = 2 * width + 4;
    spec.q_row_stride = 3 * width + 7;
    spec.kv_row_stride = 3 * width + 7;
    spec
}

/// Gradient check of dQ, dK, dV (loss ⟨w, out⟩) through the Backend trait; the Q/K/V elements of dqkv are NaN before
/// the backward (one it forgets fails), the gap elements 0 (their true gradient, and the backward leaves them).
fn grad_check(label: &str, s: u64, spec: &Attention, mask: Option<&[u8]>) {
    let cpu = Cpu::new();
    let mut r = rng(s);
    let qkv: Vec<f64> = normal(&mut r, spec.qkv_len(), 1.0);
    let w: Vec<f64> = normal(&mut r, spec.out_len(), 1.0);
    let forward = |x: &[f64]| {
        let mut out = poisoned::<f64>(spec.out_len());
        let mut saved = poisoned::<f64>(cpu.attention_saved_len(spec));
        cpu.attention_forward(spec, x, mask, &mut out, &mut saved).unwrap();
        (out, saved)
    };
    let (out, saved) = forward(&qkv);
    assert!(out.iter().all(|v| v.is_finite()), "{label}: non-finite output");
    let mut dqkv = vec![0.0; qkv.len()];
    for p in qkv_positions(spec) {
        dqkv[p] = f64::NAN;
    }
    cpu.attention_backward(spec, &qkv, mask, &out, &saved, &w, &mut dqkv).unwrap();
    check_gradient(label, s, &qkv, &dqkv, 800, |x| dot(&w, &forward(x).0));
}

#[test]
fn attention_gradient_causal() {
    grad_check("attention causal", seed(8_100), &Attention::packed_self(2, 7, 2, 4, true), None);
}

#[test]
fn attention_gradient_padded_with_fully_masked_row() {
    let spec = Attention::packed_self(3, 6, 2, 3, false);
    let s = seed(8_101);
    let mask = padding(&mut rng(s + 1), &spec, Some(1));
    grad_check("attention padded, item 1 fully masked", s, &spec, Some(&mask));
    let mut causal = spec;
    causal.causal = true;
    grad_check("attention causal + padded, item 1 fully masked", s + 2, &causal, Some(&mask));
}

#[test]
fn attention_gradient_seq_q_differs_from_seq_k() {
    // The ResNet attention pool: one query over many keys, with padding.
    let pool = Attention::separate(2, 1, 9, 2, 4);
    let s = seed(8_102);
    let mask = padding(&mut rng(s + 1), &pool, None);
    grad_check("attention 1 query × 9 keys padded", s, &pool, Some(&mask));
    // Causal with more queries than keys: the first rows see no key at all.
    let mut more_queries = Attention::separate(2, 6, 4, 2, 3);
    more_queries.causal = true;
    grad_check("attention causal 6 queries × 4 keys", s + 2, &more_queries, None);
    let mut more_keys = Attention::separate(1, 3, 8, 2, 4);
    more_keys.causal = true;
    grad_check("attention causal 3 queries × 8 keys", s + 3, &more_keys, None);
}

#[test]
fn attention_gradient_strided_packed_layout() {
    let spec = strided_packed(2, 5, 3, 4, false);
    grad_check("attention strided packed", seed(8_103), &spec, None);
    let causal = strided_packed(2, 5, 2, 4, true);
    let s = seed(8_104);
    let mask = padding(&mut rng(s + 1), &causal, Some(0));
    grad_check("attention strided packed causal padded", s, &causal, Some(&mask));
}

// ------------------------------------------------------------------------------------------------ flash mirror ----
/// Key (and query) tile of the host mirror: the forward kernel's 64-key tiles.
const TILE: usize = 64;

/// The fused kernel's forward for one (b, h): online softmax over key tiles in base 2; returns (out rows, lse).
fn flash_forward(spec: &Attention, qkv: &[f64], mask: Option<&[u8]>, b: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
    let (sq, sk, hd) = (spec.seq_q, spec.seq_k, spec.head_dim);
    let log2e = std::f64::consts::LOG2_E;
    let c2 = spec.scale * log2e;
    let q = |i: usize, d: usize| qkv[spec.q_offset + (b * sq + i) * spec.q_row_stride + h * hd + d];
    let k = |j: usize, d: usize| qkv[spec.k_offset + (b * sk + j) * spec.kv_row_stride + h * hd + d];
    let v = |j: usize, d: usize| qkv[spec.v_offset + (b * sk + j) * spec.kv_row_stride + h * hd + d];
    let mut out = vec![0.0; sq * hd];
    let mut lse = vec![0.0; sq];
    for i in 0..sq {
        let (mut m, mut l) = (f64::NEG_INFINITY, 0.0);
        let mut o = vec![0.0; hd];
        for k0 in (0..sk).step_by(TILE) {
            let keys = k0..(k0 + TILE).min(sk);
            let x: Vec<f64> = keys
                .clone()
                .map(|j| {
                    let vis = spec.visible(i, j) && mask.is_none_or(|m| m[b * sk + j] == 0);
                    if vis {
                        (0..hd).map(|d| q(i, d) * k(j, d)).sum::<f64>() * c2
                    } else {
                        f64::NEG_INFINITY
                    }
                })
                .collect();
            let mx = x.iter().copied().fold(m, f64::max);
            let mu = if mx == f64::NEG_INFINITY { 0.0 } else { mx };
            let alpha = (m - mu).exp2();
            m = mx;
            let p: Vec<f64> = x.iter().map(|x| (x - mu).exp2()).collect();
            l = l * alpha + p.iter().sum::<f64>();
            for (d, o) in o.iter_mut().enumerate() {
                *o = *o * alpha + keys.clone().zip(&p).map(|(j, p)| p * v(j, d)).sum::<f64>();
            }
        }
        let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
        out[i * hd..(i + 1) * hd].iter_mut().zip(&o).for_each(|(out, o)| *out = o * inv);
        lse[i] = if l > 0.0 { (m + l.log2()) / log2e } else { f64::NEG_INFINITY };
    }
    (out, lse)
}

/// The fused kernel's backward for one (b, h) from out and lse: D = rowsum(dO∘O), P recomputed from lse, dQ summed
/// over key tiles, dK/dV over query tiles. Returns (dq [sq, hd], dk [sk, hd], dv [sk, hd]).
#[allow(clippy::too_many_arguments)]
fn flash_backward(
    spec: &Attention,
    qkv: &[f64],
    mask: Option<&[u8]>,
    out: &[f64],
    lse: &[f64],
    dout: &[f64],
    b: usize,
    h: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (sq, sk, hd) = (spec.seq_q, spec.seq_k, spec.head_dim);
    let q = |i: usize, d: usize| qkv[spec.q_offset + (b * sq + i) * spec.q_row_stride + h * hd + d];
    let k = |j: usize, d: usize| qkv[spec.k_offset + (b * sk + j) * spec.kv_row_stride + h * hd + d];
    let v = |j: usize, d: usize| qkv[spec.v_offset + (b * sk + j) * spec.kv_row_stride + h * hd + d];
    let d_o = |i: usize, d: usize| dout[(b * sq + i) * spec.width() + h * hd + d];
    let o = |i: usize, d: usize| out[(b * sq + i) * spec.width() + h * hd + d];
    let dsum: Vec<f64> = (0..sq).map(|i| (0..hd).map(|d| d_o(i, d) * o(i, d)).sum()).collect();
    // (P, dS) of a visible pair, (0, 0) otherwise: a visible pair's row has a finite lse.
    let p_ds = |i: usize, j: usize| {
        if !(spec.visible(i, j) && mask.is_none_or(|m| m[b * sk + j] == 0)) {
            return (0.0, 0.0);
        }
        let s: f64 = (0..hd).map(|d| q(i, d) * k(j, d)).sum::<f64>() * spec.scale;
        let p = (s - lse[b * spec.heads * sq + h * sq + i]).exp();
        let dp: f64 = (0..hd).map(|d| d_o(i, d) * v(j, d)).sum();
        (p, spec.scale * p * (dp - dsum[i]))
    };
    let mut dq = vec![0.0; sq * hd];
    for i in 0..sq {
        for k0 in (0..sk).step_by(TILE) {
            for j in k0..(k0 + TILE).min(sk) {
                let (_, ds) = p_ds(i, j);
                (0..hd).for_each(|d| dq[i * hd + d] += ds * k(j, d));
            }
        }
    }
    let (mut dk, mut dv) = (vec![0.0; sk * hd], vec![0.0; sk * hd]);
    for j in 0..sk {
        for q0 in (0..sq).step_by(TILE) {
            for i in q0..(q0 + TILE).min(sq) {
                let (p, ds) = p_ds(i, j);
                for d in 0..hd {
                    dk[j * hd + d] += ds * q(i, d);
                    dv[j * hd + d] += p * d_o(i, d);
                }
            }
        }
    }
    (dq, dk, dv)
}

/// The mirror against `CpuBackend<f64>`: out, and dQ/dK/dV scattered to the layout, for several key tiles.
fn mirror_case(label: &str, s: u64, spec: &Attention, full: Option<usize>, masked: bool) {
    let cpu = Cpu::new();
    let mut r = rng(s);
    let qkv: Vec<f64> = normal(&mut r, spec.qkv_len(), 1.0);
    let dout: Vec<f64> = normal(&mut r, spec.out_len(), 1.0);
    let mask = masked.then(|| padding(&mut r, spec, full));
    let mask = mask.as_deref();
    let mut out = poisoned::<f64>(spec.out_len());
    let mut saved = poisoned::<f64>(cpu.attention_saved_len(spec));
    cpu.attention_forward(spec, &qkv, mask, &mut out, &mut saved).unwrap();
    let mut dqkv = vec![0.0; spec.qkv_len()];
    cpu.attention_backward(spec, &qkv, mask, &out, &saved, &dout, &mut dqkv).unwrap();

    let (sq, sk, hd, width) = (spec.seq_q, spec.seq_k, spec.head_dim, spec.width());
    let mut fout = vec![0.0; spec.out_len()];
    let mut lse = vec![0.0; spec.batch * spec.heads * sq];
    for b in 0..spec.batch {
        for h in 0..spec.heads {
            let (o, l) = flash_forward(spec, &qkv, mask, b, h);
            for i in 0..sq {
                fout[(b * sq + i) * width + h * hd..][..hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
            }
            lse[(b * spec.heads + h) * sq..][..sq].copy_from_slice(&l);
            if let Some(full) = full {
                if b == full {
                    assert!(l.iter().all(|&l| l == f64::NEG_INFINITY), "{label}: lse of the fully masked item");
                }
            }
        }
    }
    assert_close(&format!("{label} out"), s, &fout, &out, 1e-12, 1e-14);
    let mut fd = vec![0.0; spec.qkv_len()];
    for b in 0..spec.batch {
        for h in 0..spec.heads {
            let (dq, dk, dv) = flash_backward(spec, &qkv, mask, &fout, &lse, &dout, b, h);
            for i in 0..sq {
                fd[spec.q_offset + (b * sq + i) * spec.q_row_stride + h * hd..][..hd]
                    .copy_from_slice(&dq[i * hd..(i + 1) * hd]);
            }
            for j in 0..sk {
                let row = (b * sk + j) * spec.kv_row_stride + h * hd;
                fd[spec.k_offset + row..][..hd].copy_from_slice(&dk[j * hd..(j + 1) * hd]);
                fd[spec.v_offset + row..][..hd].copy_from_slice(&dv[j * hd..(j + 1) * hd]);
            }
        }
    }
    assert_close(&format!("{label} dqkv"), s, &fd, &dqkv, 1e-11, 1e-13);
}

#[test]
fn attention_flash_algorithm_matches_the_reference() {
    mirror_case(
        "attention mirror ViT-like S=50",
        seed(8_200),
        &Attention::packed_self(2, 50, 2, 8, false),
        None,
        false,
    );
    mirror_case("attention mirror causal S=77", seed(8_201), &Attention::packed_self(1, 77, 2, 8, true), None, false);
    mirror_case(
        "attention mirror padded S=130 item 1 fully masked",
        seed(8_202),
        &Attention::packed_self(3, 130, 1, 4, false),
        Some(1),
        true,
    );
    mirror_case("attention mirror attnpool 1×50", seed(8_203), &Attention::separate(2, 1, 50, 2, 8), None, true);
    let mut causal = Attention::separate(2, 70, 9, 1, 4);
    causal.causal = true;
    mirror_case("attention mirror causal 70 queries × 9 keys", seed(8_204), &causal, None, false);
    mirror_case("attention mirror strided causal", seed(8_205), &strided_packed(2, 67, 2, 4, true), Some(0), true);
}
