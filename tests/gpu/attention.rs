//! GPU parity tests of the fused attention `kernels/attention.cu` against the CPU reference (`CpuBackend::<f32>`'s
//! `attention_forward` / `attention_backward` on the same rounded inputs): output, saved row log-sum-exp (against an
//! fp64 host computation) and dQ/dK/dV, bf16 and f16 storage, head dims 32, 64 and 128; then the same through
//! `CudaBackend<bf16>` (which dispatches to the fused kernel for those head dims). Filter with `gpu_attention_fused`.
//!
//! Cases: S ∈ {1, 50, 77, 197, 257}, causal and not, seq_q ≠ seq_k (the attention pool's 1 query over 50 keys, and
//! causal with fewer or more keys than queries), key padding with a fully masked batch item at an odd batch, packed
//! (16-byte copies), separate and gapped (scalar copies) layouts. Outputs, lse, gradients and scratch are NaN before
//! the launches: an unwritten element fails, and the gap elements of dqkv must still be NaN afterwards.

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::cuda::attention::{attention_saved_len, attention_scratch_len, FlashFloat};
use cliprt::backend::cuda::{CudaBackend, CudaDevice, CudaRef, DeviceViews};
use cliprt::backend::{Attention, Backend};
use cliprt::testing::{assert_close, normal, rng, seed};
use cliprt::Error;
use half::{bf16, f16};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

type Cpu = CpuBackend<f32>;

/// The 16-bit storage types of the fused kernel, as the tests see them.
trait Half: FlashFloat + std::fmt::Debug {
    const NAME: &'static str;
    const NAN: Self;
    /// Outputs are fp32 sums rounded once, but P and dS are rounded to the storage type before their products
    /// (the tensor-core operands): a few ulp of the type in relative norm.
    const RTOL: f64;
    const ATOL: f64;
    fn of(x: f32) -> Self;
    fn back(self) -> f32;
    fn bits(self) -> u16;
}

impl Half for bf16 {
    const NAME: &'static str = "bf16";
    const NAN: Self = bf16::NAN;
    const RTOL: f64 = 1.5e-2;
    const ATOL: f64 = 1e-3;
    fn of(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn back(self) -> f32 {
        self.to_f32()
    }
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

impl Half for f16 {
    const NAME: &'static str = "f16";
    const NAN: Self = f16::NAN;
    const RTOL: f64 = 4e-3;
    const ATOL: f64 = 1e-4;
    fn of(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn back(self) -> f32 {
        self.to_f32()
    }
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

/// `len` draws of N(0, std²) rounded to T, and the rounded values as f32.
fn draw<T: Half>(r: &mut ChaCha8Rng, len: usize, std: f64) -> (Vec<T>, Vec<f32>) {
    let t: Vec<T> = normal::<f32>(r, len, std).into_iter().map(T::of).collect();
    let back = t.iter().map(|&v| v.back()).collect();
    (t, back)
}

struct Case {
    name: &'static str,
    spec: Attention,
    /// Fraction of keys masked by a `[batch, seq_k]` padding mask (None: no mask).
    padding: Option<f64>,
    /// Batch items whose every key is masked.
    fully_masked: &'static [usize],
}

/// Q, K and V of each token at offsets that are not multiples of 8, with gaps between them and past V: the kernels'
/// scalar-copy path, and gap elements the backward must leave alone.
fn gapped(batch: usize, seq: usize, heads: usize, head_dim: usize, causal: bool) -> Attention {
    let width = heads * head_dim;
    let mut spec = Attention::packed_self(batch, seq, heads, head_dim, causal);
    spec.q_offset = 3;
    spec.k_offset = 3 + width + 2;
    spec.v_offset = 3 + 2 * width + 4;
    spec.q_row_stride = 3 * width + 9;
    spec.kv_row_stride = 3 * width + 9;
    spec
}

fn case(name: &'static str, spec: Attention) -> Case {
    Case { name, spec, padding: None, fully_masked: &[] }
}

fn padded(name: &'static str, spec: Attention, fraction: f64, fully_masked: &'static [usize]) -> Case {
    Case { name, spec, padding: Some(fraction), fully_masked }
}

fn causal_separate(batch: usize, seq_q: usize, seq_k: usize, heads: usize, head_dim: usize) -> Attention {
    let mut spec = Attention::separate(batch, seq_q, seq_k, heads, head_dim);
    spec.causal = true;
    spec
}

fn cases() -> Vec<Case> {
    vec![
        case("S=1 H=2 Dh=64", Attention::packed_self(3, 1, 2, 64, false)),
        case("ViT-B/32-like S=50 H=4 Dh=64", Attention::packed_self(2, 50, 4, 64, false)),
        case("text-like S=77 H=2 Dh=64 causal", Attention::packed_self(3, 77, 2, 64, true)),
        case("ViT-B/16-like S=197 H=2 Dh=64", Attention::packed_self(1, 197, 2, 64, false)),
        case("S=257 H=1 Dh=128 causal", Attention::packed_self(1, 257, 1, 128, true)),
        case("S=257 H=2 Dh=32", Attention::packed_self(1, 257, 2, 32, false)),
        padded(
            "attnpool Sq=1 Sk=50 H=4 Dh=32 padded, item 1 fully masked",
            Attention::separate(3, 1, 50, 4, 32),
            0.3,
            &[1],
        ),
        case("attnpool Sq=1 Sk=50 H=2 Dh=128", Attention::separate(2, 1, 50, 2, 128)),
        padded(
            "key padding B=3 S=50 H=2 Dh=64, item 2 fully masked",
            Attention::packed_self(3, 50, 2, 64, false),
            0.25,
            &[2],
        ),
        padded(
            "causal + padding B=3 S=77 H=1 Dh=128, item 0 fully masked",
            Attention::packed_self(3, 77, 1, 128, true),
            0.2,
            &[0],
        ),
        case("causal Sq=9 > Sk=5 (rows that see no key)", causal_separate(2, 9, 5, 2, 32)),
        case("causal Sq=5 < Sk=70", causal_separate(2, 5, 70, 2, 64)),
        padded("gapped layout S=33 H=3 Dh=64", gapped(3, 33, 3, 64, false), 0.1, &[]),
        case("gapped layout causal S=70 H=2 Dh=32", gapped(2, 70, 2, 32, true)),
    ]
}

/// Indices of the Q, K and V regions of a QKV-shaped buffer (where dQ, dK, dV go), in a fixed order.
fn region_indices(spec: &Attention) -> Vec<usize> {
    let width = spec.width();
    let mut idx = Vec::new();
    let regions = [
        (spec.q_offset, spec.batch * spec.seq_q, spec.q_row_stride),
        (spec.k_offset, spec.batch * spec.seq_k, spec.kv_row_stride),
        (spec.v_offset, spec.batch * spec.seq_k, spec.kv_row_stride),
    ];
    for (offset, rows, stride) in regions {
        for r in 0..rows {
            idx.extend(offset + r * stride..offset + r * stride + width);
        }
    }
    idx
}

/// A random padding mask `[batch, seq_k]` masking about `fraction` of the keys, and every key of `fully_masked`.
fn padding_mask(r: &mut impl Rng, spec: &Attention, fraction: f64, fully_masked: &[usize]) -> Vec<u8> {
    let sk = spec.seq_k;
    let mut mask: Vec<u8> = (0..spec.batch * sk).map(|_| u8::from(r.random_bool(fraction))).collect();
    for &b in fully_masked {
        mask[b * sk..(b + 1) * sk].fill(1);
    }
    mask
}

/// The row log-sum-exps `[batch, heads, seq_q]` in f64 from the rounded inputs (−∞ for a row that sees no key).
fn reference_lse(spec: &Attention, qkv: &[f32], padding: Option<&[u8]>) -> Vec<f64> {
    let (hd, sk) = (spec.head_dim, spec.seq_k);
    let mut lse = Vec::with_capacity(spec.batch * spec.heads * spec.seq_q);
    for b in 0..spec.batch {
        for h in 0..spec.heads {
            for i in 0..spec.seq_q {
                let q = spec.q_offset + (b * spec.seq_q + i) * spec.q_row_stride + h * hd;
                let scores: Vec<f64> = (0..sk)
                    .filter(|&j| spec.visible(i, j) && padding.is_none_or(|m| m[b * sk + j] == 0))
                    .map(|j| {
                        let k = spec.k_offset + (b * sk + j) * spec.kv_row_stride + h * hd;
                        let dot: f64 = (0..hd).map(|d| qkv[q + d] as f64 * qkv[k + d] as f64).sum();
                        dot * (spec.scale as f32) as f64
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                lse.push(if m == f64::NEG_INFINITY {
                    m
                } else {
                    m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln()
                });
            }
        }
    }
    lse
}

/// A device buffer of `len` copies of `value` (at least one element allocated, so that empty views work).
fn filled<T: cudarc::driver::DeviceRepr + Clone>(
    dev: &CudaDevice,
    len: usize,
    value: T,
) -> cudarc::driver::CudaSlice<T> {
    dev.upload(&vec![value; len.max(1)]).unwrap()
}

/// The device's (out, lse) and, after the backward from them, the whole dqkv buffer and the D scratch.
struct DeviceRun<T> {
    out: Vec<T>,
    lse: Vec<f32>,
    dqkv: Vec<T>,
}

fn device_run<T: Half>(
    dev: &CudaDevice,
    spec: &Attention,
    qkv: &[T],
    padding: Option<&[u8]>,
    dout: &[T],
) -> DeviceRun<T> {
    let (out_len, lse_len, qkv_len) = (spec.out_len(), attention_saved_len(spec), spec.qkv_len());
    let qkv_d = dev.upload(qkv).unwrap();
    let pad_d = padding.map(|m| dev.upload(m).unwrap());
    let pad_ref: Option<CudaRef<'_, u8>> = pad_d.as_ref().map(|m| m.dref());
    let mut out_d = filled(dev, out_len, T::NAN);
    let mut lse_d = filled(dev, lse_len, f32::NAN);
    dev.attention_forward(
        spec,
        &qkv_d.dref(),
        pad_ref.as_ref(),
        &mut out_d.dslice_mut(..out_len),
        &mut lse_d.dslice_mut(..lse_len),
    )
    .unwrap();
    let dout_d = if out_len > 0 { dev.upload(dout).unwrap() } else { filled(dev, 0, T::NAN) };
    let mut dqkv_d = filled(dev, qkv_len, T::NAN);
    let mut scratch_d = filled(dev, attention_scratch_len(spec), f32::NAN);
    dev.attention_backward(
        spec,
        &qkv_d.dref(),
        pad_ref.as_ref(),
        &out_d.dslice(..out_len),
        &lse_d.dslice(..lse_len),
        &dout_d.dslice(..out_len),
        &mut dqkv_d.dslice_mut(..qkv_len),
        &mut scratch_d.dmut(),
    )
    .unwrap();
    DeviceRun {
        out: dev.download(&out_d.dslice(..out_len)).unwrap(),
        lse: dev.download(&lse_d.dslice(..lse_len)).unwrap(),
        dqkv: dev.download(&dqkv_d.dslice(..qkv_len)).unwrap(),
    }
}

/// −∞ exactly where the reference has −∞ (rows that see no key), close elsewhere.
fn assert_lse(label: &str, s: u64, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{label}: lse length");
    let mut finite = (Vec::new(), Vec::new());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w == f64::NEG_INFINITY {
            assert!(g == f32::NEG_INFINITY, "{label} (seed {s}): lse[{i}] = {g}, want −∞ (a row that sees no key)");
        } else {
            finite.0.push(g as f64);
            finite.1.push(w);
        }
    }
    assert_close(&format!("{label} lse"), s, &finite.0, &finite.1, 1e-5, 1e-5);
}

fn attention_case<T: Half>(dev: &CudaDevice, base_seed: u64) {
    for (k, case) in cases().iter().enumerate() {
        let s = seed(base_seed + k as u64);
        let mut r = rng(s);
        let spec = &case.spec;
        let (qkv, qkvf) = draw::<T>(&mut r, spec.qkv_len(), 1.0);
        let (dout, doutf) = draw::<T>(&mut r, spec.out_len(), 1.0);
        let padding = case.padding.map(|f| padding_mask(&mut r, spec, f, case.fully_masked));

        let cpu = Cpu::new();
        let (mut out, mut saved) = (vec![0f32; spec.out_len()], vec![0f32; cpu.attention_saved_len(spec)]);
        cpu.attention_forward(spec, &qkvf, padding.as_deref(), &mut out, &mut saved).unwrap();
        let mut dqkv = vec![f32::NAN; spec.qkv_len()];
        cpu.attention_backward(spec, &qkvf, padding.as_deref(), &out, &saved, &doutf, &mut dqkv).unwrap();

        let got = device_run::<T>(dev, spec, &qkv, padding.as_deref(), &dout);
        let label = format!("attention fused {} {}", T::NAME, case.name);
        let back = |v: &[T]| v.iter().map(|&x| x.back()).collect::<Vec<f32>>();
        assert_close(&format!("{label} out"), s, &back(&got.out), &out, T::RTOL, T::ATOL);
        assert_lse(&label, s, &got.lse, &reference_lse(spec, &qkvf, padding.as_deref()));

        let got_dqkv = back(&got.dqkv);
        let regions = region_indices(spec);
        let gather = |v: &[f32]| regions.iter().map(|&i| v[i]).collect::<Vec<_>>();
        assert_close(&format!("{label} dqkv"), s, &gather(&got_dqkv), &gather(&dqkv), T::RTOL, T::ATOL);
        let mut inside = vec![false; spec.qkv_len()];
        regions.iter().for_each(|&i| inside[i] = true);
        if let Some(i) = (0..spec.qkv_len()).find(|&i| !inside[i] && !got_dqkv[i].is_nan()) {
            panic!("{label} (seed {s}): dqkv[{i}] lies between the Q/K/V regions but was written ({})", got_dqkv[i]);
        }
        // A fully masked batch item: zero output rows and a zero dQ, not NaN.
        for &b in case.fully_masked {
            let rows = spec.seq_q * spec.width();
            assert!(got.out[b * rows..(b + 1) * rows].iter().all(|&v| v.back() == 0.0), "{label}: out of item {b}");
            for i in 0..spec.seq_q {
                let q = spec.q_offset + (b * spec.seq_q + i) * spec.q_row_stride;
                assert!(got_dqkv[q..q + spec.width()].iter().all(|&v| v == 0.0), "{label}: dQ of item {b}");
            }
        }
    }
}

#[test]
fn gpu_attention_fused_bf16() {
    let Some(dev) = super::gpu() else { return };
    attention_case::<bf16>(dev, 9500);
}

#[test]
fn gpu_attention_fused_f16() {
    let Some(dev) = super::gpu() else { return };
    attention_case::<f16>(dev, 9600);
}

/// The same inputs give the same bits twice (no atomics; a summation order fixed by the shape).
#[test]
fn gpu_attention_fused_is_deterministic() {
    let Some(dev) = super::gpu() else { return };
    let s = seed(9700);
    let mut r = rng(s);
    let spec = Attention::packed_self(3, 197, 4, 64, true);
    let (qkv, _) = draw::<bf16>(&mut r, spec.qkv_len(), 1.0);
    let (dout, _) = draw::<bf16>(&mut r, spec.out_len(), 1.0);
    let padding = padding_mask(&mut r, &spec, 0.2, &[]);
    let a = device_run::<bf16>(dev, &spec, &qkv, Some(&padding), &dout);
    let b = device_run::<bf16>(dev, &spec, &qkv, Some(&padding), &dout);
    let bits16 = |v: &[bf16]| v.iter().map(|x| x.bits()).collect::<Vec<_>>();
    let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits16(&a.out), bits16(&b.out), "out differs between runs (seed {s})");
    assert_eq!(bits32(&a.lse), bits32(&b.lse), "lse differs between runs (seed {s})");
    assert_eq!(bits16(&a.dqkv), bits16(&b.dqkv), "dqkv differs between runs (seed {s})");
}

/// No keys: zero outputs, lse −∞ and a zero dQ; no queries: zero dK and dV (as on the CPU).
#[test]
fn gpu_attention_fused_empty_sequences() {
    let Some(dev) = super::gpu() else { return };
    let s = seed(9800);
    let mut r = rng(s);
    let cpu = Cpu::new();
    for spec in [Attention::separate(2, 3, 0, 2, 32), Attention::separate(2, 0, 5, 2, 64)] {
        let (qkv, qkvf) = draw::<bf16>(&mut r, spec.qkv_len(), 1.0);
        let (dout, doutf) = draw::<bf16>(&mut r, spec.out_len(), 1.0);
        let (mut out, mut saved) = (vec![f32::NAN; spec.out_len()], vec![0f32; cpu.attention_saved_len(&spec)]);
        cpu.attention_forward(&spec, &qkvf, None, &mut out, &mut saved).unwrap();
        let mut dqkv = vec![f32::NAN; spec.qkv_len()];
        cpu.attention_backward(&spec, &qkvf, None, &out, &saved, &doutf, &mut dqkv).unwrap();
        let got = device_run::<bf16>(dev, &spec, &qkv, None, &dout);
        let label = format!("attention fused seq_q={} seq_k={}", spec.seq_q, spec.seq_k);
        let back = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
        assert_close(&format!("{label} out"), s, &back(&got.out), &out, 0.0, 0.0);
        assert!(got.lse.iter().all(|&l| l == f32::NEG_INFINITY), "{label}: lse {:?}", got.lse);
        assert_close(&format!("{label} dqkv"), s, &back(&got.dqkv), &dqkv, 0.0, 0.0);
    }
}

/// Bad shapes are errors naming the argument (or the head dim and the fix), before anything runs.
#[test]
fn gpu_attention_fused_shape_errors() {
    let Some(dev) = super::gpu() else { return };
    let spec = Attention::packed_self(2, 5, 2, 32, false);
    let qkv = dev.zeros::<bf16>(spec.qkv_len()).unwrap();
    let mut out = dev.zeros::<bf16>(spec.out_len()).unwrap();
    let mut lse = dev.zeros::<f32>(attention_saved_len(&spec)).unwrap();
    let short_mask = dev.zeros::<u8>(9).unwrap();
    let err = dev
        .attention_forward(&spec, &qkv.dref(), Some(&short_mask.dref()), &mut out.dmut(), &mut lse.dmut())
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "key_padding", got: 9, want: 10, .. }), "{err}");
    let err = dev.attention_forward(&spec, &qkv.dslice(1..), None, &mut out.dmut(), &mut lse.dmut()).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "qkv", .. }), "{err}");
    let mut overlapping = spec;
    overlapping.q_row_stride = 3;
    let err = dev.attention_forward(&overlapping, &qkv.dref(), None, &mut out.dmut(), &mut lse.dmut()).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    let mut odd = spec;
    odd.head_dim = 16;
    let err = dev.attention_forward(&odd, &qkv.dref(), None, &mut out.dmut(), &mut lse.dmut()).unwrap_err();
    assert!(err.to_string().contains("head_dim 16"), "{err}");
    let dout = dev.zeros::<bf16>(spec.out_len()).unwrap();
    let mut dqkv = dev.zeros::<bf16>(spec.qkv_len()).unwrap();
    let mut scratch = dev.zeros::<f32>(attention_scratch_len(&spec) - 1).unwrap();
    let err = dev
        .attention_backward(
            &spec,
            &qkv.dref(),
            None,
            &out.dref(),
            &lse.dref(),
            &dout.dref(),
            &mut dqkv.dmut(),
            &mut scratch.dmut(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "scratch", .. }), "{err}");
}

/// `CudaBackend<bf16>` runs the fused kernel for a packed ViT-B/32 shape (its saved state is the lse, B·H·S) and
/// matches the CPU; a head dim the fused kernel lacks falls back to the naive kernel (probabilities saved).
#[test]
fn gpu_attention_fused_through_cuda_backend() {
    if super::gpu().is_none() {
        return;
    }
    let b = CudaBackend::<bf16>::new().unwrap();
    let s = seed(9900);
    let mut r = rng(s);
    let cpu = Cpu::new();
    let spec = Attention::packed_self(3, 50, 12, 64, false);
    assert_eq!(b.attention_saved_len(&spec), 3 * 12 * 50);
    assert_eq!(b.attention_saved_len(&Attention::packed_self(3, 50, 2, 24, false)), 3 * 2 * 50 * 50);
    let (qkv, qkvf) = draw::<bf16>(&mut r, spec.qkv_len(), 1.0);
    let (dout, doutf) = draw::<bf16>(&mut r, spec.out_len(), 1.0);
    let padding = padding_mask(&mut r, &spec, 0.2, &[1]);

    let (mut out, mut saved) = (vec![0f32; spec.out_len()], vec![0f32; cpu.attention_saved_len(&spec)]);
    cpu.attention_forward(&spec, &qkvf, Some(&padding), &mut out, &mut saved).unwrap();
    let mut dqkv = vec![f32::NAN; spec.qkv_len()];
    cpu.attention_backward(&spec, &qkvf, Some(&padding), &out, &saved, &doutf, &mut dqkv).unwrap();

    let qkv_d = b.upload(&qkv).unwrap();
    let pad_d = b.upload(&padding).unwrap();
    let mut out_d = b.upload(&vec![bf16::NAN; spec.out_len()]).unwrap();
    let mut saved_d = b.upload(&vec![f32::NAN; b.attention_saved_len(&spec)]).unwrap();
    b.attention_forward(
        &spec,
        CudaBackend::<bf16>::view(&qkv_d),
        Some(CudaBackend::<bf16>::view(&pad_d)),
        CudaBackend::<bf16>::view_mut(&mut out_d),
        CudaBackend::<bf16>::view_mut(&mut saved_d),
    )
    .unwrap();
    let dout_d = b.upload(&dout).unwrap();
    let mut dqkv_d = b.upload(&vec![bf16::NAN; spec.qkv_len()]).unwrap();
    b.attention_backward(
        &spec,
        CudaBackend::<bf16>::view(&qkv_d),
        Some(CudaBackend::<bf16>::view(&pad_d)),
        CudaBackend::<bf16>::view(&out_d),
        CudaBackend::<bf16>::view(&saved_d),
        CudaBackend::<bf16>::view(&dout_d),
        CudaBackend::<bf16>::view_mut(&mut dqkv_d),
    )
    .unwrap();
    let back = |v: Vec<bf16>| v.into_iter().map(|x| x.to_f32()).collect::<Vec<_>>();
    let label = "attention fused through CudaBackend<bf16> ViT-B/32 packed";
    let got_out = back(b.download(CudaBackend::<bf16>::view(&out_d)).unwrap());
    assert_close(&format!("{label} out"), s, &got_out, &out, bf16::RTOL, bf16::ATOL);
    let got_lse = b.download(CudaBackend::<bf16>::view(&saved_d)).unwrap();
    assert_lse(label, s, &got_lse, &reference_lse(&spec, &qkvf, Some(&padding)));
    let got_dqkv = back(b.download(CudaBackend::<bf16>::view(&dqkv_d)).unwrap());
    assert_close(&format!("{label} dqkv"), s, &got_dqkv, &dqkv, bf16::RTOL, bf16::ATOL);
}
