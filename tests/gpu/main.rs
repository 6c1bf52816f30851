//! GPU tests: every CUDA kernel against the CPU reference, plus detection and `cliprt doctor` on whatever machine this
//! runs on. All GPU tests live in this ONE integration-test binary (tests/gpu/: this file and one module per kernel
//! family; it is what travels to a lent GPU machine).
//!
//! Without a GPU each kernel test prints `skipped: no CUDA device: <reason>` and passes without testing anything, so
//! `cargo test --release` is the same command everywhere. Filter with `gpu_cast`, `gpu_elementwise`,
//! `gpu_activation`, `gpu_detection`, `gpu_doctor`.
//!
//! Inputs are fresh seeded random draws (the seed is in every failure message; `CLIPRT_TEST_SEED` replays another),
//! outputs are filled with NaN before each launch, and sizes include 1, odd sizes and 2^20 + 3 (which exercises the
//! packed path, its scalar tail and a grid smaller than the work).

mod attention;
mod attention_naive;
mod backend;
mod bias;
mod clip_loss;
mod clip_loss_naive;
mod cross_entropy;
mod dnn;
mod embedding;
mod gemm;
mod layout;
mod nn_queue;
mod nn_search;
mod norm;
mod objectives;
mod optim;
mod pool;
mod softmax;
mod towers;

use std::sync::OnceLock;

use cliprt::backend::cpu::{activation as cpu_activation, elementwise as cpu};
use cliprt::backend::cuda::DeviceViews;
use cliprt::backend::cuda::{self, CudaDevice};
use cliprt::backend::Activation;
use cliprt::testing::{assert_close, normal, rng, seed};
use cliprt::Error;
use half::{bf16, f16};

/// fp32 kernels compute what the CPU computes up to a few ulp (erff/expf implementations differ slightly).
const F32_RTOL: f64 = 1e-5;
const F32_ATOL: f64 = 1e-6;
/// bf16 outputs are rounded once from fp32 math: relative error ≤ 2⁻⁹ ≈ 2e-3 per element.
const BF16_RTOL: f64 = 1e-2;
const BF16_ATOL: f64 = 1e-5;

const SIZES: [usize; 4] = [1, 7, 1000, (1 << 20) + 3];
const KINDS: [Activation; 3] = [Activation::Relu, Activation::Gelu, Activation::QuickGelu];

/// The device, or None after printing the one skip line. A machine that has a GPU but cannot load the kernels fails
/// the test: that is a real problem, not a reason to skip.
fn gpu() -> Option<&'static CudaDevice> {
    static DEVICE: OnceLock<Result<CudaDevice, String>> = OnceLock::new();
    let device = DEVICE.get_or_init(|| match cuda::context() {
        Err(Error::CudaUnavailable(reason)) => Err(reason),
        Err(e) => Err(e.to_string()),
        Ok(_) => {
            Ok(CudaDevice::new().unwrap_or_else(|e| panic!("a CUDA device exists but CudaDevice::new failed: {e}")))
        }
    });
    match device {
        Ok(dev) => Some(dev),
        Err(reason) => {
            println!("skipped: no CUDA device: {reason}");
            None
        }
    }
}

fn to_f32<T: Copy + Into<f32>>(x: &[T]) -> Vec<f32> {
    x.iter().map(|&v| v.into()).collect()
}

fn bf16_of(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// Random values over many magnitudes plus the cases rounding gets wrong: signed zeros, subnormals (of f32, bf16 and
/// f16), ties at the bf16 and f16 rounding points, the largest finite values and overflow, infinities.
fn cast_inputs(seed: u64, n: usize) -> Vec<f32> {
    let mut r = rng(seed);
    let mut x: Vec<f32> = normal::<f32>(&mut r, n, 1.0);
    let scales: Vec<f32> = normal::<f32>(&mut r, n, 6.0);
    for (v, s) in x.iter_mut().zip(scales) {
        *v *= 10f32.powi(s as i32);
    }
    let specials = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::MIN_POSITIVE,
        1e-40,
        -1e-40,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0 + 2f32.powi(-8),       // bf16 tie: rounds to even (1.0)
        1.0 + 3.0 * 2f32.powi(-8), // bf16 tie: rounds up
        1.0 + 2f32.powi(-11),      // f16 tie: rounds to even (1.0)
        1.0 + 3.0 * 2f32.powi(-11),
        65504.0,  // largest f16
        65520.0,  // rounds to f16 inf
        6.0e-8,   // f16 subnormal
        2.9e-8,   // rounds to f16 zero
        3.4e38,   // rounds to bf16 inf or max
        -2.5e-41, // bf16 subnormal
    ];
    for (v, s) in x.iter_mut().zip(specials) {
        *v = s;
    }
    x
}

fn assert_bits_eq(label: &str, seed: u64, got: &[u16], want: &[u16], input: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label} (seed {seed}): lengths differ");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!(
            "{label} (seed {seed}): element {i} (input {:e} = {:#010x}): got {:#06x}, want {:#06x}",
            input[i],
            input[i].to_bits(),
            got[i],
            want[i]
        );
    }
}

// ------------------------------------------------------------------------------------------------ casts -----------

#[test]
fn gpu_cast_f32_to_bf16_matches_half() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(100 + k as u64);
        let x = cast_inputs(s, n);
        let mut want = vec![bf16::ZERO; n];
        cpu::cast_to_bf16(&x, &mut want).unwrap();
        let xd = dev.upload(&x).unwrap();
        let mut yd = dev.upload(&vec![bf16::NAN; n]).unwrap();
        dev.cast_f32_to_bf16(&xd.dref(), &mut yd.dmut()).unwrap();
        let got = dev.download(&yd).unwrap();
        let bits = |v: &[bf16]| v.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
        assert_bits_eq(&format!("cast_f32_to_bf16 n={n}"), s, &bits(&got), &bits(&want), &x);
    }
}

#[test]
fn gpu_cast_bf16_to_f32_is_exact() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(110 + k as u64);
        let x = bf16_of(&cast_inputs(s, n));
        let mut want = vec![0f32; n];
        cpu::cast_from_bf16(&x, &mut want).unwrap();
        let xd = dev.upload(&x).unwrap();
        let mut yd = dev.upload(&vec![f32::NAN; n]).unwrap();
        dev.cast_bf16_to_f32(&xd.dref(), &mut yd.dmut()).unwrap();
        let got = dev.download(&yd).unwrap();
        let i = got.iter().zip(&want).position(|(g, w)| g.to_bits() != w.to_bits());
        assert!(i.is_none(), "cast_bf16_to_f32 n={n} (seed {s}): element {i:?} differs");
    }
}

#[test]
fn gpu_cast_f32_to_f16_matches_half() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(120 + k as u64);
        let x = cast_inputs(s, n);
        let mut want = vec![f16::ZERO; n];
        cpu::cast_to_f16(&x, &mut want).unwrap();
        let xd = dev.upload(&x).unwrap();
        let mut yd = dev.upload(&vec![f16::NAN; n]).unwrap();
        dev.cast_f32_to_f16(&xd.dref(), &mut yd.dmut()).unwrap();
        let got = dev.download(&yd).unwrap();
        let bits = |v: &[f16]| v.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
        assert_bits_eq(&format!("cast_f32_to_f16 n={n}"), s, &bits(&got), &bits(&want), &x);
    }
}

#[test]
fn gpu_cast_f16_to_f32_is_exact() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(130 + k as u64);
        let x: Vec<f16> = cast_inputs(s, n).iter().map(|&v| f16::from_f32(v)).collect();
        let mut want = vec![0f32; n];
        cpu::cast_from_f16(&x, &mut want).unwrap();
        let xd = dev.upload(&x).unwrap();
        let mut yd = dev.upload(&vec![f32::NAN; n]).unwrap();
        dev.cast_f16_to_f32(&xd.dref(), &mut yd.dmut()).unwrap();
        let got = dev.download(&yd).unwrap();
        let i = got.iter().zip(&want).position(|(g, w)| g.to_bits() != w.to_bits());
        assert!(i.is_none(), "cast_f16_to_f32 n={n} (seed {s}): element {i:?} differs");
    }
}

// ------------------------------------------------------------------------------------------------ add/axpy/scale --

#[test]
fn gpu_elementwise_add_f32() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(200 + k as u64);
        let mut r = rng(s);
        let (a, b) = (normal::<f32>(&mut r, n, 1.0), normal::<f32>(&mut r, n, 1.0));
        let mut want = vec![0f32; n];
        cpu::add(&a, &b, &mut want).unwrap();
        let (ad, bd) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
        let mut od = dev.upload(&vec![f32::NAN; n]).unwrap();
        dev.add(&ad.dref(), &bd.dref(), &mut od.dmut()).unwrap();
        assert_close(&format!("add_f32 n={n}"), s, &dev.download(&od).unwrap(), &want, F32_RTOL, F32_ATOL);
    }
}

#[test]
fn gpu_elementwise_add_bf16() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(210 + k as u64);
        let mut r = rng(s);
        let (a, b) = (bf16_of(&normal::<f32>(&mut r, n, 1.0)), bf16_of(&normal::<f32>(&mut r, n, 1.0)));
        let mut want = vec![0f32; n];
        cpu::add(&to_f32(&a), &to_f32(&b), &mut want).unwrap();
        let (ad, bd) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
        let mut od = dev.upload(&vec![bf16::NAN; n]).unwrap();
        dev.add(&ad.dref(), &bd.dref(), &mut od.dmut()).unwrap();
        let got = to_f32(&dev.download(&od).unwrap());
        assert_close(&format!("add_bf16 n={n}"), s, &got, &want, BF16_RTOL, BF16_ATOL);
    }
}

#[test]
fn gpu_elementwise_axpy_f32() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(220 + k as u64);
        let mut r = rng(s);
        let (x, y) = (normal::<f32>(&mut r, n, 1.0), normal::<f32>(&mut r, n, 1.0));
        let alpha = -0.37;
        let mut want = y.clone();
        cpu::axpy(alpha, &x, &mut want).unwrap();
        let xd = dev.upload(&x).unwrap();
        let mut yd = dev.upload(&y).unwrap();
        dev.axpy(alpha, &xd.dref(), &mut yd.dmut()).unwrap();
        assert_close(&format!("axpy_f32 n={n}"), s, &dev.download(&yd).unwrap(), &want, F32_RTOL, F32_ATOL);
    }
}

#[test]
fn gpu_elementwise_axpy_bf16() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(230 + k as u64);
        let mut r = rng(s);
        let (x, y) = (bf16_of(&normal::<f32>(&mut r, n, 1.0)), bf16_of(&normal::<f32>(&mut r, n, 1.0)));
        let alpha = 1.7;
        let mut want = to_f32(&y);
        cpu::axpy(alpha, &to_f32(&x), &mut want).unwrap();
        let xd = dev.upload(&x).unwrap();
        let mut yd = dev.upload(&y).unwrap();
        dev.axpy(alpha, &xd.dref(), &mut yd.dmut()).unwrap();
        let got = to_f32(&dev.download(&yd).unwrap());
        assert_close(&format!("axpy_bf16 n={n}"), s, &got, &want, BF16_RTOL, BF16_ATOL);
    }
}

#[test]
fn gpu_elementwise_scale_f32() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(240 + k as u64);
        let y = normal::<f32>(&mut rng(s), n, 1.0);
        let alpha = 0.123;
        let mut want = y.clone();
        cpu::scale(alpha, &mut want).unwrap();
        let mut yd = dev.upload(&y).unwrap();
        dev.scale(alpha, &mut yd.dmut()).unwrap();
        assert_close(&format!("scale_f32 n={n}"), s, &dev.download(&yd).unwrap(), &want, F32_RTOL, F32_ATOL);
    }
}

#[test]
fn gpu_elementwise_scale_bf16() {
    let Some(dev) = gpu() else { return };
    for (k, &n) in SIZES.iter().enumerate() {
        let s = seed(250 + k as u64);
        let y = bf16_of(&normal::<f32>(&mut rng(s), n, 1.0));
        let alpha = -3.5;
        let mut want = to_f32(&y);
        cpu::scale(alpha, &mut want).unwrap();
        let mut yd = dev.upload(&y).unwrap();
        dev.scale(alpha, &mut yd.dmut()).unwrap();
        let got = to_f32(&dev.download(&yd).unwrap());
        assert_close(&format!("scale_bf16 n={n}"), s, &got, &want, BF16_RTOL, BF16_ATOL);
    }
}

/// Views starting one element into a buffer are not 16-byte aligned: the kernels must take their scalar path, and
/// must not touch the elements outside the view.
#[test]
fn gpu_elementwise_unaligned_views() {
    let Some(dev) = gpu() else { return };
    let s = seed(260);
    let n = 1003;
    let mut r = rng(s);
    let (a, b) = (normal::<f32>(&mut r, n + 1, 1.0), normal::<f32>(&mut r, n + 1, 1.0));
    let mut want = vec![0f32; n];
    cpu::add(&a[1..], &b[1..], &mut want).unwrap();
    let (ad, bd) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
    let mut od = dev.upload(&vec![f32::NAN; n + 2]).unwrap();
    dev.add(&ad.dslice(1..), &bd.dslice(1..), &mut od.dslice_mut(1..n + 1)).unwrap();
    let got = dev.download(&od).unwrap();
    assert!(got[0].is_nan() && got[n + 1].is_nan(), "add_f32 (seed {s}): wrote outside its view");
    assert_close("add_f32 unaligned", s, &got[1..n + 1], &want, F32_RTOL, F32_ATOL);

    let x = bf16_of(&normal::<f32>(&mut r, n + 1, 1.0));
    let mut want = vec![0f32; n];
    cpu_activation::forward(Activation::Gelu, &to_f32(&x[1..]), &mut want).unwrap();
    let xd = dev.upload(&x).unwrap();
    let mut yd = dev.upload(&vec![bf16::NAN; n + 2]).unwrap();
    dev.activation_forward(Activation::Gelu, &xd.dslice(1..), &mut yd.dslice_mut(1..n + 1)).unwrap();
    let got = to_f32(&dev.download(&yd).unwrap());
    assert!(got[0].is_nan() && got[n + 1].is_nan(), "gelu_forward_bf16 (seed {s}): wrote outside its view");
    assert_close("gelu_forward_bf16 unaligned", s, &got[1..n + 1], &want, BF16_RTOL, BF16_ATOL);
}

#[test]
fn gpu_elementwise_length_mismatch_is_a_shape_error() {
    let Some(dev) = gpu() else { return };
    let a = dev.upload(&[1f32, 2.0, 3.0]).unwrap();
    let b = dev.upload(&[1f32, 2.0]).unwrap();
    let mut out = dev.zeros::<f32>(3).unwrap();
    let err = dev.add(&a.dref(), &b.dref(), &mut out.dmut()).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "b", got: 2, want: 3, .. }), "{err}");
    let mut y = dev.zeros::<bf16>(2).unwrap();
    let x = dev.upload(&[1f32, 2.0, 3.0]).unwrap();
    let err = dev.cast_f32_to_bf16(&x.dref(), &mut y.dmut()).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "y", got: 2, want: 3, .. }), "{err}");
}

// ------------------------------------------------------------------------------------------------ activations -----

#[test]
fn gpu_activation_forward_f32() {
    let Some(dev) = gpu() else { return };
    for kind in KINDS {
        for (k, &n) in SIZES.iter().enumerate() {
            let s = seed(300 + k as u64);
            let x = normal::<f32>(&mut rng(s), n, 2.0);
            let mut want = vec![0f32; n];
            cpu_activation::forward(kind, &x, &mut want).unwrap();
            let xd = dev.upload(&x).unwrap();
            let mut yd = dev.upload(&vec![f32::NAN; n]).unwrap();
            dev.activation_forward(kind, &xd.dref(), &mut yd.dmut()).unwrap();
            let label = format!("{kind:?} forward f32 n={n}");
            assert_close(&label, s, &dev.download(&yd).unwrap(), &want, F32_RTOL, F32_ATOL);
        }
    }
}

#[test]
fn gpu_activation_forward_bf16() {
    let Some(dev) = gpu() else { return };
    for kind in KINDS {
        for (k, &n) in SIZES.iter().enumerate() {
            let s = seed(310 + k as u64);
            let x = bf16_of(&normal::<f32>(&mut rng(s), n, 2.0));
            let mut want = vec![0f32; n];
            cpu_activation::forward(kind, &to_f32(&x), &mut want).unwrap();
            let xd = dev.upload(&x).unwrap();
            let mut yd = dev.upload(&vec![bf16::NAN; n]).unwrap();
            dev.activation_forward(kind, &xd.dref(), &mut yd.dmut()).unwrap();
            let got = to_f32(&dev.download(&yd).unwrap());
            assert_close(&format!("{kind:?} forward bf16 n={n}"), s, &got, &want, BF16_RTOL, BF16_ATOL);
        }
    }
}

#[test]
fn gpu_activation_backward_f32() {
    let Some(dev) = gpu() else { return };
    for kind in KINDS {
        for (k, &n) in SIZES.iter().enumerate() {
            let s = seed(320 + k as u64);
            let mut r = rng(s);
            let (x, dy) = (normal::<f32>(&mut r, n, 2.0), normal::<f32>(&mut r, n, 1.0));
            let mut want = vec![0f32; n];
            cpu_activation::backward(kind, &x, &dy, &mut want).unwrap();
            let (xd, dyd) = (dev.upload(&x).unwrap(), dev.upload(&dy).unwrap());
            let mut dxd = dev.upload(&vec![f32::NAN; n]).unwrap();
            dev.activation_backward(kind, &xd.dref(), &dyd.dref(), &mut dxd.dmut()).unwrap();
            let label = format!("{kind:?} backward f32 n={n}");
            assert_close(&label, s, &dev.download(&dxd).unwrap(), &want, F32_RTOL, F32_ATOL);
        }
    }
}

#[test]
fn gpu_activation_backward_bf16() {
    let Some(dev) = gpu() else { return };
    for kind in KINDS {
        for (k, &n) in SIZES.iter().enumerate() {
            let s = seed(330 + k as u64);
            let mut r = rng(s);
            let (x, dy) = (bf16_of(&normal::<f32>(&mut r, n, 2.0)), bf16_of(&normal::<f32>(&mut r, n, 1.0)));
            let mut want = vec![0f32; n];
            cpu_activation::backward(kind, &to_f32(&x), &to_f32(&dy), &mut want).unwrap();
            let (xd, dyd) = (dev.upload(&x).unwrap(), dev.upload(&dy).unwrap());
            let mut dxd = dev.upload(&vec![bf16::NAN; n]).unwrap();
            dev.activation_backward(kind, &xd.dref(), &dyd.dref(), &mut dxd.dmut()).unwrap();
            let got = to_f32(&dev.download(&dxd).unwrap());
            assert_close(&format!("{kind:?} backward bf16 n={n}"), s, &got, &want, BF16_RTOL, BF16_ATOL);
        }
    }
}

// ------------------------------------------------------------------------------------------------ no GPU needed ---

/// Detection on any machine: a Result, never a panic, the same answer every time; without the driver library, an
/// error that says so.
#[test]
fn gpu_detection_is_an_error_not_a_panic() {
    let first = cuda::context();
    let second = cuda::context();
    assert_eq!(first.is_ok(), second.is_ok(), "detection changed its answer");
    let device = CudaDevice::new();
    match &first {
        Err(Error::CudaUnavailable(msg)) => {
            assert!(!msg.is_empty());
            if !cuda::device::driver_present() {
                assert!(msg.contains("libcuda"), "the error should name the missing driver library: {msg}");
            }
            assert!(matches!(device, Err(Error::CudaUnavailable(_))), "CudaDevice::new without a device: {device:?}");
        }
        Err(other) => panic!("detection failed with a non-CudaUnavailable error: {other}"),
        Ok(_) => {
            let info = cuda::DeviceInfo::current().expect("device info on a machine with a device");
            assert!(!info.name.is_empty() && info.total_memory_bytes > 0 && info.compute_capability.0 >= 1);
            if cliprt::kernels::KERNELS_COMPILED {
                device.expect("CudaDevice::new on a machine with a device and compiled kernels");
            } else {
                let err = device.expect_err("CudaDevice::new without compiled kernels").to_string();
                assert!(err.contains("this build has no compiled kernels"), "{err}");
            }
        }
    }
}

/// `cliprt doctor`'s report describes this machine and this build consistently.
#[test]
fn gpu_doctor_report_matches_this_machine() {
    let report = cliprt::doctor::report();
    let available = cuda::context().is_ok();
    assert_eq!(report.cuda_available, available);
    assert_eq!(report.kernels_compiled, cliprt::kernels::KERNELS_COMPILED);
    assert_eq!(report.nvcc_version.is_some(), report.kernels_compiled);
    // Built here with the project-local nvcc installed (as CI does), the kernels must have been compiled.
    let local_nvcc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cuda/pip/nvidia/cu13/bin/nvcc");
    if local_nvcc.is_file() && option_env!("CLIPRT_NO_NVCC").is_none_or(|v| v.is_empty() || v == "0") {
        assert!(report.kernels_compiled, "nvcc is installed at {} but no kernels were compiled", local_nvcc.display());
        assert!(report.nvcc_version.as_deref().unwrap().contains("release"));
    }
    let names: Vec<&str> = report.modules.iter().map(|m| m.name.as_str()).collect();
    for expected in ["activation", "elementwise"] {
        assert!(names.contains(&expected), "module {expected} missing from {names:?}");
    }
    for m in &report.modules {
        assert_eq!(m.fatbin_bytes > 0, report.kernels_compiled, "module {}", m.name);
        if available {
            assert_eq!(m.loaded, Some(report.kernels_compiled), "module {}: {:?}", m.name, m.error);
        } else {
            assert_eq!(m.loaded, None, "module {}", m.name);
        }
    }
    if available {
        assert!(report.cuda_error.is_none() && report.device.is_some() && report.memory_bytes.unwrap() > 0);
    } else {
        assert!(report.cuda_error.is_some() && report.device.is_none() && report.compute_capability.is_none());
    }
    // Both forms render, and the JSON has the documented keys.
    assert!(report.to_text().contains("kernels"));
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for key in [
        "cuda_available",
        "cuda_error",
        "device",
        "kernels_compiled",
        "nvcc_version",
        "compute_capability",
        "memory_bytes",
        "driver_version",
        "libraries",
        "modules",
    ] {
        assert!(json.get(key).is_some(), "doctor --json lacks `{key}`");
    }
    for lib in ["cublas", "cublaslt", "cudnn"] {
        assert!(json["libraries"][lib].is_boolean(), "libraries.{lib} should be a bool");
    }
}
