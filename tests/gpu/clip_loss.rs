//! GPU parity tests of the fused CLIP loss (`backend::cuda::clip_loss`, `kernels/clip_loss.cu`) against the CPU
//! reference (`CpuBackend::<f32>`): loss, saved state, embedding gradients (overwritten; outputs and scratch poisoned
//! with NaN first), the log-scale gradient (accumulated from a non-zero start), f32 and bf16. Filter with
//! `gpu_clip_loss_fused` (and `gpu_clip_loss` for the naive baseline's too).
//!
//! Covered: symmetric N ∈ {1, 7, 128, 1000, 4097} × D ∈ {64, 256, 512, 1024}; label smoothing; one-way; non-square
//! with a row offset (N_local < N_global, the local loss); dtext = None; small forced plans (several bands and
//! blocks, partial tiles); a zero (clamped) row; the trait path of `CudaBackend` and open_clip's local loss over
//! simulated ranks on the GPU against the global form; the scratch size at N = 256k.
//!
//! Tolerances. bf16 inputs are rounded first and the CPU runs on the rounded values. The device's dot products are
//! exact products with fp32 accumulation, so the forward is close in both dtypes; the backward rounds E to the
//! activation dtype for its GEMMs (bf16: 2⁻⁹ per element) and `dx = E·Y − r²ρx` cancels the component along x
//! (large for correlated pairs), which amplifies fp32 rounding differences tenfold: hence gradient rtol 1e-4 (f32)
//! and 2e-2 (bf16).

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::cuda::blas::GemmMode;
use cliprt::backend::cuda::clip_loss::{clip_loss_saved_len, clip_loss_scratch_len, ClipLossPlan};
use cliprt::backend::cuda::{CudaBackend, CudaDevice, DeviceViews};
use cliprt::backend::{Backend, ClipLoss};
use cliprt::objective::local_loss::{GatheredGrads, LocalLoss, LocalLossSpec};
use cliprt::testing::{assert_close, normal, rng, seed};
use cliprt::Error;
use half::bf16;

use super::clip_loss_naive::blas;
use super::norm::{draw, TestAct};

type Cpu = CpuBackend<f32>;

/// open_clip's initial logit scale: t = ln(1/0.07), exp(t) ≈ 14.3.
const LOG_SCALE: f32 = 2.659_26;
const DLOSS: f64 = 0.7;
const DLOG_SCALE_START: f32 = 0.25;

trait Tol {
    const LOSS_RTOL: f64;
    const LSE_ATOL: f64;
    const GRAD_RTOL: f64;
    const DT_RTOL: f64;
    const DT_ATOL: f64;
}
impl Tol for f32 {
    const LOSS_RTOL: f64 = 1e-5;
    const LSE_ATOL: f64 = 1e-5;
    const GRAD_RTOL: f64 = 1e-4;
    const DT_RTOL: f64 = 1e-4;
    const DT_ATOL: f64 = 1e-5;
}
impl Tol for bf16 {
    const LOSS_RTOL: f64 = 1e-4;
    const LSE_ATOL: f64 = 1e-4;
    const GRAD_RTOL: f64 = 2e-2;
    const DT_RTOL: f64 = 1e-2;
    const DT_ATOL: f64 = 5e-3;
}
const GRAD_ATOL: f64 = 1e-9;

struct Run {
    loss: f32,
    saved: Vec<f32>,
    dimage: Vec<f32>,
    dtext: Option<Vec<f32>>,
    dlog_scale: f32,
}

/// x [rows, dim] and y [cols, dim] with each row correlated with its positive column (as after some training),
/// rounded to T; plus the rounded values as f32.
#[allow(clippy::type_complexity)]
fn embeddings<T: TestAct>(s: u64, spec: &ClipLoss) -> ((Vec<T>, Vec<f32>), (Vec<T>, Vec<f32>)) {
    let mut r = rng(s);
    let (text, text_f) = draw::<T>(&mut r, spec.cols * spec.dim, 0.0, 1.0);
    let noise = normal::<f32>(&mut r, spec.rows * spec.dim, 1.0);
    let d = spec.dim;
    let image_f: Vec<f32> = (0..spec.rows * d)
        .map(|k| {
            let (i, c) = (k / d, k % d);
            0.4 * text_f[(spec.row_offset + i) * d + c] + noise[k]
        })
        .collect();
    let image = T::of(&image_f);
    let image_f = T::back(&image);
    ((image, image_f), (text, text_f))
}

fn cpu_run(spec: &ClipLoss, image: &[f32], text: &[f32], with_dtext: bool) -> Run {
    let cpu = Cpu::new();
    let (mut loss, mut saved) = ([0f32], vec![0f32; cpu.clip_loss_saved_len(spec)]);
    cpu.clip_loss_forward(spec, image, text, &[LOG_SCALE], &mut loss, &mut saved).unwrap();
    let (mut dimage, mut dtext, mut dt) = (vec![0f32; image.len()], vec![0f32; text.len()], [DLOG_SCALE_START]);
    let d = if with_dtext { Some(&mut dtext[..]) } else { None };
    cpu.clip_loss_backward(spec, image, text, &[LOG_SCALE], &saved, DLOSS, &mut dimage, d, &mut dt).unwrap();
    Run { loss: loss[0], saved, dimage, dtext: with_dtext.then_some(dtext), dlog_scale: dt[0] }
}

/// Forward then backward (from the device's own saved state) through the launchers with `plan`.
fn device_run<T: TestAct + GemmMode<f32>>(
    dev: &CudaDevice,
    spec: &ClipLoss,
    plan: &ClipLossPlan,
    image: &[T],
    text: &[T],
    with_dtext: bool,
) -> Run {
    let blas = blas(dev);
    let (id, td, ld) = (dev.upload(image).unwrap(), dev.upload(text).unwrap(), dev.upload(&[LOG_SCALE]).unwrap());
    let mut lossd = dev.upload(&[f32::NAN]).unwrap();
    let mut savedd = dev.upload(&vec![f32::NAN; clip_loss_saved_len(spec)]).unwrap();
    let mut scratch = dev.upload(&vec![f32::NAN; clip_loss_scratch_len::<T>(spec, plan, with_dtext)]).unwrap();
    dev.clip_loss_forward::<T>(
        spec,
        plan,
        &id.dref(),
        &td.dref(),
        &ld.dref(),
        &mut lossd.dmut(),
        &mut savedd.dmut(),
        &mut scratch.dmut(),
    )
    .unwrap();
    let mut scratch = dev.upload(&vec![f32::NAN; clip_loss_scratch_len::<T>(spec, plan, with_dtext)]).unwrap();
    let mut did = dev.upload(&vec![T::NAN; image.len()]).unwrap();
    let mut dtd = dev.upload(&vec![T::NAN; text.len()]).unwrap();
    let mut dld = dev.upload(&[DLOG_SCALE_START]).unwrap();
    {
        let mut dtext_view = dtd.dmut();
        dev.clip_loss_backward::<T>(
            blas,
            spec,
            plan,
            &id.dref(),
            &td.dref(),
            &ld.dref(),
            &savedd.dref(),
            DLOSS,
            &mut did.dmut(),
            if with_dtext { Some(&mut dtext_view) } else { None },
            &mut dld.dmut(),
            &mut scratch.dmut(),
        )
        .unwrap();
    }
    let dtext = T::back(&dev.download(&dtd).unwrap());
    if !with_dtext {
        assert!(dtext.iter().all(|v| v.is_nan()), "clip_loss: dtext written although None");
    }
    Run {
        loss: dev.download(&lossd).unwrap()[0],
        saved: dev.download(&savedd).unwrap(),
        dimage: T::back(&dev.download(&did).unwrap()),
        dtext: with_dtext.then_some(dtext),
        dlog_scale: dev.download(&dld).unwrap()[0],
    }
}

fn compare<T: Tol>(label: &str, s: u64, spec: &ClipLoss, got: &Run, want: &Run) {
    let (r, c) = (spec.rows, spec.cols);
    assert_close(&format!("{label} loss"), s, &[got.loss], &[want.loss], T::LOSS_RTOL, 1e-6);
    assert_close(
        &format!("{label} row/col lse"),
        s,
        &got.saved[..r + c],
        &want.saved[..r + c],
        T::LOSS_RTOL,
        T::LSE_ATOL,
    );
    assert_close(&format!("{label} norms"), s, &got.saved[r + c..], &want.saved[r + c..], 1e-5, 1e-6);
    assert_close(&format!("{label} dimage"), s, &got.dimage, &want.dimage, T::GRAD_RTOL, GRAD_ATOL);
    if let (Some(g), Some(w)) = (&got.dtext, &want.dtext) {
        assert_close(&format!("{label} dtext"), s, g, w, T::GRAD_RTOL, GRAD_ATOL);
    }
    assert_close(&format!("{label} dlog_scale"), s, &[got.dlog_scale], &[want.dlog_scale], T::DT_RTOL, T::DT_ATOL);
}

fn case<T: TestAct + GemmMode<f32> + Tol>(
    dev: &CudaDevice,
    s: u64,
    name: &str,
    spec: ClipLoss,
    plan: Option<ClipLossPlan>,
    with_dtext: bool,
) {
    let plan = plan.unwrap_or_else(|| ClipLossPlan::new(&spec));
    let ((image, image_f), (text, text_f)) = embeddings::<T>(s, &spec);
    let want = cpu_run(&spec, &image_f, &text_f, with_dtext);
    let got = device_run::<T>(dev, &spec, &plan, &image, &text, with_dtext);
    let label = format!("clip_loss_fused_{} {name} {spec:?} {plan:?} dtext {with_dtext}", <T as TestAct>::NAME);
    compare::<T>(&label, s, &spec, &got, &want);
}

fn symmetric_grid<T: TestAct + GemmMode<f32> + Tol>(dev: &CudaDevice, base: u64) {
    for (a, &n) in [1usize, 7, 128, 1000, 4097].iter().enumerate() {
        for (b, &dim) in [64usize, 256, 512, 1024].iter().enumerate() {
            let s = seed(base + 10 * a as u64 + b as u64);
            let eps = if (a + b) % 2 == 0 { 0.0 } else { 0.1 };
            case::<T>(dev, s, "symmetric", ClipLoss::symmetric(n, dim).with_label_smoothing(eps), None, true);
        }
    }
}

#[test]
fn gpu_clip_loss_fused_symmetric_f32() {
    let Some(dev) = super::gpu() else { return };
    symmetric_grid::<f32>(dev, 9100);
}

#[test]
fn gpu_clip_loss_fused_symmetric_bf16() {
    let Some(dev) = super::gpu() else { return };
    symmetric_grid::<bf16>(dev, 9200);
}

fn forms<T: TestAct + GemmMode<f32> + Tol>(dev: &CudaDevice, base: u64) {
    let small = |b, r, c| Some(ClipLossPlan::with_sizes(b, r, c).unwrap());
    let cases: Vec<(&str, ClipLoss, Option<ClipLossPlan>, bool)> = vec![
        ("one-way", ClipLoss::one_way(300, 300, 0, 256), None, true),
        ("one-way smoothed", ClipLoss::one_way(300, 300, 0, 64).with_label_smoothing(0.1), None, true),
        // The local loss of rank 2 of 4: N_local = 250 of N_global = 1000.
        ("local offset", ClipLoss::one_way(250, 1000, 500, 512).with_weights(0.5, 0.0), None, true),
        ("local last rank", ClipLoss::one_way(250, 1000, 750, 64).with_label_smoothing(0.1), None, true),
        ("dtext None", ClipLoss::one_way(250, 1000, 250, 512), None, false),
        ("symmetric dtext None", ClipLoss::symmetric(700, 256).with_label_smoothing(0.1), None, false),
        ("bands and blocks", ClipLoss::symmetric(1000, 512).with_label_smoothing(0.1), small(128, 256, 384), true),
        ("offset bands", ClipLoss::one_way(333, 1001, 600, 256), small(256, 128, 512), true),
        ("dim not a multiple of 8", ClipLoss::symmetric(200, 100), small(128, 128, 128), true),
        ("weights", ClipLoss::symmetric(129, 64).with_weights(0.3, 1.1), None, true),
    ];
    for (k, (name, spec, plan, with_dtext)) in cases.into_iter().enumerate() {
        case::<T>(dev, seed(base + k as u64), name, spec, plan, with_dtext);
    }
}

#[test]
fn gpu_clip_loss_fused_forms_f32() {
    let Some(dev) = super::gpu() else { return };
    forms::<f32>(dev, 9300);
}

#[test]
fn gpu_clip_loss_fused_forms_bf16() {
    let Some(dev) = super::gpu() else { return };
    forms::<bf16>(dev, 9400);
}

#[test]
fn gpu_clip_loss_fused_zero_row_f32() {
    let Some(dev) = super::gpu() else { return };
    let s = seed(9500);
    let spec = ClipLoss::symmetric(7, 64);
    let ((mut image, _), (text, _)) = embeddings::<f32>(s, &spec);
    image[2 * 64..3 * 64].fill(0.0);
    let want = cpu_run(&spec, &image, &text, true);
    let got = device_run::<f32>(dev, &spec, &ClipLossPlan::new(&spec), &image, &text, true);
    assert_close("clip_loss_fused zero row: loss", s, &[got.loss], &[want.loss], 1e-5, 1e-6);
    // The clamped row's gradient is ~1e12 larger than the rest: compare it on its own.
    let (gz, wz) = (&got.dimage[2 * 64..3 * 64], &want.dimage[2 * 64..3 * 64]);
    assert_close("clip_loss_fused zero row: its dimage", s, gz, wz, 1e-4, 0.0);
    let rest = |v: &[f32]| [&v[..2 * 64], &v[3 * 64..]].concat();
    assert_close("clip_loss_fused zero row: dimage", s, &rest(&got.dimage), &rest(&want.dimage), 1e-4, GRAD_ATOL);
}

#[test]
fn gpu_clip_loss_fused_is_deterministic() {
    let Some(dev) = super::gpu() else { return };
    let spec = ClipLoss::symmetric(1000, 512).with_label_smoothing(0.1);
    let plan = ClipLossPlan::with_sizes(256, 256, 512).unwrap();
    let ((image, _), (text, _)) = embeddings::<bf16>(seed(9600), &spec);
    let bits = |r: Run| {
        [vec![r.loss, r.dlog_scale], r.saved, r.dimage, r.dtext.unwrap()]
            .concat()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    let a = bits(device_run::<bf16>(dev, &spec, &plan, &image, &text, true));
    let b = bits(device_run::<bf16>(dev, &spec, &plan, &image, &text, true));
    assert!(a == b, "clip_loss_fused: two runs differ");
}

#[test]
fn gpu_clip_loss_fused_argument_errors() {
    let Some(dev) = super::gpu() else { return };
    let spec = ClipLoss::one_way(4, 8, 2, 16);
    let plan = ClipLossPlan::new(&spec);
    let (x, y, t) = (dev.zeros::<f32>(64).unwrap(), dev.zeros::<f32>(128).unwrap(), dev.zeros::<f32>(1).unwrap());
    let (mut loss, mut saved) = (dev.zeros::<f32>(1).unwrap(), dev.zeros::<f32>(24).unwrap());
    let mut scratch = dev.zeros::<f32>(clip_loss_scratch_len::<f32>(&spec, &plan, true)).unwrap();
    let mut run = |spec: &ClipLoss, y_len: usize| {
        dev.clip_loss_forward::<f32>(
            spec,
            &plan,
            &x.dref(),
            &y.dref().slice(0..y_len),
            &t.dref(),
            &mut loss.dmut(),
            &mut saved.dmut(),
            &mut scratch.dmut(),
        )
    };
    assert!(run(&spec, 128).is_ok());
    assert!(matches!(run(&spec, 64), Err(Error::Shape { arg: "text", .. })));
    let bad = ClipLoss { row_offset: 5, ..spec };
    assert!(matches!(run(&bad, 128), Err(Error::Invalid { .. })));
    let bad = spec.with_weights(0.5, 0.5);
    assert!(matches!(run(&bad, 128), Err(Error::Invalid { .. })));
    // The naive baseline refuses everything but the symmetric square form, naming the fused path.
    let err = dev
        .clip_loss_naive_forward::<f32>(
            blas(dev),
            &spec,
            &x.dref(),
            &y.dref(),
            &t.dref(),
            &mut loss.dmut(),
            &mut saved.dmut(),
            &mut scratch.dmut(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("fused"), "{err}");
}

#[test]
fn gpu_clip_loss_fused_scratch_is_linear() {
    // Runs without a GPU too: the scratch is O(N) (plus N·D fp32 for dtext and fixed blocks), never N².
    let n = 262_144;
    let spec = ClipLoss::symmetric(n, 512);
    let bytes = 4 * clip_loss_scratch_len::<bf16>(&spec, &ClipLossPlan::new(&spec), true);
    assert!(bytes < 1 << 30, "scratch {} MB at N = 256k", bytes >> 20);
    assert!((bytes as f64) < 4.0 * (n as f64).powi(2) / 100.0);
    let naive = 4 * cliprt::backend::cuda::clip_loss_naive::clip_loss_naive_scratch_len::<bf16>(&ClipLoss::symmetric(
        32768, 512,
    ));
    let spec = ClipLoss::symmetric(32768, 512);
    let fused = 4 * clip_loss_scratch_len::<bf16>(&spec, &ClipLossPlan::new(&spec), true);
    assert!(fused * 50 < naive, "fused {} MB vs naive {} MB at N = 32k", fused >> 20, naive >> 20);
}

/// The trait path: `CudaBackend::<A>` against `CpuBackend::<f32>` for a one-way offset spec, then open_clip's local
/// loss over 3 simulated ranks on the GPU against the GPU's global symmetric loss.
fn local_loss_case<A: super::backend::TestAct + TestAct + Tol>(base: u64) {
    let Some(b) = super::backend::backend::<A>() else { return };
    let (ranks, local, dim) = (3usize, 300usize, 256usize);
    let n = ranks * local;
    let s = seed(base);
    let global = ClipLoss::symmetric(n, dim).with_label_smoothing(0.1);
    let ((image, image_f), (text, _)) = embeddings::<A>(s, &global);
    let (ib, tb, lb) = (b.upload(&image).unwrap(), b.upload(&text).unwrap(), b.upload(&[LOG_SCALE]).unwrap());

    // Global, on the GPU.
    let mut loss = b.zeros::<f32>(1).unwrap();
    let mut saved = b.zeros::<f32>(b.clip_loss_saved_len(&global)).unwrap();
    b.clip_loss_forward(
        &global,
        CudaBackend::<A>::view(&ib),
        CudaBackend::<A>::view(&tb),
        CudaBackend::<A>::view(&lb),
        CudaBackend::<A>::view_mut(&mut loss),
        CudaBackend::<A>::view_mut(&mut saved),
    )
    .unwrap();
    let want_loss = b.download(CudaBackend::<A>::view(&loss)).unwrap()[0];
    let (mut di, mut dt, mut ds) =
        (b.zeros::<A>(n * dim).unwrap(), b.zeros::<A>(n * dim).unwrap(), b.zeros::<f32>(1).unwrap());
    b.clip_loss_backward(
        &global,
        CudaBackend::<A>::view(&ib),
        CudaBackend::<A>::view(&tb),
        CudaBackend::<A>::view(&lb),
        CudaBackend::<A>::view(&saved),
        1.0,
        CudaBackend::<A>::view_mut(&mut di),
        Some(CudaBackend::<A>::view_mut(&mut dt)),
        CudaBackend::<A>::view_mut(&mut ds),
    )
    .unwrap();
    let want_di = A::back(&b.download(CudaBackend::<A>::view(&di)).unwrap());
    let want_dt = A::back(&b.download(CudaBackend::<A>::view(&dt)).unwrap());
    let want_ds = b.download(CudaBackend::<A>::view(&ds)).unwrap()[0];
    // The global form matches the CPU (sanity of the trait wiring).
    let cpu = cpu_run(&global, &image_f, &A::back(&text), true);
    assert_close("clip_loss trait: loss", s, &[want_loss], &[cpu.loss], A::LOSS_RTOL, 1e-6);

    let mut loss_sum = 0.0;
    let mut got_di = vec![0f32; n * dim];
    let mut got_dt = vec![0f32; n * dim];
    let mut ds_sum = b.zeros::<f32>(1).unwrap();
    for r in 0..ranks {
        let rows = r * local * dim..(r + 1) * local * dim;
        let spec = LocalLossSpec { local, global: n, offset: r * local, dim, label_smoothing: 0.1, gather_grad: true };
        let mut term = LocalLoss::<CudaBackend<A>>::new(spec);
        let (il, tl) =
            (CudaBackend::<A>::view(&ib).slice(rows.clone()), CudaBackend::<A>::view(&tb).slice(rows.clone()));
        loss_sum += term
            .forward(&b, il, tl, CudaBackend::<A>::view(&ib), CudaBackend::<A>::view(&tb), CudaBackend::<A>::view(&lb))
            .unwrap();
        let (mut dil, mut dtl) = (b.zeros::<A>(local * dim).unwrap(), b.zeros::<A>(local * dim).unwrap());
        let (mut dia, mut dta) = (b.zeros::<A>(n * dim).unwrap(), b.zeros::<A>(n * dim).unwrap());
        term.backward(
            &b,
            il,
            tl,
            CudaBackend::<A>::view(&ib),
            CudaBackend::<A>::view(&tb),
            CudaBackend::<A>::view(&lb),
            1.0,
            CudaBackend::<A>::view_mut(&mut dil),
            CudaBackend::<A>::view_mut(&mut dtl),
            Some(GatheredGrads {
                d_image_all: CudaBackend::<A>::view_mut(&mut dia),
                d_text_all: CudaBackend::<A>::view_mut(&mut dta),
            }),
            CudaBackend::<A>::view_mut(&mut ds_sum),
        )
        .unwrap();
        let (dil, dtl) = (
            A::back(&b.download(CudaBackend::<A>::view(&dil)).unwrap()),
            A::back(&b.download(CudaBackend::<A>::view(&dtl)).unwrap()),
        );
        let (dia, dta) = (
            A::back(&b.download(CudaBackend::<A>::view(&dia)).unwrap()),
            A::back(&b.download(CudaBackend::<A>::view(&dta)).unwrap()),
        );
        for (k, v) in rows.clone().zip(&dil) {
            got_di[k] += v;
        }
        for (k, v) in rows.clone().zip(&dtl) {
            got_dt[k] += v;
        }
        for k in 0..n * dim {
            got_di[k] += dia[k];
            got_dt[k] += dta[k];
        }
    }
    let rf = ranks as f32;
    let label = format!("clip_loss local over ranks {}", <A as TestAct>::NAME);
    assert_close(&format!("{label}: loss"), s, &[loss_sum as f32 / rf], &[want_loss], A::LOSS_RTOL, 1e-6);
    let scale = |v: Vec<f32>| v.into_iter().map(|x| x / rf).collect::<Vec<_>>();
    assert_close(&format!("{label}: d image"), s, &scale(got_di), &want_di, A::GRAD_RTOL, GRAD_ATOL);
    assert_close(&format!("{label}: d text"), s, &scale(got_dt), &want_dt, A::GRAD_RTOL, GRAD_ATOL);
    let ds_local = b.download(CudaBackend::<A>::view(&ds_sum)).unwrap()[0] / rf;
    assert_close(&format!("{label}: dt"), s, &[ds_local], &[want_ds], A::DT_RTOL, A::DT_ATOL);
}

#[test]
fn gpu_clip_loss_fused_local_loss_over_ranks_f32() {
    local_loss_case::<f32>(9700);
}

#[test]
fn gpu_clip_loss_fused_local_loss_over_ranks_bf16() {
    local_loss_case::<bf16>(9800);
}
