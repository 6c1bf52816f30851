//! GPU parity tests of the materialised CLIP loss (`backend::cuda::clip_loss_naive`, `kernels/clip_loss_naive.cu`)
//! against the CPU reference (`CpuBackend::<f32>`'s trait methods): loss, saved state, embedding gradients
//! (overwritten) and the log-scale gradient (accumulated from a non-zero start), f32 and bf16, with and without label
//! smoothing. Filter with `gpu_clip_loss`.
//!
//! n covers 1 (the loss is exactly 0 without smoothing), 7, 128, 300 (several column chunks of 128 rows) and 1100 (f32
//! only: rows wider than 1024 take the block-per-row path); dim 64 and 512. Text embeddings are correlated with the
//! image ones (as after some training) so the diagonal matters. bf16 inputs are rounded first and the CPU runs on the
//! rounded values; the device then also rounds the normalised embeddings and the logit gradient to bf16 for its GEMMs,
//! hence the bf16 tolerances. Outputs, saved state and scratch are poisoned with NaN before each launch.

use std::sync::OnceLock;

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::cuda::blas::{Blas, GemmMode};
use cliprt::backend::cuda::clip_loss_naive::{clip_loss_naive_saved_len, clip_loss_naive_scratch_len};
use cliprt::backend::cuda::CudaDevice;
use cliprt::backend::cuda::DeviceViews;
use cliprt::backend::{Backend, ClipLoss};
use cliprt::testing::{assert_close, normal, rng, seed};
use cliprt::Error;
use half::bf16;

use super::norm::{draw, TestAct};
use super::{F32_ATOL, F32_RTOL};

type Cpu = CpuBackend<f32>;

/// The one cuBLASLt engine of these tests (on the device's stream, as the launchers require).
pub(crate) fn blas(dev: &CudaDevice) -> &'static Blas {
    static BLAS: OnceLock<Blas> = OnceLock::new();
    BLAS.get_or_init(|| Blas::new(dev).unwrap_or_else(|e| panic!("a CUDA device exists but Blas::new failed: {e}")))
}

/// (n, dim) for both dtypes.
const SHAPES: [(usize, usize); 8] =
    [(1, 64), (1, 512), (7, 64), (7, 512), (128, 64), (128, 512), (300, 64), (300, 512)];
const SMOOTHING: [f64; 2] = [0.0, 0.1];
/// open_clip's initial logit scale: t = ln(1/0.07), exp(t) ≈ 14.3.
const LOG_SCALE: f32 = 2.659_26;
const DLOSS: f64 = 0.7;
const DLOG_SCALE_START: f32 = 0.25;

/// Tolerances per dtype. Gradient atol is tiny: the gradients are small (~1e-3) and the relative criterion is the
/// meaningful one. The lse atol covers n = 1, where the one lse is one logit and may be near 0.
trait Tolerances {
    const LOSS_RTOL: f64;
    const LSE_ATOL: f64;
    const GRAD_RTOL: f64;
    const DT_RTOL: f64;
    const DT_ATOL: f64;
}
impl Tolerances for f32 {
    const LOSS_RTOL: f64 = 1e-5;
    const LSE_ATOL: f64 = 1e-5;
    const GRAD_RTOL: f64 = 1e-5;
    const DT_RTOL: f64 = 1e-5;
    const DT_ATOL: f64 = 1e-5;
}
impl Tolerances for bf16 {
    const LOSS_RTOL: f64 = 1e-2;
    const LSE_ATOL: f64 = 1e-2;
    const GRAD_RTOL: f64 = 1e-2;
    const DT_RTOL: f64 = 1e-2;
    const DT_ATOL: f64 = 5e-3;
}
const GRAD_ATOL: f64 = 1e-9;

/// Device results of one forward and backward.
struct DeviceRun {
    loss: f32,
    saved: Vec<f32>,
    dimage: Vec<f32>,
    dtext: Vec<f32>,
    dlog_scale: f32,
}

/// Forward then backward on the device (backward from the device's own saved state), every output and the scratch
/// poisoned first.
fn device_run<T: TestAct + GemmMode<f32>>(
    dev: &CudaDevice,
    spec: &ClipLoss,
    image: &[T],
    text: &[T],
    log_scale: f32,
) -> DeviceRun {
    let (n, dim) = (spec.rows, spec.dim);
    let blas = blas(dev);
    let (id, td) = (dev.upload(image).unwrap(), dev.upload(text).unwrap());
    let ld = dev.upload(&[log_scale]).unwrap();
    let mut lossd = dev.upload(&[f32::NAN]).unwrap();
    let mut savedd = dev.upload(&vec![f32::NAN; clip_loss_naive_saved_len(spec)]).unwrap();
    let scratch_len = clip_loss_naive_scratch_len::<T>(spec);
    let mut scratch = dev.upload(&vec![f32::NAN; scratch_len]).unwrap();
    dev.clip_loss_naive_forward::<T>(
        blas,
        spec,
        &id.dref(),
        &td.dref(),
        &ld.dref(),
        &mut lossd.dmut(),
        &mut savedd.dmut(),
        &mut scratch.dmut(),
    )
    .unwrap();
    let mut scratch = dev.upload(&vec![f32::NAN; scratch_len]).unwrap();
    let mut did = dev.upload(&vec![T::NAN; n * dim]).unwrap();
    let mut dtd = dev.upload(&vec![T::NAN; n * dim]).unwrap();
    let mut dld = dev.upload(&[DLOG_SCALE_START]).unwrap();
    dev.clip_loss_naive_backward::<T>(
        blas,
        spec,
        &id.dref(),
        &td.dref(),
        &ld.dref(),
        &savedd.dref(),
        DLOSS,
        &mut did.dmut(),
        &mut dtd.dmut(),
        &mut dld.dmut(),
        &mut scratch.dmut(),
    )
    .unwrap();
    DeviceRun {
        loss: dev.download(&lossd).unwrap()[0],
        saved: dev.download(&savedd).unwrap(),
        dimage: T::back(&dev.download(&did).unwrap()),
        dtext: T::back(&dev.download(&dtd).unwrap()),
        dlog_scale: dev.download(&dld).unwrap()[0],
    }
}

/// Image embeddings, and text embeddings correlated with them (`0.4·image + noise`), rounded to T; plus the rounded
/// values as f32 for the CPU.
#[allow(clippy::type_complexity)]
fn embeddings<T: TestAct>(s: u64, n: usize, dim: usize) -> ((Vec<T>, Vec<f32>), (Vec<T>, Vec<f32>)) {
    let mut r = rng(s);
    let (image, image_f) = draw::<T>(&mut r, n * dim, 0.0, 1.0);
    let noise = normal::<f32>(&mut r, n * dim, 1.0);
    let text_f: Vec<f32> = image_f.iter().zip(&noise).map(|(&x, &e)| 0.4 * x + e).collect();
    let text = T::of(&text_f);
    let text_f = T::back(&text);
    ((image, image_f), (text, text_f))
}

fn clip_case<T: TestAct + GemmMode<f32> + Tolerances>(dev: &CudaDevice, base_seed: u64, shapes: &[(usize, usize)]) {
    for (c, &(n, dim)) in shapes.iter().enumerate() {
        for (e, &label_smoothing) in SMOOTHING.iter().enumerate() {
            let s = seed(base_seed + 10 * c as u64 + e as u64);
            let spec = ClipLoss::symmetric(n, dim).with_label_smoothing(label_smoothing);
            let ((image, image_f), (text, text_f)) = embeddings::<T>(s, n, dim);
            let cpu = Cpu::new();
            let (mut loss, mut saved) = ([0f32], vec![0f32; cpu.clip_loss_saved_len(&spec)]);
            cpu.clip_loss_forward(&spec, &image_f, &text_f, &[LOG_SCALE], &mut loss, &mut saved).unwrap();
            let (mut dimage, mut dtext, mut dlog_scale) =
                (vec![0f32; n * dim], vec![0f32; n * dim], [DLOG_SCALE_START]);
            cpu.clip_loss_backward(
                &spec,
                &image_f,
                &text_f,
                &[LOG_SCALE],
                &saved,
                DLOSS,
                &mut dimage,
                Some(&mut dtext),
                &mut dlog_scale,
            )
            .unwrap();

            let got = device_run::<T>(dev, &spec, &image, &text, LOG_SCALE);
            let label = format!("clip_loss_naive_{} n={n} dim={dim} ε={label_smoothing}", <T as TestAct>::NAME);
            assert_close(&format!("{label} loss"), s, &[got.loss], &loss, T::LOSS_RTOL, 1e-6);
            assert_close(
                &format!("{label} row/col lse"),
                s,
                &got.saved[..2 * n],
                &saved[..2 * n],
                T::LOSS_RTOL,
                T::LSE_ATOL,
            );
            // The norms are fp32 sums of the same (rounded) inputs whatever T is.
            assert_close(&format!("{label} norms"), s, &got.saved[2 * n..], &saved[2 * n..], F32_RTOL, F32_ATOL);
            assert_close(&format!("{label} dimage"), s, &got.dimage, &dimage, T::GRAD_RTOL, GRAD_ATOL);
            assert_close(&format!("{label} dtext"), s, &got.dtext, &dtext, T::GRAD_RTOL, GRAD_ATOL);
            assert_close(
                &format!("{label} dlog_scale (accumulated from {DLOG_SCALE_START})"),
                s,
                &[got.dlog_scale],
                &dlog_scale,
                T::DT_RTOL,
                T::DT_ATOL,
            );
        }
    }
}

#[test]
fn gpu_clip_loss_naive_f32() {
    let Some(dev) = super::gpu() else { return };
    clip_case::<f32>(dev, 8000, &SHAPES);
}

#[test]
fn gpu_clip_loss_naive_bf16() {
    let Some(dev) = super::gpu() else { return };
    clip_case::<bf16>(dev, 8100, &SHAPES);
}

/// n > 1024: the row kernels take one block per row, and the columns come in 9 chunks (the last of 76 rows).
#[test]
fn gpu_clip_loss_naive_wide_rows_f32() {
    let Some(dev) = super::gpu() else { return };
    clip_case::<f32>(dev, 8200, &[(1100, 64)]);
}

/// The same inputs give the same bits twice (no atomics anywhere, fixed summation orders).
#[test]
fn gpu_clip_loss_naive_is_deterministic() {
    let Some(dev) = super::gpu() else { return };
    let s = seed(8300);
    let spec = ClipLoss::symmetric(300, 512).with_label_smoothing(0.1);
    let ((image, _), (text, _)) = embeddings::<bf16>(s, spec.rows, spec.dim);
    let a = device_run::<bf16>(dev, &spec, &image, &text, LOG_SCALE);
    let b = device_run::<bf16>(dev, &spec, &image, &text, LOG_SCALE);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "loss differs between runs (seed {s})");
    assert_eq!(bits(&a.saved), bits(&b.saved), "saved state differs between runs (seed {s})");
    assert_eq!(bits(&a.dimage), bits(&b.dimage), "dimage differs between runs (seed {s})");
    assert_eq!(bits(&a.dtext), bits(&b.dtext), "dtext differs between runs (seed {s})");
    assert_eq!(a.dlog_scale.to_bits(), b.dlog_scale.to_bits(), "dlog_scale differs between runs (seed {s})");
}

/// A zero embedding row: its norm is clamped (x̂ = 0) and its gradient is dx̂/1e-12, as on the CPU.
#[test]
fn gpu_clip_loss_naive_zero_row_f32() {
    let Some(dev) = super::gpu() else { return };
    let s = seed(8400);
    let (n, dim) = (7, 64);
    let spec = ClipLoss::symmetric(n, dim);
    let ((mut image, _), (text, _)) = embeddings::<f32>(s, n, dim);
    image[2 * dim..3 * dim].fill(0.0);
    let cpu = Cpu::new();
    let (mut loss, mut saved) = ([0f32], vec![0f32; 4 * n]);
    cpu.clip_loss_forward(&spec, &image, &text, &[LOG_SCALE], &mut loss, &mut saved).unwrap();
    let (mut dimage, mut dtext, mut dlog_scale) = (vec![0f32; n * dim], vec![0f32; n * dim], [DLOG_SCALE_START]);
    cpu.clip_loss_backward(
        &spec,
        &image,
        &text,
        &[LOG_SCALE],
        &saved,
        DLOSS,
        &mut dimage,
        Some(&mut dtext),
        &mut dlog_scale,
    )
    .unwrap();
    let got = device_run::<f32>(dev, &spec, &image, &text, LOG_SCALE);
    assert_close("clip_loss_naive zero row: loss", s, &[got.loss], &loss, 1e-5, 1e-6);
    // The clamped row's gradient is ~1e12 larger than the rest: compare it on its own.
    let rows = |v: &[f32], r: std::ops::Range<usize>| v[r.start * dim..r.end * dim].to_vec();
    let rest = |v: &[f32]| [rows(v, 0..2), rows(v, 3..n)].concat();
    assert_close("zero row: dimage (clamped row)", s, &rows(&got.dimage, 2..3), &rows(&dimage, 2..3), 1e-5, 0.0);
    assert_close("zero row: dimage (other rows)", s, &rest(&got.dimage), &rest(&dimage), 1e-5, GRAD_ATOL);
    assert_close("zero row: dtext", s, &got.dtext, &dtext, 1e-5, GRAD_ATOL);
    assert_close("zero row: dlog_scale", s, &[got.dlog_scale], &dlog_scale, 1e-5, 1e-5);
}

/// Bad arguments: the CPU's errors (empty batch, smoothing outside [0, 1], wrong lengths) and a short scratch.
#[test]
fn gpu_clip_loss_naive_argument_errors() {
    let Some(dev) = super::gpu() else { return };
    let blas = blas(dev);
    let (n, dim) = (4, 8);
    let x = dev.upload(&vec![1f32; n * dim]).unwrap();
    let t = dev.upload(&[LOG_SCALE]).unwrap();
    let mut loss = dev.zeros::<f32>(1).unwrap();
    let mut saved = dev.zeros::<f32>(4 * n).unwrap();
    let good = ClipLoss::symmetric(n, dim);
    let mut scratch = dev.zeros::<f32>(clip_loss_naive_scratch_len::<f32>(&good)).unwrap();
    let mut forward = |spec: &ClipLoss, image_len: usize, scratch_len: usize| {
        dev.clip_loss_naive_forward::<f32>(
            blas,
            spec,
            &x.dslice(..image_len),
            &x.dref(),
            &t.dref(),
            &mut loss.dmut(),
            &mut saved.dmut(),
            &mut scratch.dslice_mut(..scratch_len),
        )
    };
    let full = clip_loss_naive_scratch_len::<f32>(&good);
    let err = forward(&ClipLoss { rows: 0, cols: 0, ..good }, 0, full).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }) && err.to_string().contains("empty batch"), "{err}");
    let err = forward(&ClipLoss { label_smoothing: 1.5, ..good }, n * dim, full).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }) && err.to_string().contains("label_smoothing"), "{err}");
    let err = forward(&good, n * dim - 1, full).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "image", .. }), "{err}");
    let err = forward(&good, n * dim, full - 1).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "scratch", .. }), "{err}");
    forward(&good, n * dim, full).unwrap();
}

/// The scratch covers the n×n logits and the backward's n×n gradient; bf16 needs less. No GPU needed.
#[test]
fn gpu_clip_loss_naive_scratch_len_grows_with_n_squared() {
    let small = clip_loss_naive_scratch_len::<f32>(&ClipLoss::symmetric(128, 512));
    let large = clip_loss_naive_scratch_len::<f32>(&ClipLoss::symmetric(256, 512));
    assert!(small >= 2 * 128 * 128 + 4 * 128 * 512, "{small}");
    assert!(large >= 2 * 256 * 256 + 4 * 256 * 512, "{large}");
    assert!(clip_loss_naive_scratch_len::<bf16>(&ClipLoss::symmetric(256, 512)) < large);
}
