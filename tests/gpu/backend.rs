//! Backend-level GPU parity: every method of `trait Backend` on `CudaBackend<f32>` (the fp32 parity mode) and
//! `CudaBackend<bf16>` (training) against `CpuBackend<f32>`, through the trait only. Filter with `gpu_backend`.
//!
//! Each family is one generic function `fn *_op<B: Backend>(b: &B, host inputs…) -> Result<Vec<Out>>` that uploads
//! the same host inputs, poisons every overwritten output with NaN through `fill`, runs the trait methods and
//! downloads what they wrote; the test runs it on both backends and compares output by output. Inputs are fresh
//! seeded draws (the seed is in every failure message; `CLIPRT_TEST_SEED` replays another). Activation inputs are
//! rounded to the CUDA compute dtype on the host first and the CPU computes on the rounded values, so only the
//! primitive's own error is measured; accumulated outputs (parameter gradients, running statistics) start from
//! random non-zero values. Where a backward needs what its forward saved in a backend-neutral form (LayerNorm and
//! BatchNorm statistics, softmax and L2-norm outputs, cross-entropy log-sum-exps), both backends get the CPU's
//! (rounded like an activation where it is one); attention and the CLIP loss keep their own saved state (its layout
//! is the backend's business).
//!
//! The case functions are generic over the backend under test (`G: Backend<Act = A, Master = f32>`), so the harness
//! itself can be checked without a GPU by running a case against the CPU, e.g.
//! `layernorm_case::<f32, Cpu>(&Cpu::new())` (every case passes that way, bit for bit).
//!
//! Tolerances (DESIGN "Numerics"; ‖err‖/‖ref‖ and max|err| ≤ rtol·max|ref| + atol, NaN never passes):
//! - [`F32`] 1e-5: fp32 outputs of one element-wise or per-row computation (expf/erff differ by ulps).
//! - [`F32_SUM`] 1e-4: fp32 outputs of long sums whose order differs (GEMM k-sums, convolutions, which cuDNN may do by
//!   Winograd or FFT, column sums over thousands of rows, attention, losses, BatchNorm statistics).
//! - [`BF16`] 1e-2: bf16 outputs of fp32 math, rounded once (≤ 2⁻⁹ ≈ 2e-3 relative per element).
//! - [`BF16_CHAIN`] 3e-2: bf16 results that went through more than one bf16 rounding (the CLIP loss: normalised
//!   features and logit gradients may be stored in bf16 between its GEMMs; the filter gradient of a bf16 convolution,
//!   which cuDNN writes in bf16 before it is added into the fp32 gradient).
//! - Bit-exact: memory operations, casts, layout copies, gathers, the embedding scatter-add (fixed token order on
//!   both) and AdamW (kernels/optim.cu rounds every operation explicitly, in the CPU's order).

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::cuda::{self, CudaAct, CudaBackend};
use cliprt::backend::{
    Activation, AdamW, Attention, Backend, BatchNorm, ClipLoss, Conv2d, DecaySegment, Elem, Gemm, Pool2d,
};
use cliprt::model::clip::INITIAL_LOGIT_SCALE;
use cliprt::testing::{assert_close, indices, normal, rng, seed, uniform};
use cliprt::{Error, Result};
use half::{bf16, f16};
use rand_chacha::ChaCha8Rng;

type Cpu = CpuBackend<f32>;

/// A tolerance for [`assert_close`].
#[derive(Clone, Copy, Debug)]
struct Tol {
    rtol: f64,
    atol: f64,
}

const F32: Tol = Tol { rtol: 1e-5, atol: 1e-6 };
const F32_SUM: Tol = Tol { rtol: 1e-4, atol: 1e-6 };
const BF16: Tol = Tol { rtol: 1e-2, atol: 1e-5 };
const BF16_CHAIN: Tol = Tol { rtol: 3e-2, atol: 1e-5 };

const KINDS: [Activation; 3] = [Activation::Relu, Activation::Gelu, Activation::QuickGelu];

// ------------------------------------------------------------------------------------------------ harness ---------

/// A compute dtype of the CUDA backend under test.
pub(crate) trait TestAct: CudaAct {
    const LABEL: &'static str;
    /// Index into the per-mode tolerances of an [`Out`]: 0 for f32, 1 for bf16.
    const MODE: usize;
    /// The value of this dtype nearest to `x` (round to nearest even), widened back to f32.
    fn quantize(x: f32) -> f32;
}

impl TestAct for f32 {
    const LABEL: &'static str = "f32";
    const MODE: usize = 0;
    fn quantize(x: f32) -> f32 {
        x
    }
}

impl TestAct for bf16 {
    const LABEL: &'static str = "bf16";
    const MODE: usize = 1;
    fn quantize(x: f32) -> f32 {
        bf16::from_f32(x).to_f32()
    }
}

/// The CUDA backend computing in `A`, or None after printing the one skip line. A machine that has a GPU but cannot
/// build the backend fails the test: that is a broken setup, not a reason to skip.
pub(crate) fn backend<A: TestAct>() -> Option<CudaBackend<A>> {
    match CudaBackend::<A>::new() {
        Ok(b) => Some(b),
        Err(e) => match cuda::context() {
            Err(Error::CudaUnavailable(reason)) => {
                println!("skipped: no CUDA device: {reason}");
                None
            }
            Err(other) => {
                println!("skipped: no CUDA device: {other}");
                None
            }
            Ok(_) => panic!("a CUDA device exists but CudaBackend::<{}>::new failed: {e}", A::LABEL),
        },
    }
}

/// Host values rounded to `A` (as f32).
pub(crate) fn quantized<A: TestAct>(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| A::quantize(v)).collect()
}

/// `len` draws of `offset + std·N(0, 1)`, rounded to `A` (an activation input).
pub(crate) fn draw<A: TestAct>(r: &mut ChaCha8Rng, len: usize, offset: f32, std: f64) -> Vec<f32> {
    normal::<f32>(r, len, std).into_iter().map(|v| A::quantize(v + offset)).collect()
}

/// `len` draws of `offset + std·N(0, 1)` in f32 (a master-dtype input).
fn draw_master(r: &mut ChaCha8Rng, len: usize, offset: f32, std: f64) -> Vec<f32> {
    normal::<f32>(r, len, std).into_iter().map(|v| v + offset).collect()
}

/// How one output is compared.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// Close within the tolerance of the mode (`[f32 mode, bf16 mode]`).
    Close([Tol; 2]),
    /// The same bits (NaN matches NaN: poison left in place).
    Bits,
    /// The same bits once the reference is rounded to the compute dtype (a cast or copy into `A`).
    ActBits,
}

/// One downloaded output of a primitive, widened to f32.
struct Out {
    name: String,
    data: Vec<f32>,
    check: Check,
}

impl Out {
    fn new(name: impl Into<String>, data: Vec<f32>, check: Check) -> Out {
        Out { name: name.into(), data, check }
    }
    /// An activation-dtype output of fp32 math.
    fn act(name: impl Into<String>, data: Vec<f32>) -> Out {
        Out::new(name, data, Check::Close([F32, BF16]))
    }
    /// A master-dtype output of element-wise or per-row fp32 math.
    fn master(name: impl Into<String>, data: Vec<f32>) -> Out {
        Out::new(name, data, Check::Close([F32, F32]))
    }
    /// A master-dtype output of long sums.
    fn sum(name: impl Into<String>, data: Vec<f32>) -> Out {
        Out::new(name, data, Check::Close([F32_SUM, F32_SUM]))
    }
    fn exact(name: impl Into<String>, data: Vec<f32>) -> Out {
        Out::new(name, data, Check::Bits)
    }
    fn tol(mut self, f32_mode: Tol, bf16_mode: Tol) -> Out {
        self.check = Check::Close([f32_mode, bf16_mode]);
        self
    }
}

/// Outputs of a primitive that writes strided regions: the covered elements (compared with `check`) and the rest,
/// which must come back exactly as they went in.
fn covered_and_rest(name: &str, data: Vec<f32>, covered: &[bool], check: Check) -> [Out; 2] {
    let (mut inside, mut rest) = (Vec::new(), Vec::new());
    for (v, &c) in data.into_iter().zip(covered) {
        if c {
            inside.push(v);
        } else {
            rest.push(v);
        }
    }
    [Out::new(name, inside, check), Out::exact(format!("{name} (outside the written regions)"), rest)]
}

fn assert_bits(label: &str, seed: u64, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label} (seed {seed}): length {} vs {}", got.len(), want.len());
    let differs = |(g, w): (&f32, &f32)| g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan());
    if let Some(i) = got.iter().zip(want).position(differs) {
        let count = got.iter().zip(want).filter(|&p| differs(p)).count();
        panic!(
            "{label} (seed {seed}): {count} elements differ, the first at {i}: got {:e} ({:#010x}), want {:e} \
             ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

/// Compares the CUDA backend's outputs (`got`) with the CPU reference's (`want`), output by output.
fn compare<A: TestAct>(label: &str, seed: u64, got: Result<Vec<Out>>, want: Result<Vec<Out>>) {
    let want = want.unwrap_or_else(|e| panic!("{label} (seed {seed}): the CPU reference failed: {e}"));
    let got = got.unwrap_or_else(|e| panic!("{label} {} (seed {seed}): the CUDA backend failed: {e}", A::LABEL));
    let names = |o: &[Out]| o.iter().map(|o| o.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "{label}: the two runs returned different outputs");
    for (g, w) in got.iter().zip(&want) {
        let label = format!("{label} {}: {}", A::LABEL, w.name);
        match w.check {
            Check::Close(tol) => {
                let Tol { rtol, atol } = tol[A::MODE];
                assert_close(&label, seed, &g.data, &w.data, rtol, atol);
            }
            Check::Bits => assert_bits(&label, seed, &g.data, &w.data),
            Check::ActBits => assert_bits(&label, seed, &g.data, &quantized::<A>(&w.data)),
        }
    }
}

/// Runs `op` on the CUDA backend and on the CPU reference and compares.
macro_rules! parity {
    ($gpu:expr, $label:expr, $seed:expr, $op:ident($($arg:expr),* $(,)?)) => {
        compare::<A>(&$label, $seed, $op($gpu, $($arg),*), $op(&Cpu::new(), $($arg),*))
    };
}

/// A `#[test]` per compute dtype for each case function.
macro_rules! gpu_tests {
    ($($case:ident => $f32:ident, $bf16:ident;)*) => {$(
        #[test]
        fn $f32() {
            if let Some(gpu) = backend::<f32>() {
                $case(&gpu);
            }
        }
        #[test]
        fn $bf16() {
            if let Some(gpu) = backend::<bf16>() {
                $case(&gpu);
            }
        }
    )*};
}

// Device-side helpers, generic over the backend.

fn to_act<B: Backend>(x: &[f32]) -> Vec<B::Act> {
    x.iter().map(|&v| B::Act::from_real(v as f64)).collect()
}
fn act<B: Backend>(b: &B, x: &[f32]) -> Result<B::Buf<B::Act>> {
    b.upload(&to_act::<B>(x))
}
fn master<B: Backend>(b: &B, x: &[f32]) -> Result<B::Buf<B::Master>> {
    b.upload(&x.iter().map(|&v| B::Master::from_real(v as f64)).collect::<Vec<_>>())
}
/// A buffer of `len` NaNs written by `fill`.
fn poisoned<B: Backend, T: Elem>(b: &B, len: usize, value: T) -> Result<B::Buf<T>> {
    let mut buf = b.zeros::<T>(len)?;
    b.fill(B::view_mut(&mut buf), value)?;
    Ok(buf)
}
fn nan_act<B: Backend>(b: &B, len: usize) -> Result<B::Buf<B::Act>> {
    poisoned(b, len, B::Act::from_real(f64::NAN))
}
fn nan_master<B: Backend>(b: &B, len: usize) -> Result<B::Buf<B::Master>> {
    poisoned(b, len, B::Master::from_real(f64::NAN))
}
fn widen<T: Elem>(x: Vec<T>) -> Vec<f32> {
    x.into_iter().map(|v| v.to_real() as f32).collect()
}
fn host_act<B: Backend>(b: &B, x: &B::Buf<B::Act>) -> Result<Vec<f32>> {
    Ok(widen(b.download(B::view(x))?))
}
fn host_master<B: Backend>(b: &B, x: &B::Buf<B::Master>) -> Result<Vec<f32>> {
    Ok(widen(b.download(B::view(x))?))
}

fn take(outs: &[Out], name: &str) -> Vec<f32> {
    outs.iter().find(|o| o.name == name).unwrap_or_else(|| panic!("no output `{name}`")).data.clone()
}

// ------------------------------------------------------------------------------------------------ memory ----------

/// zeros / upload / write / fill / copy / slice / slice_mut / split_at_mut / reborrow / as_ref / len / buf_len on
/// activation buffers, at odd offsets (views that are not 16-byte aligned).
fn memory_op<B: Backend>(b: &B, x: &[f32]) -> Result<Vec<Out>> {
    let n = x.len();
    let mut outs = Vec::new();
    let z = b.zeros::<B::Act>(n)?;
    assert_eq!(B::buf_len(&z), n, "buf_len");
    outs.push(Out::exact("zeros", host_act(b, &z)?));
    let u = act(b, x)?;
    assert_eq!(B::len(B::view(&u)), n, "len");
    outs.push(Out::exact("upload then download", host_act(b, &u)?));

    let (lo, hi) = (n / 3, n - n / 4);
    let mut w = nan_act(b, n)?;
    b.write(&to_act::<B>(&x[..hi - lo]), B::slice_mut(B::view_mut(&mut w), lo..hi))?;
    outs.push(Out::exact("write into slice_mut", host_act(b, &w)?));

    let mut f = act(b, x)?;
    {
        let mut view = B::view_mut(&mut f);
        assert_eq!(B::len_mut(&view), n, "len_mut");
        b.fill(B::slice_mut(B::reborrow(&mut view), 0..n / 2), B::Act::from_real(-2.5))?;
        // Zero takes the memset path on the GPU.
        b.fill(B::slice_mut(B::reborrow(&mut view), n / 2..n - n / 5), B::Act::from_real(0.0))?;
        let seen = widen(b.download(B::as_ref(&view))?);
        outs.push(Out::exact("fill (read through as_ref)", seen));
    }

    let mut c = nan_act(b, n + 2)?;
    b.copy(B::slice(B::view(&u), 1..n), B::slice_mut(B::view_mut(&mut c), 2..n + 1))?;
    outs.push(Out::exact("copy between offset views", host_act(b, &c)?));

    let mut s = nan_act(b, n)?;
    let mid = n.div_ceil(2);
    let (left, right) = B::split_at_mut(B::view_mut(&mut s), mid);
    b.fill(left, B::Act::from_real(1.25))?;
    b.copy(B::slice(B::view(&u), 0..n - mid), right)?;
    b.synchronize()?;
    outs.push(Out::exact("split_at_mut halves", host_act(b, &s)?));
    Ok(outs)
}

/// Upload, fill of an offset range and download of any element type.
fn roundtrip<B: Backend, T: Elem>(b: &B, host: &[T], value: T) -> Result<Vec<T>> {
    let n = host.len();
    let mut buf = b.upload(host)?;
    b.fill(B::slice_mut(B::view_mut(&mut buf), 1.min(n)..n - n / 3), value)?;
    b.download(B::view(&buf))
}

fn roundtrip_case<T: Elem>(gpu: &impl Backend, label: &str, s: u64, host: &[T], value: T) {
    let got = roundtrip(gpu, host, value).unwrap_or_else(|e| panic!("{label} on the GPU: {e}"));
    let want = roundtrip(&Cpu::new(), host, value).unwrap();
    let bytes = |x: &[T]| bytemuck::cast_slice::<T, u8>(x).to_vec();
    assert!(bytes(&got) == bytes(&want), "{label} (seed {s}): the GPU's bytes differ from the CPU's");
}

fn memory_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (k, &n) in [1usize, 7, 1000, (1 << 22) + 3].iter().enumerate() {
        let s = seed(10_000 + k as u64);
        let mut r = rng(s);
        let x = draw::<A>(&mut r, n, 0.0, 1.0);
        parity!(gpu, format!("memory n={n}"), s, memory_op(&x));

        let xf = normal::<f32>(&mut r, n, 1e3);
        roundtrip_case(gpu, &format!("f64 roundtrip n={n}"), s, &normal::<f64>(&mut r, n, 1.0), -0.1);
        roundtrip_case(gpu, &format!("f32 roundtrip n={n}"), s, &xf, f32::MIN_POSITIVE);
        let bf: Vec<bf16> = xf.iter().map(|&v| bf16::from_f32(v)).collect();
        roundtrip_case(gpu, &format!("bf16 roundtrip n={n}"), s, &bf, bf16::from_f32(3.0));
        let hf: Vec<f16> = xf.iter().map(|&v| f16::from_f32(v)).collect();
        roundtrip_case(gpu, &format!("f16 roundtrip n={n}"), s, &hf, f16::from_f32(-7.0));
        let ids: Vec<i32> = indices(&mut r, n, 1 << 30).iter().map(|&i| i - (1 << 29)).collect();
        roundtrip_case(gpu, &format!("i32 roundtrip n={n}"), s, &ids, -123_456_789);
        let bytes: Vec<u8> = indices(&mut r, n, 256).iter().map(|&i| i as u8).collect();
        roundtrip_case(gpu, &format!("u8 roundtrip n={n}"), s, &bytes, 0xa5);
    }
    // Length mismatches are shape errors, as on the CPU.
    let mut dst = gpu.zeros::<f32>(3).unwrap();
    let err = gpu.write(&[1.0f32, 2.0], G::view_mut(&mut dst)).unwrap_err();
    assert!(matches!(err, Error::Shape { got: 3, want: 2, .. }), "write of 2 into 3: {err}");
    let src = gpu.zeros::<f32>(4).unwrap();
    let err = gpu.copy(G::view(&src), G::view_mut(&mut dst)).unwrap_err();
    assert!(matches!(err, Error::Shape { got: 3, want: 4, .. }), "copy of 4 into 3: {err}");
}

// ------------------------------------------------------------------------------------------------ casts -----------

/// The six casts: master ↔ compute dtype, master ↔ bf16, master ↔ f16.
fn casts_op<B: Backend>(b: &B, x: &[f32], x_act: &[f32]) -> Result<Vec<Out>> {
    let n = x.len();
    let xm = master(b, x)?;
    let mut outs = Vec::new();

    let mut y = nan_act(b, n)?;
    b.master_to_act(B::view(&xm), B::view_mut(&mut y))?;
    outs.push(Out::new("master_to_act", host_act(b, &y)?, Check::ActBits));

    let xa = act(b, x_act)?;
    let mut ym = nan_master(b, n)?;
    b.act_to_master(B::view(&xa), B::view_mut(&mut ym))?;
    outs.push(Out::exact("act_to_master", host_master(b, &ym)?));

    let mut yb = poisoned(b, n, bf16::NAN)?;
    b.cast_to_bf16(B::view(&xm), B::view_mut(&mut yb))?;
    outs.push(Out::exact("cast_to_bf16", widen(b.download(B::view(&yb))?)));
    let mut back = nan_master(b, n)?;
    b.cast_from_bf16(B::view(&yb), B::view_mut(&mut back))?;
    outs.push(Out::exact("cast_from_bf16", host_master(b, &back)?));

    let mut yh = poisoned(b, n, f16::NAN)?;
    b.cast_to_f16(B::view(&xm), B::view_mut(&mut yh))?;
    outs.push(Out::exact("cast_to_f16", widen(b.download(B::view(&yh))?)));
    let mut back = nan_master(b, n)?;
    b.cast_from_f16(B::view(&yh), B::view_mut(&mut back))?;
    outs.push(Out::exact("cast_from_f16", host_master(b, &back)?));
    Ok(outs)
}

fn casts_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (k, &n) in [1usize, 7, 1000, (1 << 20) + 3].iter().enumerate() {
        let s = seed(10_100 + k as u64);
        // Many magnitudes plus the values rounding gets wrong (ties, subnormals, overflow, infinities).
        let x = super::cast_inputs(s, n);
        let x_act = quantized::<A>(&x);
        parity!(gpu, format!("casts n={n}"), s, casts_op(&x, &x_act));
    }
}

// ------------------------------------------------------------------------------------------------ GEMM ------------

/// `gemm` (or `gemm_to_master`) of `spec`; C starts as `c0` (accumulating specs) or poisoned.
fn gemm_op<B: Backend>(
    b: &B,
    spec: &Gemm,
    a: &[f32],
    bm: &[f32],
    c0: Option<&[f32]>,
    to_master: bool,
) -> Result<Vec<Out>> {
    let (ad, bd) = (act(b, a)?, act(b, bm)?);
    let len_c = spec.required_lens().2;
    let (c, check) = if to_master {
        let mut c = match c0 {
            Some(c0) => master(b, c0)?,
            None => nan_master(b, len_c)?,
        };
        b.gemm_to_master(spec, B::view(&ad), B::view(&bd), B::view_mut(&mut c))?;
        (host_master(b, &c)?, Check::Close([F32_SUM, F32_SUM]))
    } else {
        let mut c = match c0 {
            Some(c0) => act(b, c0)?,
            None => nan_act(b, len_c)?,
        };
        b.gemm(spec, B::view(&ad), B::view(&bd), B::view_mut(&mut c))?;
        (host_act(b, &c)?, Check::Close([F32_SUM, BF16]))
    };
    // The batch's C matrices, and the gaps between them (left alone).
    let mn = spec.m * spec.n;
    let covered: Vec<bool> = (0..c.len()).map(|i| spec.batch <= 1 || i % spec.stride_c.max(1) < mn).collect();
    Ok(covered_and_rest("c", c, &covered, check).into())
}

fn gemm_case<A: TestAct, G: Backend<Act = A, Master = f32>>(
    gpu: &G,
    label: &str,
    s: u64,
    spec: &Gemm,
    to_master: bool,
) {
    let mut r = rng(s);
    let (la, lb, lc) = spec.required_lens();
    let a = draw::<A>(&mut r, la, 0.0, 1.0);
    let bm = draw::<A>(&mut r, lb, 0.0, 1.0);
    let c0 = (spec.beta != 0.0).then(|| {
        if to_master {
            draw_master(&mut r, lc, 0.0, 1.0)
        } else {
            draw::<A>(&mut r, lc, 0.0, 1.0)
        }
    });
    let label = format!("{label} {spec:?} to_master={to_master}");
    parity!(gpu, label, s, gemm_op(spec, &a, &bm, c0.as_deref(), to_master));
}

const TRANS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];
/// (m, n, k): odd sizes, each size in each role.
const GEMM_SHAPES: [(usize, usize, usize); 5] = [(1, 7, 33), (7, 33, 129), (33, 129, 1), (129, 1, 7), (65, 97, 31)];

/// Every transpose combination on odd shapes, overwriting (alpha ≠ 1, poisoned C) and accumulating
/// (alpha = −0.5, beta = 0.75 into a random C); k = 0 (C = beta·C); one ViT-B-sized product (x·Wᵀ of a QKV projection).
fn gemm_transposes_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let mut k = 0;
    for &(ta, tb) in &TRANS {
        for &(m, n, kk) in &GEMM_SHAPES {
            let s = seed(10_200 + k);
            k += 1;
            gemm_case(gpu, "gemm", s, &Gemm::new(m, n, kk, ta, tb).alpha(0.7), false);
            let mut acc = Gemm::new(m, n, kk, ta, tb).alpha(-0.5);
            acc.beta = 0.75;
            gemm_case(gpu, "gemm accumulate", s, &acc, false);
        }
    }
    let mut empty_k = Gemm::new(5, 7, 0, false, true);
    empty_k.beta = 0.5;
    gemm_case(gpu, "gemm k=0", seed(10_290), &empty_k, false);
    gemm_case(gpu, "gemm large", seed(10_291), &Gemm::new(800, 2304, 768, false, true), false);
}

/// Batched products: packed, A broadcast (stride 0), B broadcast, C matrices with gaps between them (which must be
/// left alone), accumulating; one attention-sized batch (QKᵀ per head).
fn gemm_batched_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let (m, n, k) = (7, 33, 13);
    for (i, &(ta, tb)) in TRANS.iter().enumerate() {
        let base = Gemm::new(m, n, k, ta, tb).batched(3);
        let s = seed(10_300 + 10 * i as u64);
        gemm_case(gpu, "gemm batched packed", s, &base, false);
        gemm_case(gpu, "gemm batched, A broadcast", s + 1, &base.strides(0, k * n, m * n), false);
        gemm_case(gpu, "gemm batched, B broadcast", s + 2, &base.strides(m * k, 0, m * n), false);
        let gaps = base.strides(m * k + 3, k * n + 5, m * n + 11).alpha(1.5);
        gemm_case(gpu, "gemm batched, strided C with gaps", s + 3, &gaps, false);
        let mut acc = gaps;
        acc.beta = 1.0;
        gemm_case(gpu, "gemm batched accumulate", s + 4, &acc, false);
    }
    let heads = Gemm::new(50, 50, 64, false, true).batched(96).alpha(0.125);
    gemm_case(gpu, "gemm batched large", seed(10_390), &heads, false);
}

/// Weight gradients `dW += dYᵀ·X` into a random fp32 C (beta = 1), the overwriting form into a poisoned C, batched
/// with gaps, and one ViT-B-sized MLP weight gradient.
fn gemm_to_master_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (i, &(out_f, in_f, rows)) in
        [(1usize, 1usize, 1usize), (7, 33, 129), (33, 7, 5), (65, 31, 97)].iter().enumerate()
    {
        let s = seed(10_400 + 10 * i as u64);
        let dw = Gemm::new(out_f, in_f, rows, true, false).accumulate();
        gemm_case(gpu, "gemm_to_master dW += dYᵀX", s, &dw, true);
        gemm_case(gpu, "gemm_to_master overwrite", s + 1, &Gemm::new(out_f, in_f, rows, true, false), true);
        for &(ta, tb) in &TRANS {
            gemm_case(gpu, "gemm_to_master", s + 2, &Gemm::new(out_f, in_f, rows, ta, tb).alpha(-2.0), true);
        }
    }
    let batched = Gemm::new(9, 11, 17, false, true).batched(4).strides(0, 11 * 17, 9 * 11 + 4).accumulate();
    gemm_case(gpu, "gemm_to_master batched", seed(10_480), &batched, true);
    gemm_case(gpu, "gemm_to_master large", seed(10_490), &Gemm::new(768, 3072, 800, true, false).accumulate(), true);
}

// ------------------------------------------------------------------------------------------------ bias ------------

#[allow(clippy::too_many_arguments)]
fn bias_op<B: Backend>(
    b: &B,
    y0: &[f32],
    v: &[f32],
    x: &[f32],
    out0: &[f32],
    rows: usize,
    cols: usize,
) -> Result<Vec<Out>> {
    let mut y = act(b, y0)?;
    let vd = act(b, v)?;
    b.add_row_vector(B::view_mut(&mut y), B::view(&vd), rows, cols)?;
    let xd = act(b, x)?;
    let mut fresh = nan_master(b, cols)?;
    b.sum_rows(B::view(&xd), B::view_mut(&mut fresh), rows, cols, false)?;
    let mut acc = master(b, out0)?;
    b.sum_rows(B::view(&xd), B::view_mut(&mut acc), rows, cols, true)?;
    Ok(vec![
        Out::act("add_row_vector", host_act(b, &y)?),
        Out::sum("sum_rows (overwrite)", host_master(b, &fresh)?),
        Out::sum("sum_rows (accumulate)", host_master(b, &acc)?),
    ])
}

/// `add_row_vector` (a bias, a positional embedding over `seq·width` columns) and its backward `sum_rows`, overwriting
/// and accumulating.
fn bias_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let shapes = [(1, 1), (7, 33), (129, 769), (3, 1025), (4, 50 * 768), (12_800, 768)];
    for (k, &(rows, cols)) in shapes.iter().enumerate() {
        let s = seed(10_500 + k as u64);
        let mut r = rng(s);
        let y0 = draw::<A>(&mut r, rows * cols, 0.0, 1.0);
        let v = draw::<A>(&mut r, cols, 0.5, 1.0);
        let x = draw::<A>(&mut r, rows * cols, 0.1, 1.0);
        let out0 = draw_master(&mut r, cols, 0.0, 3.0);
        parity!(gpu, format!("bias {rows}x{cols}"), s, bias_op(&y0, &v, &x, &out0, rows, cols));
    }
}

// ------------------------------------------------------------------------------------------------ element-wise ----

const ELEMENTWISE_SIZES: [usize; 4] = [1, 7, 1000, (1 << 20) + 3];

fn elementwise_op<B: Backend>(b: &B, a: &[f32], x: &[f32], y0: &[f32], m0: &[f32]) -> Result<Vec<Out>> {
    let n = a.len();
    let (ad, xd) = (act(b, a)?, act(b, x)?);
    let mut sum = nan_act(b, n)?;
    b.add(B::view(&ad), B::view(&xd), B::view_mut(&mut sum))?;
    let mut y = act(b, y0)?;
    b.axpy(-0.37, B::view(&xd), B::view_mut(&mut y))?;
    let mut scaled = act(b, y0)?;
    b.scale(1.7, B::view_mut(&mut scaled))?;
    let mut m = master(b, m0)?;
    b.scale_master(-0.3, B::view_mut(&mut m))?;
    Ok(vec![
        Out::act("add", host_act(b, &sum)?),
        Out::act("axpy", host_act(b, &y)?),
        Out::act("scale", host_act(b, &scaled)?),
        Out::master("scale_master", host_master(b, &m)?),
    ])
}

/// add, axpy, scale (compute dtype) and scale_master (fp32), in place where the trait says so.
fn elementwise_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (k, &n) in ELEMENTWISE_SIZES.iter().enumerate() {
        let s = seed(10_600 + k as u64);
        let mut r = rng(s);
        let (a, x, y0) =
            (draw::<A>(&mut r, n, 0.0, 1.0), draw::<A>(&mut r, n, 0.0, 1.0), draw::<A>(&mut r, n, 0.0, 1.0));
        let m0 = draw_master(&mut r, n, 0.0, 1.0);
        parity!(gpu, format!("elementwise n={n}"), s, elementwise_op(&a, &x, &y0, &m0));
    }
}

fn activation_op<B: Backend>(b: &B, kind: Activation, x: &[f32], dy: &[f32]) -> Result<Vec<Out>> {
    let n = x.len();
    let (xd, dyd) = (act(b, x)?, act(b, dy)?);
    let mut y = nan_act(b, n)?;
    b.activation_forward(kind, B::view(&xd), B::view_mut(&mut y))?;
    let mut dx = nan_act(b, n)?;
    b.activation_backward(kind, B::view(&xd), B::view(&dyd), B::view_mut(&mut dx))?;
    Ok(vec![Out::act("forward", host_act(b, &y)?), Out::act("backward", host_act(b, &dx)?)])
}

/// ReLU, exact GELU and QuickGELU, forward and backward.
fn activation_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for kind in KINDS {
        for (k, &n) in ELEMENTWISE_SIZES.iter().enumerate() {
            let s = seed(10_700 + k as u64);
            let mut r = rng(s);
            let (x, dy) = (draw::<A>(&mut r, n, 0.0, 2.0), draw::<A>(&mut r, n, 0.0, 1.0));
            parity!(gpu, format!("{kind:?} n={n}"), s, activation_op(kind, &x, &dy));
        }
    }
}

// ------------------------------------------------------------------------------------------------ layout ----------

fn layout_op<B: Backend>(
    b: &B,
    x: &[f32],
    (batch, rows, cols): (usize, usize, usize),
    src: &[f32],
    dst0: &[f32],
    (src_stride, dst_stride, copy_rows, copy_cols): (usize, usize, usize, usize),
) -> Result<Vec<Out>> {
    let xd = act(b, x)?;
    let mut y = nan_act(b, x.len())?;
    b.transpose(B::view(&xd), B::view_mut(&mut y), batch, rows, cols)?;
    let mut back = nan_act(b, x.len())?;
    b.transpose(B::view(&y), B::view_mut(&mut back), batch, cols, rows)?;
    let sd = act(b, src)?;
    let mut dst = act(b, dst0)?;
    b.copy_rows(B::view(&sd), src_stride, B::view_mut(&mut dst), dst_stride, copy_rows, copy_cols)?;
    Ok(vec![
        Out::exact("transpose", host_act(b, &y)?),
        Out::exact("transpose back", host_act(b, &back)?),
        Out::exact("copy_rows (the rest of dst untouched)", host_act(b, &dst)?),
    ])
}

/// `transpose` (NCHW ↔ tokens, both ways) and `copy_rows` (broadcast with src_stride 0 as for the class token,
/// strided both sides, the ViT's patch rows after the class token); the elements of dst between the rows must keep
/// their (random) values.
fn layout_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let cases = [
        ((1, 1, 1), (0, 1, 1, 1)),
        ((3, 7, 33), (0, 5 * 33, 3, 33)),
        ((2, 33, 7), (40, 45, 17, 33)),
        ((5, 49, 768), (768 * 49, 768 * 50, 5, 768 * 49)),
        ((64, 768, 49), (0, 50 * 768, 64, 768)),
    ];
    for (k, &(shape, copy)) in cases.iter().enumerate() {
        let s = seed(10_800 + k as u64);
        let mut r = rng(s);
        let x = draw::<A>(&mut r, shape.0 * shape.1 * shape.2, 0.0, 1.0);
        let (src_stride, dst_stride, rows, cols) = copy;
        let src = draw::<A>(&mut r, (rows - 1) * src_stride + cols, 0.0, 1.0);
        let dst0 = draw::<A>(&mut r, (rows - 1) * dst_stride + cols + 3, 0.0, 1.0);
        parity!(
            gpu,
            format!("layout transpose {shape:?} copy_rows {copy:?}"),
            s,
            layout_op(&x, shape, &src, &dst0, copy)
        );
    }
}

fn gather_op<B: Backend>(b: &B, x: &[f32], index: &[i32], dy: &[f32], seq: usize, dim: usize) -> Result<Vec<Out>> {
    let batch = index.len();
    let (xd, dyd, id) = (act(b, x)?, act(b, dy)?, b.upload(index)?);
    let mut y = nan_act(b, batch * dim)?;
    b.gather_tokens(B::view(&xd), B::view(&id), B::view_mut(&mut y), batch, seq, dim)?;
    let mut dx = nan_act(b, batch * seq * dim)?;
    b.gather_tokens_backward(B::view(&dyd), B::view(&id), B::view_mut(&mut dx), batch, seq, dim)?;
    Ok(vec![Out::exact("gather_tokens", host_act(b, &y)?), Out::exact("gather_tokens_backward", host_act(b, &dx)?)])
}

/// `gather_tokens` (class / EOT pooling) and its backward (dx overwritten: zeros except the gathered rows), first and
/// last positions included; an index outside `0..seq` is an error naming it.
fn gather_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (k, &(batch, seq, dim)) in [(1, 1, 1), (5, 13, 33), (7, 77, 512), (256, 77, 512)].iter().enumerate() {
        let s = seed(10_900 + k as u64);
        let mut r = rng(s);
        let x = draw::<A>(&mut r, batch * seq * dim, 0.0, 1.0);
        let mut index = indices(&mut r, batch, seq);
        index[0] = (seq - 1) as i32;
        if batch > 1 {
            index[1] = 0;
        }
        let dy = draw::<A>(&mut r, batch * dim, 0.0, 1.0);
        parity!(gpu, format!("gather {batch}x{seq}x{dim}"), s, gather_op(&x, &index, &dy, seq, dim));
    }
    let (batch, seq, dim) = (3, 5, 4);
    let x = gpu.zeros::<A>(batch * seq * dim).unwrap();
    let mut y = gpu.zeros::<A>(batch * dim).unwrap();
    for bad in [seq as i32, -1] {
        let index = gpu.upload(&[0, bad, 1]).unwrap();
        let err = gpu.gather_tokens(G::view(&x), G::view(&index), G::view_mut(&mut y), batch, seq, dim).unwrap_err();
        assert!(
            matches!(err, Error::Invalid { .. }) && err.to_string().contains(&bad.to_string()),
            "index {bad}: {err}"
        );
    }
}

// ------------------------------------------------------------------------------------------------ embedding -------

fn embedding_op<B: Backend>(
    b: &B,
    ids: &[i32],
    table: &[f32],
    dout: &[f32],
    dtable0: &[f32],
    dim: usize,
) -> Result<Vec<Out>> {
    let vocab = table.len() / dim.max(1);
    let (idd, td, dod) = (b.upload(ids)?, act(b, table)?, act(b, dout)?);
    let mut out = nan_act(b, ids.len() * dim)?;
    b.embedding_forward(B::view(&idd), B::view(&td), B::view_mut(&mut out), vocab, dim)?;
    let mut dtable = master(b, dtable0)?;
    b.embedding_backward(B::view(&idd), B::view(&dod), B::view_mut(&mut dtable), vocab, dim)?;
    Ok(vec![Out::exact("forward", host_act(b, &out)?), Out::exact("backward (dtable +=)", host_master(b, &dtable)?)])
}

/// Lookup and scatter-add backward with repeated ids (a token repeated in a caption, padding ids), into a random
/// non-zero dtable; the full CLIP vocabulary at width 512 for the large case. The scatter-add adds each id's rows in
/// token order on both backends, so dtable must match bit for bit.
fn embedding_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let cases = [(1, 1, 1), (11, 7, 40), (1000, 33, 5 * 77), (49_408, 512, 32 * 77)];
    for (k, &(vocab, dim, tokens)) in cases.iter().enumerate() {
        let s = seed(11_000 + k as u64);
        let mut r = rng(s);
        let mut ids = indices(&mut r, tokens, vocab);
        // Runs of a few popular ids, as padding and common words give.
        for (i, id) in ids.iter_mut().enumerate() {
            if i % 3 == 0 {
                *id = (i % 4) as i32 % vocab as i32;
            }
        }
        let table = draw::<A>(&mut r, vocab * dim, 0.0, 1.0);
        let dout = draw::<A>(&mut r, tokens * dim, 0.0, 1.0);
        let dtable0 = draw_master(&mut r, vocab * dim, 0.0, 0.1);
        parity!(
            gpu,
            format!("embedding vocab={vocab} dim={dim} tokens={tokens}"),
            s,
            embedding_op(&ids, &table, &dout, &dtable0, dim)
        );
    }
}

/// An id outside `0..vocab` (too large, negative) is an `Error::Invalid` naming the id and its position, forward and
/// backward, as on the CPU.
fn embedding_bad_id_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let (vocab, dim) = (11, 5);
    let table = gpu.zeros::<A>(vocab * dim).unwrap();
    let mut out = gpu.zeros::<A>(4 * dim).unwrap();
    let dout = gpu.zeros::<A>(4 * dim).unwrap();
    let mut dtable = gpu.zeros::<f32>(vocab * dim).unwrap();
    for bad in [vocab as i32, 1000, -1] {
        let host = [3, 0, bad, 10];
        let ids = gpu.upload(&host).unwrap();
        let err = gpu.embedding_forward(G::view(&ids), G::view(&table), G::view_mut(&mut out), vocab, dim).unwrap_err();
        let want = Cpu::new().embedding_forward(&host, &vec![0.0; vocab * dim], &mut vec![0.0; 4 * dim], vocab, dim);
        let want = want.unwrap_err().to_string();
        assert!(matches!(err, Error::Invalid { .. }), "id {bad}: {err}");
        assert_eq!(err.to_string(), want, "id {bad}: the message should name the id and its position like the CPU's");
        let err = gpu.embedding_backward(G::view(&ids), G::view(&dout), G::view_mut(&mut dtable), vocab, dim);
        let err = err.unwrap_err();
        assert!(
            matches!(err, Error::Invalid { .. }) && err.to_string().contains(&bad.to_string()),
            "backward id {bad}: {err}"
        );
    }
}

// ------------------------------------------------------------------------------------------------ norms -----------

const EPS: f64 = 1e-5;

fn layernorm_forward_op<B: Backend>(b: &B, x: &[f32], g: &[f32], beta: &[f32]) -> Result<Vec<Out>> {
    let cols = g.len();
    let rows = x.len() / cols;
    let (xd, gd, bd) = (act(b, x)?, act(b, g)?, act(b, beta)?);
    let mut y = nan_act(b, rows * cols)?;
    let (mut mean, mut rstd) = (nan_master(b, rows)?, nan_master(b, rows)?);
    b.layernorm_forward(
        B::view(&xd),
        B::view(&gd),
        B::view(&bd),
        B::view_mut(&mut y),
        B::view_mut(&mut mean),
        B::view_mut(&mut rstd),
        rows,
        cols,
        EPS,
    )?;
    Ok(vec![
        Out::act("y", host_act(b, &y)?),
        Out::master("mean", host_master(b, &mean)?),
        Out::master("rstd", host_master(b, &rstd)?),
    ])
}

#[allow(clippy::too_many_arguments)]
fn layernorm_backward_op<B: Backend>(
    b: &B,
    dy: &[f32],
    x: &[f32],
    g: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dgamma0: &[f32],
    dbeta0: &[f32],
) -> Result<Vec<Out>> {
    let (rows, cols) = (mean.len(), g.len());
    let (dyd, xd, gd) = (act(b, dy)?, act(b, x)?, act(b, g)?);
    let (md, rd) = (master(b, mean)?, master(b, rstd)?);
    let mut dx = nan_act(b, rows * cols)?;
    let (mut dg, mut db) = (master(b, dgamma0)?, master(b, dbeta0)?);
    b.layernorm_backward(
        B::view(&dyd),
        B::view(&xd),
        B::view(&gd),
        B::view(&md),
        B::view(&rd),
        B::view_mut(&mut dx),
        B::view_mut(&mut dg),
        B::view_mut(&mut db),
        rows,
        cols,
    )?;
    Ok(vec![
        Out::act("dx", host_act(b, &dx)?),
        Out::sum("dgamma +=", host_master(b, &dg)?),
        Out::sum("dbeta +=", host_master(b, &db)?),
    ])
}

/// LayerNorm forward (y, mean, rstd) and backward (dx overwritten; dgamma, dbeta accumulated onto random values),
/// the backward fed the CPU's statistics; widths 1, odd, around the warp/block switches and a ViT-B batch
/// (12800 × 768).
fn layernorm_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let shapes = [(1, 1), (5, 7), (17, 769), (3, 1025), (2, 4099), (12_800, 768)];
    for (k, &(rows, cols)) in shapes.iter().enumerate() {
        let s = seed(11_100 + k as u64);
        let mut r = rng(s);
        let x = draw::<A>(&mut r, rows * cols, 3.0, 2.0);
        let g = draw::<A>(&mut r, cols, 1.0, 0.5);
        let beta = draw::<A>(&mut r, cols, 0.0, 0.5);
        let label = format!("layernorm {rows}x{cols}");
        let want = layernorm_forward_op(&Cpu::new(), &x, &g, &beta);
        let (mean, rstd) = match &want {
            Ok(outs) => (take(outs, "mean"), take(outs, "rstd")),
            Err(e) => panic!("{label}: CPU reference: {e}"),
        };
        compare::<A>(&format!("{label} forward"), s, layernorm_forward_op(gpu, &x, &g, &beta), want);
        let dy = draw::<A>(&mut r, rows * cols, 0.0, 1.0);
        let (dg0, db0) = (draw_master(&mut r, cols, 0.0, 1.0), draw_master(&mut r, cols, 0.0, 1.0));
        parity!(gpu, format!("{label} backward"), s, layernorm_backward_op(&dy, &x, &g, &mean, &rstd, &dg0, &db0));
    }
}

fn view_opt<B: Backend, T: Elem>(x: &Option<B::Buf<T>>) -> Option<B::Ref<'_, T>> {
    x.as_ref().map(|x| B::view(x))
}

fn upload_opt<B: Backend>(b: &B, x: Option<&[f32]>) -> Result<Option<B::Buf<B::Act>>> {
    x.map(|x| act(b, x)).transpose()
}

fn batchnorm_train_op<B: Backend>(
    b: &B,
    spec: &BatchNorm,
    x: &[f32],
    affine: Option<(&[f32], &[f32])>,
    running0: (&[f32], &[f32]),
) -> Result<Vec<Out>> {
    let c = spec.channels;
    let xd = act(b, x)?;
    let (gd, bd) = (upload_opt(b, affine.map(|a| a.0))?, upload_opt(b, affine.map(|a| a.1))?);
    let mut y = nan_act(b, spec.len())?;
    let (mut sm, mut sr) = (nan_master(b, c)?, nan_master(b, c)?);
    let (mut rm, mut rv) = (master(b, running0.0)?, master(b, running0.1)?);
    b.batchnorm_forward_train(
        spec,
        B::view(&xd),
        view_opt::<B, B::Act>(&gd),
        view_opt::<B, B::Act>(&bd),
        B::view_mut(&mut y),
        B::view_mut(&mut sm),
        B::view_mut(&mut sr),
        B::view_mut(&mut rm),
        B::view_mut(&mut rv),
    )?;
    Ok(vec![
        Out::act("y", host_act(b, &y)?).tol(F32_SUM, BF16),
        Out::sum("save_mean", host_master(b, &sm)?),
        Out::sum("save_rstd", host_master(b, &sr)?),
        Out::sum("running_mean", host_master(b, &rm)?),
        Out::sum("running_var", host_master(b, &rv)?),
    ])
}

fn batchnorm_eval_op<B: Backend>(
    b: &B,
    spec: &BatchNorm,
    x: &[f32],
    affine: Option<(&[f32], &[f32])>,
    running: (&[f32], &[f32]),
) -> Result<Vec<Out>> {
    let xd = act(b, x)?;
    let (gd, bd) = (upload_opt(b, affine.map(|a| a.0))?, upload_opt(b, affine.map(|a| a.1))?);
    let (rm, rv) = (master(b, running.0)?, master(b, running.1)?);
    let mut y = nan_act(b, spec.len())?;
    let (g, be) = (view_opt::<B, B::Act>(&gd), view_opt::<B, B::Act>(&bd));
    b.batchnorm_forward_eval(spec, B::view(&xd), g, be, B::view(&rm), B::view(&rv), B::view_mut(&mut y))?;
    Ok(vec![Out::act("eval y", host_act(b, &y)?)])
}

#[allow(clippy::too_many_arguments)]
fn batchnorm_backward_op<B: Backend>(
    b: &B,
    spec: &BatchNorm,
    dy: &[f32],
    x: &[f32],
    gamma: Option<&[f32]>,
    saved: (&[f32], &[f32]),
    dparams0: Option<(&[f32], &[f32])>,
) -> Result<Vec<Out>> {
    let (dyd, xd) = (act(b, dy)?, act(b, x)?);
    let gd = upload_opt(b, gamma)?;
    let (sm, sr) = (master(b, saved.0)?, master(b, saved.1)?);
    let mut dx = nan_act(b, spec.len())?;
    let mut dg = dparams0.map(|d| master(b, d.0)).transpose()?;
    let mut db = dparams0.map(|d| master(b, d.1)).transpose()?;
    b.batchnorm_backward(
        spec,
        B::view(&dyd),
        B::view(&xd),
        view_opt::<B, B::Act>(&gd),
        B::view(&sm),
        B::view(&sr),
        B::view_mut(&mut dx),
        dg.as_mut().map(|d| B::view_mut(d)),
        db.as_mut().map(|d| B::view_mut(d)),
    )?;
    let mut outs = vec![Out::act("dx", host_act(b, &dx)?).tol(F32_SUM, BF16)];
    if let (Some(dg), Some(db)) = (&dg, &db) {
        outs.push(Out::sum("dgamma +=", host_master(b, dg)?));
        outs.push(Out::sum("dbeta +=", host_master(b, db)?));
    }
    Ok(outs)
}

/// BatchNorm (cuDNN) against the CPU: training forward (y, saved mean and inverse std, running statistics updated
/// with momentum and the unbiased variance), evaluation forward with the updated running statistics, backward (dx
/// overwritten, dgamma/dbeta accumulated); affine and not; one value per channel (n·spatial = 1); an RN50 layer1 batch.
fn batchnorm_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let shapes = [(3, 5, 49), (2, 3, 1), (1, 4, 1), (5, 17, 9), (8, 256, 56 * 56)];
    for (k, &(n, channels, spatial)) in shapes.iter().enumerate() {
        for affine in [true, false] {
            let s = seed(11_200 + 2 * k as u64 + u64::from(affine));
            let mut r = rng(s);
            let spec = BatchNorm { n, channels, spatial, eps: EPS, momentum: 0.1 };
            let x = draw::<A>(&mut r, spec.len(), 3.0, 2.0);
            let (g, beta) = (draw::<A>(&mut r, channels, 1.0, 0.5), draw::<A>(&mut r, channels, 0.0, 0.5));
            let params = affine.then_some((&g[..], &beta[..]));
            let rm0 = draw_master(&mut r, channels, 0.0, 1.0);
            let rv0: Vec<f32> = uniform::<f32>(&mut r, channels, 0.5, 2.0);
            let label = format!("batchnorm n={n} c={channels} spatial={spatial} affine={affine}");
            let want = batchnorm_train_op(&Cpu::new(), &spec, &x, params, (&rm0, &rv0));
            let outs = want.as_ref().unwrap_or_else(|e| panic!("{label}: CPU reference: {e}"));
            let (save_mean, save_rstd) = (take(outs, "save_mean"), take(outs, "save_rstd"));
            let (rm, rv) = (take(outs, "running_mean"), take(outs, "running_var"));
            compare::<A>(&format!("{label} train"), s, batchnorm_train_op(gpu, &spec, &x, params, (&rm0, &rv0)), want);

            let x2 = draw::<A>(&mut r, spec.len(), 3.0, 2.0);
            parity!(gpu, format!("{label} eval"), s, batchnorm_eval_op(&spec, &x2, params, (&rm, &rv)));

            let dy = draw::<A>(&mut r, spec.len(), 0.0, 1.0);
            let (dg0, db0) = (draw_master(&mut r, channels, 0.0, 1.0), draw_master(&mut r, channels, 0.0, 1.0));
            let dparams = affine.then_some((&dg0[..], &db0[..]));
            let gamma = affine.then_some(&g[..]);
            let saved = (&save_mean[..], &save_rstd[..]);
            parity!(gpu, format!("{label} backward"), s, batchnorm_backward_op(&spec, &dy, &x, gamma, saved, dparams));
        }
    }
}

fn l2norm_forward_op<B: Backend>(b: &B, x: &[f32], cols: usize) -> Result<Vec<Out>> {
    let rows = x.len() / cols;
    let xd = act(b, x)?;
    let (mut y, mut norms) = (nan_act(b, rows * cols)?, nan_master(b, rows)?);
    b.l2norm_forward(B::view(&xd), B::view_mut(&mut y), B::view_mut(&mut norms), rows, cols)?;
    Ok(vec![Out::act("y", host_act(b, &y)?), Out::master("norms", host_master(b, &norms)?)])
}

fn l2norm_backward_op<B: Backend>(b: &B, dy: &[f32], y: &[f32], norms: &[f32]) -> Result<Vec<Out>> {
    let (rows, cols) = (norms.len(), y.len() / norms.len());
    let (dyd, yd, nd) = (act(b, dy)?, act(b, y)?, master(b, norms)?);
    let mut dx = nan_act(b, rows * cols)?;
    b.l2norm_backward(B::view(&dyd), B::view(&yd), B::view(&nd), B::view_mut(&mut dx), rows, cols)?;
    Ok(vec![Out::act("dx", host_act(b, &dx)?)])
}

/// `F.normalize` forward (y, unclamped norms) and backward; the backward gets the CPU's y (rounded to the compute
/// dtype) and norms. Zero rows (the clamped norm: y = 0, dx = dy/1e-12) form a case of their own, since their huge
/// gradients would hide the other rows' errors in a relative comparison.
fn l2norm_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let shapes = [(1, 1, false), (7, 33, false), (5, 512, false), (3, 1025, false), (4096, 512, false), (2, 7, true)];
    for (k, &(rows, cols, zero)) in shapes.iter().enumerate() {
        let s = seed(11_300 + k as u64);
        let mut r = rng(s);
        let mut x = draw::<A>(&mut r, rows * cols, 0.0, 1.0);
        if zero {
            x.fill(0.0);
        }
        let label = format!("l2norm {rows}x{cols} zero={zero}");
        let want = l2norm_forward_op(&Cpu::new(), &x, cols);
        let outs = want.as_ref().unwrap_or_else(|e| panic!("{label}: CPU reference: {e}"));
        let (y, norms) = (quantized::<A>(&take(outs, "y")), take(outs, "norms"));
        compare::<A>(&format!("{label} forward"), s, l2norm_forward_op(gpu, &x, cols), want);
        let dy = draw::<A>(&mut r, rows * cols, 0.0, 1.0);
        parity!(gpu, format!("{label} backward"), s, l2norm_backward_op(&dy, &y, &norms));
    }
}

// ------------------------------------------------------------------------------------------------ convolution -----

fn conv_op<B: Backend>(b: &B, spec: &Conv2d, x: &[f32], w: &[f32], dy: &[f32], dw0: &[f32]) -> Result<Vec<Out>> {
    let (xd, wd, dyd) = (act(b, x)?, act(b, w)?, act(b, dy)?);
    let mut y = nan_act(b, spec.output_len())?;
    b.conv2d_forward(spec, B::view(&xd), B::view(&wd), B::view_mut(&mut y))?;
    let mut dx = nan_act(b, spec.input_len())?;
    b.conv2d_backward_data(spec, B::view(&dyd), B::view(&wd), B::view_mut(&mut dx))?;
    let mut dw = master(b, dw0)?;
    b.conv2d_backward_filter(spec, B::view(&dyd), B::view(&xd), B::view_mut(&mut dw))?;
    Ok(vec![
        Out::act("forward y", host_act(b, &y)?).tol(F32_SUM, BF16),
        Out::act("backward dx", host_act(b, &dx)?).tol(F32_SUM, BF16),
        Out::sum("backward dw +=", host_master(b, &dw)?).tol(F32_SUM, BF16_CHAIN),
    ])
}

/// Convolution (cuDNN) forward, backward-data (overwritten) and backward-filter (accumulated onto a random dw):
/// strided and padded 3×3 on odd sizes, the ViT patch embedding, 1×1, a non-square kernel, the RN stem, and an RN50
/// layer1 3×3 convolution.
fn conv_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let conv = |n, c_in, h, w, c_out, kernel_h, kernel_w, stride, pad| Conv2d {
        n,
        c_in,
        h,
        w,
        c_out,
        kernel_h,
        kernel_w,
        stride,
        pad,
    };
    let specs = [
        conv(2, 3, 13, 11, 5, 3, 3, 2, 1),
        conv(2, 3, 32, 32, 24, 8, 8, 8, 0),
        conv(3, 17, 7, 7, 9, 1, 1, 1, 0),
        conv(2, 5, 9, 6, 7, 3, 1, 1, 1),
        conv(1, 1, 1, 1, 1, 1, 1, 1, 0),
        conv(4, 3, 224, 224, 32, 3, 3, 2, 1),
        conv(4, 64, 56, 56, 64, 3, 3, 1, 1),
    ];
    for (k, spec) in specs.iter().enumerate() {
        let s = seed(11_400 + k as u64);
        let mut r = rng(s);
        let x = draw::<A>(&mut r, spec.input_len(), 0.0, 1.0);
        let w = draw::<A>(&mut r, spec.weight_len(), 0.0, 0.3);
        let dy = draw::<A>(&mut r, spec.output_len(), 0.0, 1.0);
        let dw0 = draw_master(&mut r, spec.weight_len(), 0.0, 1.0);
        parity!(gpu, format!("conv {spec:?}"), s, conv_op(spec, &x, &w, &dy, &dw0));
    }
}

fn avgpool_op<B: Backend>(b: &B, spec: &Pool2d, x: &[f32], dy: &[f32]) -> Result<Vec<Out>> {
    let (xd, dyd) = (act(b, x)?, act(b, dy)?);
    let mut y = nan_act(b, spec.output_len())?;
    b.avgpool2d_forward(spec, B::view(&xd), B::view_mut(&mut y))?;
    let mut dx = nan_act(b, spec.input_len())?;
    b.avgpool2d_backward(spec, B::view(&dyd), B::view_mut(&mut dx))?;
    Ok(vec![Out::act("forward", host_act(b, &y)?), Out::act("backward (overwritten)", host_act(b, &dx)?)])
}

/// Average pooling with zero padding counted in the average: 2×2/2 (the ResNet's anti-aliased downsampling), 3×3/2
/// padded on odd sizes (overlapping windows in the backward), 1×1, and a large RN50 map.
fn avgpool_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let pool = |n, c, h, w, kernel, stride, pad| Pool2d { n, c, h, w, kernel, stride, pad };
    let specs = [
        pool(2, 3, 13, 11, 3, 2, 1),
        pool(2, 5, 8, 8, 2, 2, 0),
        pool(3, 7, 9, 9, 3, 1, 1),
        pool(1, 1, 1, 1, 1, 1, 0),
        pool(8, 256, 56, 56, 2, 2, 0),
    ];
    for (k, spec) in specs.iter().enumerate() {
        let s = seed(11_500 + k as u64);
        let mut r = rng(s);
        let x = draw::<A>(&mut r, spec.input_len(), 0.0, 1.0);
        let dy = draw::<A>(&mut r, spec.output_len(), 0.0, 1.0);
        parity!(gpu, format!("avgpool {spec:?}"), s, avgpool_op(spec, &x, &dy));
    }
}

// ------------------------------------------------------------------------------------------------ attention -------

fn softmax_forward_op<B: Backend>(b: &B, x: &[f32], cols: usize) -> Result<Vec<Out>> {
    let rows = x.len() / cols;
    let xd = act(b, x)?;
    let mut y = nan_act(b, x.len())?;
    b.softmax_forward(B::view(&xd), B::view_mut(&mut y), rows, cols)?;
    Ok(vec![Out::act("forward", host_act(b, &y)?)])
}

fn softmax_backward_op<B: Backend>(b: &B, y: &[f32], dy: &[f32], cols: usize) -> Result<Vec<Out>> {
    let rows = y.len() / cols;
    let (yd, dyd) = (act(b, y)?, act(b, dy)?);
    let mut dx = nan_act(b, y.len())?;
    b.softmax_backward(B::view(&yd), B::view(&dyd), B::view_mut(&mut dx), rows, cols)?;
    Ok(vec![Out::act("backward", host_act(b, &dx)?)])
}

/// Row softmax forward (rows with −∞ entries included) and backward (fed the CPU's y).
fn softmax_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (k, &(rows, cols)) in [(1, 1), (5, 7), (17, 769), (3, 1025), (2, 4099), (4800, 50)].iter().enumerate() {
        let s = seed(11_600 + k as u64);
        let mut r = rng(s);
        let mut x = draw::<A>(&mut r, rows * cols, 0.0, 3.0);
        if cols > 2 {
            x[1] = f32::NEG_INFINITY;
            x[cols - 1] = f32::NEG_INFINITY;
        }
        let label = format!("softmax {rows}x{cols}");
        let want = softmax_forward_op(&Cpu::new(), &x, cols);
        let y =
            quantized::<A>(&take(want.as_ref().unwrap_or_else(|e| panic!("{label}: CPU reference: {e}")), "forward"));
        compare::<A>(&label, s, softmax_forward_op(gpu, &x, cols), want);
        let dy = draw::<A>(&mut r, rows * cols, 0.0, 1.0);
        parity!(gpu, label, s, softmax_backward_op(&y, &dy, cols));
    }
}

/// Which elements of a QKV-shaped buffer of `len` elements the Q, K and V regions of `spec` cover.
fn attention_covered(spec: &Attention, len: usize) -> Vec<bool> {
    let mut covered = vec![false; len];
    let width = spec.width();
    let regions = [
        (spec.q_offset, spec.batch * spec.seq_q, spec.q_row_stride),
        (spec.k_offset, spec.batch * spec.seq_k, spec.kv_row_stride),
        (spec.v_offset, spec.batch * spec.seq_k, spec.kv_row_stride),
    ];
    for (offset, rows, stride) in regions {
        for row in 0..rows {
            covered[offset + row * stride..][..width].fill(true);
        }
    }
    covered
}

fn attention_op<B: Backend>(
    b: &B,
    spec: &Attention,
    qkv: &[f32],
    padding: Option<&[u8]>,
    dout: &[f32],
) -> Result<Vec<Out>> {
    let qkvd = act(b, qkv)?;
    let pad = padding.map(|p| b.upload(p)).transpose()?;
    let pad_view = || pad.as_ref().map(|p| B::view(p));
    let mut out = nan_act(b, spec.out_len())?;
    let mut saved = nan_master(b, b.attention_saved_len(spec))?;
    b.attention_forward(spec, B::view(&qkvd), pad_view(), B::view_mut(&mut out), B::view_mut(&mut saved))?;
    let doutd = act(b, dout)?;
    let mut dqkv = nan_act(b, qkv.len())?;
    b.attention_backward(
        spec,
        B::view(&qkvd),
        pad_view(),
        B::view(&out),
        B::view(&saved),
        B::view(&doutd),
        B::view_mut(&mut dqkv),
    )?;
    let covered = attention_covered(spec, qkv.len());
    let check = Check::Close([F32_SUM, BF16]);
    let mut outs = vec![Out::act("out", host_act(b, &out)?).tol(F32_SUM, BF16)];
    outs.extend(covered_and_rest("dqkv", host_act(b, &dqkv)?, &covered, check));
    Ok(outs)
}

fn attention_run<A: TestAct, G: Backend<Act = A, Master = f32>>(
    gpu: &G,
    label: &str,
    s: u64,
    spec: &Attention,
    padding: Option<&[u8]>,
) {
    let mut r = rng(s);
    let qkv = draw::<A>(&mut r, spec.qkv_len() + 2, 0.0, 1.0);
    let dout = draw::<A>(&mut r, spec.out_len(), 0.0, 1.0);
    parity!(
        gpu,
        format!("{label} {spec:?} padding={}", padding.is_some()),
        s,
        attention_op(spec, &qkv, padding, &dout)
    );
}

/// Self-attention over a packed `[B, S, 3·width]` QKV buffer: causal (the text tower), not causal (the ViT), with a
/// key padding mask that hides every key of one batch entry (those queries output zeros and get zero gradients);
/// text- and ViT-B/32-sized batches.
fn attention_packed_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let causal = Attention::packed_self(3, 13, 3, 24, true);
    attention_run(gpu, "attention packed causal", seed(11_700), &causal, None);
    attention_run(
        gpu,
        "attention packed causal odd head_dim",
        seed(11_701),
        &Attention::packed_self(2, 9, 2, 7, true),
        None,
    );
    let plain = Attention::packed_self(3, 11, 2, 8, false);
    // Batch 0 sees every key, batch 1 misses its last three, batch 2 sees none.
    let mut padding = vec![0u8; 3 * 11];
    padding[11 + 8..22].fill(1);
    padding[22..].fill(1);
    attention_run(gpu, "attention packed key padding", seed(11_702), &plain, Some(&padding));
    let mut causal_padded = plain;
    causal_padded.causal = true;
    attention_run(gpu, "attention packed causal + key padding", seed(11_703), &causal_padded, Some(&padding));
    attention_run(gpu, "attention packed text-sized", seed(11_704), &Attention::packed_self(16, 77, 8, 64, true), None);
    attention_run(
        gpu,
        "attention packed ViT-B/32-sized",
        seed(11_705),
        &Attention::packed_self(16, 50, 12, 64, false),
        None,
    );
}

/// Attention with Q, K and V in separate regions and seq_q ≠ seq_k: one query over 50 keys (the ResNet attention
/// pool) with key padding, 5 queries over 9 keys causal (query i sees keys ≤ i + 4), and a layout with gaps between
/// the rows and regions, which the backward must leave untouched.
fn attention_separate_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let pool = Attention::separate(4, 1, 50, 4, 16);
    let mut padding = vec![0u8; 4 * 50];
    padding[50 + 40..100].fill(1);
    padding[150..200].iter_mut().step_by(2).for_each(|p| *p = 1);
    attention_run(gpu, "attention separate attnpool", seed(11_710), &pool, Some(&padding));
    attention_run(gpu, "attention separate attnpool unmasked", seed(11_711), &pool, None);
    let mut causal = Attention::separate(3, 5, 9, 2, 12);
    causal.causal = true;
    attention_run(gpu, "attention separate causal sq<sk", seed(11_712), &causal, None);
    let mut padding = vec![0u8; 3 * 9];
    padding[9..12].fill(1);
    attention_run(gpu, "attention separate causal sq<sk + key padding", seed(11_713), &causal, Some(&padding));
    // Rows of 16 in strides of 19 and 21, the regions apart.
    let gapped = Attention {
        batch: 2,
        heads: 2,
        seq_q: 4,
        seq_k: 6,
        head_dim: 8,
        q_offset: 1,
        k_offset: 152,
        v_offset: 400,
        q_row_stride: 19,
        kv_row_stride: 21,
        scale: 0.3,
        causal: false,
    };
    attention_run(gpu, "attention strided with gaps", seed(11_714), &gapped, None);
    attention_run(
        gpu,
        "attention separate RN50 attnpool-sized",
        seed(11_715),
        &Attention::separate(64, 1, 50, 32, 64),
        None,
    );
}

// ------------------------------------------------------------------------------------------------ losses ----------

#[allow(clippy::too_many_arguments)]
fn cross_entropy_forward_op<B: Backend>(
    b: &B,
    logits: &[f32],
    targets: &[i32],
    classes: usize,
    ignore: i32,
    smoothing: f64,
) -> Result<Vec<Out>> {
    let rows = targets.len();
    let (ld, td) = (act(b, logits)?, b.upload(targets)?);
    let (mut losses, mut lse) = (nan_master(b, rows)?, nan_master(b, rows)?);
    b.cross_entropy_forward(
        B::view(&ld),
        B::view(&td),
        B::view_mut(&mut losses),
        B::view_mut(&mut lse),
        rows,
        classes,
        ignore,
        smoothing,
    )?;
    Ok(vec![
        Out::master("losses", host_master(b, &losses)?)
            .tol(Tol { rtol: 1e-4, atol: 1e-5 }, Tol { rtol: 1e-4, atol: 1e-5 }),
        Out::master("lse", host_master(b, &lse)?),
    ])
}

#[allow(clippy::too_many_arguments)]
fn cross_entropy_backward_op<B: Backend>(
    b: &B,
    logits: &[f32],
    targets: &[i32],
    lse: &[f32],
    classes: usize,
    ignore: i32,
    smoothing: f64,
    grad_scale: f64,
) -> Result<Vec<Out>> {
    let rows = targets.len();
    let (ld, td, lsed) = (act(b, logits)?, b.upload(targets)?, master(b, lse)?);
    let mut d = nan_act(b, rows * classes)?;
    b.cross_entropy_backward(
        B::view(&ld),
        B::view(&td),
        B::view(&lsed),
        B::view_mut(&mut d),
        rows,
        classes,
        ignore,
        smoothing,
        grad_scale,
    )?;
    Ok(vec![Out::act("dlogits", host_act(b, &d)?)])
}

/// Cross-entropy with label smoothing 0 and 0.1, rows whose target is `ignore_index` (−100, and a valid class number
/// used as ignore_index), forward (losses, lse) and backward (fed the CPU's lse, grad_scale = 1/count); the
/// full-vocabulary case included. A target outside the classes is an error.
fn cross_entropy_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (k, &(rows, classes)) in [(1, 1), (5, 7), (33, 1001), (3, 4099), (256, 49_408)].iter().enumerate() {
        for (j, &(ignore, smoothing)) in [(-100, 0.0), (-100, 0.1), (0, 0.1)].iter().enumerate() {
            let s = seed(11_800 + 3 * k as u64 + j as u64);
            let mut r = rng(s);
            let logits = draw::<A>(&mut r, rows * classes, 0.0, 3.0);
            let mut targets = indices(&mut r, rows, classes);
            for t in targets.iter_mut().step_by(4).skip(1) {
                *t = ignore;
            }
            let count = targets.iter().filter(|&&t| t != ignore).count().max(1);
            let label = format!("cross_entropy {rows}x{classes} ignore={ignore} smoothing={smoothing}");
            let want = cross_entropy_forward_op(&Cpu::new(), &logits, &targets, classes, ignore, smoothing);
            let lse = take(want.as_ref().unwrap_or_else(|e| panic!("{label}: CPU reference: {e}")), "lse");
            compare::<A>(&label, s, cross_entropy_forward_op(gpu, &logits, &targets, classes, ignore, smoothing), want);
            let scale = 1.0 / count as f64;
            parity!(
                gpu,
                label,
                s,
                cross_entropy_backward_op(&logits, &targets, &lse, classes, ignore, smoothing, scale)
            );
        }
    }
    let logits = gpu.zeros::<A>(2 * 5).unwrap();
    let targets = gpu.upload(&[1, 5]).unwrap();
    let (mut losses, mut lse) = (gpu.zeros::<f32>(2).unwrap(), gpu.zeros::<f32>(2).unwrap());
    let err = gpu.cross_entropy_forward(
        G::view(&logits),
        G::view(&targets),
        G::view_mut(&mut losses),
        G::view_mut(&mut lse),
        2,
        5,
        -100,
        0.0,
    );
    assert!(matches!(err, Err(Error::Invalid { .. })), "target 5 of 5 classes: {err:?}");
}

#[allow(clippy::too_many_arguments)]
fn clip_loss_op<B: Backend>(
    b: &B,
    spec: &ClipLoss,
    image: &[f32],
    text: &[f32],
    log_scale: f32,
    dlog0: f32,
) -> Result<Vec<Out>> {
    let (id, td, ls) = (act(b, image)?, act(b, text)?, master(b, &[log_scale])?);
    let mut loss = nan_master(b, 1)?;
    let mut saved = nan_master(b, b.clip_loss_saved_len(spec))?;
    b.clip_loss_forward(
        spec,
        B::view(&id),
        B::view(&td),
        B::view(&ls),
        B::view_mut(&mut loss),
        B::view_mut(&mut saved),
    )?;
    let (mut di, mut dt) = (nan_act(b, image.len())?, nan_act(b, text.len())?);
    let mut dls = master(b, &[dlog0])?;
    b.clip_loss_backward(
        spec,
        B::view(&id),
        B::view(&td),
        B::view(&ls),
        B::view(&saved),
        0.7,
        B::view_mut(&mut di),
        Some(B::view_mut(&mut dt)),
        B::view_mut(&mut dls),
    )?;
    Ok(vec![
        Out::sum("loss", host_master(b, &loss)?).tol(F32_SUM, BF16),
        Out::act("dimage", host_act(b, &di)?).tol(F32_SUM, BF16_CHAIN),
        Out::act("dtext", host_act(b, &dt)?).tol(F32_SUM, BF16_CHAIN),
        Out::sum("dlog_scale +=", host_master(b, &dls)?).tol(F32_SUM, BF16_CHAIN),
    ])
}

/// The CLIP loss (SPEC §1.1) forward and backward (dloss = 0.7; the log-scale gradient accumulated onto 0.3), with
/// and without label smoothing, n = 1, n < dim, n > dim, and a 512-pair batch.
fn clip_loss_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (k, &(n, dim)) in [(1, 1), (7, 33), (33, 17), (64, 128), (512, 512)].iter().enumerate() {
        for (j, &smoothing) in [0.0, 0.1].iter().enumerate() {
            let s = seed(11_900 + 2 * k as u64 + j as u64);
            let mut r = rng(s);
            let spec = ClipLoss::symmetric(n, dim).with_label_smoothing(smoothing);
            let image = draw::<A>(&mut r, n * dim, 0.0, 1.0);
            let text = draw::<A>(&mut r, n * dim, 0.0, 1.0);
            let label = format!("clip_loss {spec:?}");
            parity!(gpu, label, s, clip_loss_op(&spec, &image, &text, INITIAL_LOGIT_SCALE as f32, 0.3));
        }
    }
}

// ------------------------------------------------------------------------------------------------ search ----------

fn nn_search_op<B: Backend>(
    b: &B,
    queries: &[f32],
    keys: &[f32],
    dim: usize,
    k: usize,
) -> Result<(Vec<i32>, Vec<f32>)> {
    let (batch, num_keys) = (queries.len() / dim, keys.len() / dim);
    let (qd, kd) = (act(b, queries)?, act(b, keys)?);
    let mut index = poisoned(b, batch * k, -7i32)?;
    let mut sim = nan_master(b, batch * k)?;
    b.nn_search(B::view(&qd), B::view(&kd), B::view_mut(&mut index), B::view_mut(&mut sim), batch, num_keys, dim, k)?;
    Ok((b.download(B::view(&index))?, host_master(b, &sim)?))
}

/// Unit rows (normalised in f64, then rounded to `A`).
fn unit_rows<A: TestAct>(r: &mut ChaCha8Rng, rows: usize, dim: usize) -> Vec<f32> {
    let x = normal::<f64>(r, rows * dim, 1.0);
    x.chunks(dim)
        .flat_map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            row.iter().map(move |v| A::quantize((v / norm) as f32)).collect::<Vec<_>>()
        })
        .collect()
}

/// Top-k cosine search: sims close; indices equal except where two keys' cosines are within the tolerance (then the
/// GPU's key must have the CPU's cosine at that rank); duplicated keys tie, the lower index first.
fn nn_search_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    let (sim_tol, tie) = if A::MODE == 0 { (F32_SUM, 1e-5) } else { (Tol { rtol: 1e-2, atol: 1e-3 }, 8e-3) };
    for (case, &(batch, num_keys, dim, k)) in
        [(1, 1, 1, 1), (5, 37, 33, 1), (7, 100, 17, 10), (3, 5, 8, 5), (64, 10_000, 256, 10)].iter().enumerate()
    {
        let s = seed(12_000 + case as u64);
        let mut r = rng(s);
        let mut queries = draw::<A>(&mut r, batch * dim, 0.0, 2.0);
        let mut keys = unit_rows::<A>(&mut r, num_keys, dim);
        // Key j1 duplicated at j2 > j1, and query 0 pointing along it: the best two, tied, j1 first.
        let dup = (num_keys >= 4 && k >= 2).then(|| (1, num_keys - 2));
        if let Some((j1, j2)) = dup {
            let row = keys[j1 * dim..(j1 + 1) * dim].to_vec();
            keys[j2 * dim..(j2 + 1) * dim].copy_from_slice(&row);
            queries[..dim].iter_mut().zip(&row).for_each(|(q, &v)| *q = A::quantize(2.5 * v));
        }
        let label = format!("nn_search {} batch={batch} keys={num_keys} dim={dim} k={k}", A::LABEL);
        let (gi, gs) = nn_search_op(gpu, &queries, &keys, dim, k).unwrap_or_else(|e| panic!("{label} (seed {s}): {e}"));
        let (ci, cs) = nn_search_op(&Cpu::new(), &queries, &keys, dim, k).unwrap();
        assert_close(&format!("{label}: sim"), s, &gs, &cs, sim_tol.rtol, sim_tol.atol);
        let cosine = |b: usize, j: usize| {
            let q = &queries[b * dim..(b + 1) * dim];
            let norm = q.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
            q.iter().zip(&keys[j * dim..(j + 1) * dim]).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / norm
        };
        for b in 0..batch {
            let row = &gi[b * k..(b + 1) * k];
            let mut seen = row.to_vec();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), k, "{label} (seed {s}): query {b} got a key twice or a poisoned index: {row:?}");
            for p in 0..k {
                let (g, c) = (gi[b * k + p], ci[b * k + p]);
                assert!((0..num_keys as i32).contains(&g), "{label} (seed {s}): query {b} rank {p}: index {g}");
                if g != c {
                    let (got_cos, want_cos) = (cosine(b, g as usize), cs[b * k + p] as f64);
                    assert!(
                        (got_cos - want_cos).abs() <= tie,
                        "{label} (seed {s}): query {b} rank {p}: key {g} (cosine {got_cos:.6}) where the CPU has key \
                         {c} (cosine {want_cos:.6})"
                    );
                }
            }
        }
        if let Some((j1, j2)) = dup {
            assert_eq!(
                &gi[..2],
                &[j1 as i32, j2 as i32],
                "{label} (seed {s}): tied duplicate keys, lowest index first"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------ optimiser -------

fn adamw_hp(step: u64) -> AdamW {
    AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.2, step }
}

/// Segments over n elements: decayed and not, alternating, with empty ones and runs of one.
fn segments(n: usize) -> Vec<DecaySegment> {
    let a = n / 3;
    let b = (n - a).min(1);
    let c = n - a - b;
    let mut start = 0;
    [0, a, 0, b, c / 2, c - c / 2]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let seg = DecaySegment { start, len, decay: i % 3 != 1 };
            start += len;
            seg
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn adamw_op<B: Backend>(
    b: &B,
    steps: &[(u64, Vec<f32>)],
    segs: &[DecaySegment],
    p0: &[f32],
    m0: &[f32],
    v0: &[f32],
    shadow: bool,
) -> Result<Vec<Out>> {
    let n = p0.len();
    let (mut p, mut m, mut v) = (master(b, p0)?, master(b, m0)?, master(b, v0)?);
    let mut sh = nan_act(b, n)?;
    for (step, g) in steps {
        let gd = master(b, g)?;
        let shadow_view = shadow.then(|| B::view_mut(&mut sh));
        let (pv, mv, vv) = (B::view_mut(&mut p), B::view_mut(&mut m), B::view_mut(&mut v));
        b.adamw_update(&adamw_hp(*step), segs, pv, B::view(&gd), mv, vv, shadow_view)?;
    }
    let mut outs = vec![
        Out::exact("params", host_master(b, &p)?),
        Out::exact("m", host_master(b, &m)?),
        Out::exact("v", host_master(b, &v)?),
    ];
    if shadow {
        outs.push(Out::new("shadow", host_act(b, &sh)?, Check::ActBits));
    }
    Ok(outs)
}

/// AdamW, several steps, mixed decay segments, with and without the compute-dtype shadow: masters and moments equal
/// to the CPU's bit for bit (kernels/optim.cu rounds every operation explicitly in the CPU's order), the shadow the
/// master rounded to the compute dtype.
fn adamw_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (k, &n) in [1usize, 7, 1000, (1 << 20) + 3].iter().enumerate() {
        for shadow in [false, true] {
            let s = seed(12_100 + 2 * k as u64 + u64::from(shadow));
            let mut r = rng(s);
            let p0 = draw_master(&mut r, n, 0.0, 0.5);
            let m0 = draw_master(&mut r, n, 0.0, 0.01);
            let v0: Vec<f32> = draw_master(&mut r, n, 0.0, 0.01).iter().map(|x| x * x).collect();
            let steps: Vec<(u64, Vec<f32>)> =
                [1u64, 2, 7].iter().map(|&t| (t, draw_master(&mut r, n, 0.0, 1.0))).collect();
            let segs = segments(n);
            parity!(gpu, format!("adamw n={n} shadow={shadow}"), s, adamw_op(&steps, &segs, &p0, &m0, &v0, shadow));
        }
    }
}

fn sums_op<B: Backend>(b: &B, x: &[f32]) -> Result<(f64, f64, f64)> {
    let xd = master(b, x)?;
    let (sum, squares) = (b.sum(B::view(&xd))?, b.sum_squares(B::view(&xd))?);
    Ok((sum, squares, b.sum(B::view(&xd))?))
}

/// `sum` and `sum_squares` in f64: within 1e-11 of Σ|x| (resp. Σx²) of the CPU's (the orders differ), and the same
/// bits when repeated.
fn sums_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    for (k, &n) in [0usize, 1, 7, 1000, (1 << 20) + 3, 10_000_019].iter().enumerate() {
        let s = seed(12_200 + k as u64);
        let x = draw_master(&mut rng(s), n, 0.3, 2.0);
        let (gs, gq, again) = sums_op(gpu, &x).unwrap_or_else(|e| panic!("sums n={n} (seed {s}): {e}"));
        let (cs, cq, _) = sums_op(&Cpu::new(), &x).unwrap();
        let abs: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
        assert!((gs - cs).abs() <= 1e-11 * abs, "sum n={n} (seed {s}): GPU {gs:e}, CPU {cs:e}, Σ|x| {abs:e}");
        assert!((gq - cq).abs() <= 1e-11 * cq, "sum_squares n={n} (seed {s}): GPU {gq:e}, CPU {cq:e}");
        assert_eq!(gs.to_bits(), again.to_bits(), "sum n={n} (seed {s}): a repeat gave other bits");
    }
}

// ------------------------------------------------------------------------------------------------ errors ----------

/// Wrong buffer lengths are `Error::Shape` on the CUDA backend as on the CPU, for a sample of primitives.
fn shape_errors_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    fn shape_errors<B: Backend>(b: &B) -> Vec<String> {
        let z = |n| b.zeros::<B::Act>(n).unwrap();
        let zm = |n| b.zeros::<B::Master>(n).unwrap();
        let (x, g, mut y, mut c) = (z(12), z(4), z(11), z(6));
        let (mut mean, mut rstd) = (zm(3), zm(3));
        let (v, vm) = (B::view::<B::Act>, B::view_mut::<B::Act>);
        let results: Vec<(&str, Result<()>)> = vec![
            ("gemm", b.gemm(&Gemm::new(2, 3, 6, false, false), v(&x), v(&x), vm(&mut y))),
            ("add", b.add(v(&x), v(&g), vm(&mut c))),
            ("softmax_forward", b.softmax_forward(v(&x), vm(&mut y), 3, 4)),
            (
                "layernorm_forward",
                b.layernorm_forward(
                    v(&x),
                    v(&c),
                    v(&g),
                    vm(&mut y),
                    B::view_mut(&mut mean),
                    B::view_mut(&mut rstd),
                    3,
                    4,
                    EPS,
                ),
            ),
            ("transpose", b.transpose(v(&x), vm(&mut y), 1, 3, 4)),
            ("activation_forward", b.activation_forward(Activation::Gelu, v(&x), vm(&mut y))),
        ];
        results
            .into_iter()
            .map(|(what, r)| match r {
                Err(Error::Shape { .. }) => String::new(),
                other => format!("{what}: {other:?}"),
            })
            .filter(|s| !s.is_empty())
            .collect()
    }
    assert!(shape_errors(&Cpu::new()).is_empty(), "CPU: {:?}", shape_errors(&Cpu::new()));
    let bad = shape_errors(gpu);
    assert!(bad.is_empty(), "{}: not shape errors: {bad:?}", A::LABEL);
}

// ------------------------------------------------------------------------------------------------ tests -----------

gpu_tests! {
    memory_case =>
        gpu_backend_memory_upload_write_fill_copy_slice_split_f32,
        gpu_backend_memory_upload_write_fill_copy_slice_split_bf16;
    casts_case =>
        gpu_backend_casts_all_six_bit_exact_f32,
        gpu_backend_casts_all_six_bit_exact_bf16;
    gemm_transposes_case =>
        gpu_backend_gemm_transposes_alpha_beta_f32,
        gpu_backend_gemm_transposes_alpha_beta_bf16;
    gemm_batched_case =>
        gpu_backend_gemm_batched_strided_broadcast_f32,
        gpu_backend_gemm_batched_strided_broadcast_bf16;
    gemm_to_master_case =>
        gpu_backend_gemm_to_master_weight_gradients_f32,
        gpu_backend_gemm_to_master_weight_gradients_bf16;
    bias_case =>
        gpu_backend_add_row_vector_and_sum_rows_f32,
        gpu_backend_add_row_vector_and_sum_rows_bf16;
    elementwise_case =>
        gpu_backend_add_axpy_scale_scale_master_f32,
        gpu_backend_add_axpy_scale_scale_master_bf16;
    activation_case =>
        gpu_backend_activation_forward_backward_all_kinds_f32,
        gpu_backend_activation_forward_backward_all_kinds_bf16;
    layout_case =>
        gpu_backend_transpose_and_copy_rows_f32,
        gpu_backend_transpose_and_copy_rows_bf16;
    gather_case =>
        gpu_backend_gather_tokens_forward_backward_f32,
        gpu_backend_gather_tokens_forward_backward_bf16;
    embedding_case =>
        gpu_backend_embedding_forward_backward_repeated_ids_f32,
        gpu_backend_embedding_forward_backward_repeated_ids_bf16;
    embedding_bad_id_case =>
        gpu_backend_embedding_out_of_range_id_is_an_error_f32,
        gpu_backend_embedding_out_of_range_id_is_an_error_bf16;
    layernorm_case =>
        gpu_backend_layernorm_forward_backward_f32,
        gpu_backend_layernorm_forward_backward_bf16;
    batchnorm_case =>
        gpu_backend_batchnorm_train_eval_backward_f32,
        gpu_backend_batchnorm_train_eval_backward_bf16;
    l2norm_case =>
        gpu_backend_l2norm_forward_backward_f32,
        gpu_backend_l2norm_forward_backward_bf16;
    conv_case =>
        gpu_backend_conv2d_forward_backward_data_filter_f32,
        gpu_backend_conv2d_forward_backward_data_filter_bf16;
    avgpool_case =>
        gpu_backend_avgpool_forward_backward_f32,
        gpu_backend_avgpool_forward_backward_bf16;
    softmax_case =>
        gpu_backend_softmax_forward_backward_f32,
        gpu_backend_softmax_forward_backward_bf16;
    attention_packed_case =>
        gpu_backend_attention_packed_causal_and_key_padding_f32,
        gpu_backend_attention_packed_causal_and_key_padding_bf16;
    attention_separate_case =>
        gpu_backend_attention_separate_sq_ne_sk_and_gaps_f32,
        gpu_backend_attention_separate_sq_ne_sk_and_gaps_bf16;
    cross_entropy_case =>
        gpu_backend_cross_entropy_smoothing_ignore_index_f32,
        gpu_backend_cross_entropy_smoothing_ignore_index_bf16;
    clip_loss_case =>
        gpu_backend_clip_loss_forward_backward_f32,
        gpu_backend_clip_loss_forward_backward_bf16;
    nn_search_case =>
        gpu_backend_nn_search_top_k_and_ties_f32,
        gpu_backend_nn_search_top_k_and_ties_bf16;
    adamw_case =>
        gpu_backend_adamw_update_bit_exact_with_and_without_shadow_f32,
        gpu_backend_adamw_update_bit_exact_with_and_without_shadow_bf16;
    sums_case =>
        gpu_backend_sum_and_sum_squares_f64_f32,
        gpu_backend_sum_and_sum_squares_f64_bf16;
    shape_errors_case =>
        gpu_backend_bad_lengths_are_shape_errors_f32,
        gpu_backend_bad_lengths_are_shape_errors_bf16;
}
