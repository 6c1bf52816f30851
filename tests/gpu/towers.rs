//! The towers on CUDA against the CPU reference, and the allocation claim of DESIGN "Memory". Filter with
//! `gpu_towers`.
//!
//! Each tower (ViT, modified ResNet, text Transformer) is declared on `CpuBackend<f32>` and on `CudaBackend<A>` with
//! the same host parameter values (each tensor drawn from its own initialiser, and the constant-initialised ones —
//! LayerNorm/BatchNorm weights and biases, the ResNet's zero-initialised bn3 — moved by noise so that no gradient
//! is trivially zero), run forward on the same images or tokens and backward from the same output gradient. The
//! output and EVERY parameter gradient (and the ResNet's running statistics) are compared tensor by tensor:
//! ‖got − ref‖/max(‖ref‖, floor) where the floor, 1% of the model's gradient RMS times √len, keeps tensors whose
//! gradients are nearly zero from failing on rounding noise.
//! - fp32 (`CudaBackend<f32>`): 1e-4 — cuBLAS, cuDNN and the kernels sum in other orders than the CPU (and cuDNN may
//!   pick Winograd or FFT convolutions); these differences pass through every layer.
//! - bf16 (`CudaBackend<bf16>`): 3e-2 — every activation is rounded to bf16 (2⁻⁹ relative) between layers. The CPU
//!   gets the parameters and the images rounded to bf16 too, so the difference is the GPU's intermediate rounding.
//!
//! The allocation test runs a whole CLIP training step (as `cliprt train` does it) three times on a backend that wraps
//! `CudaBackend<bf16>` and records which trait method made each device allocation; steps 2 and 3 must allocate the
//! same (nothing), and a failure names the primitives that allocated.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::cuda::{CudaAct, CudaBackend, CudaMut, CudaRef, DeviceBuf};
use cliprt::backend::{
    Activation, AdamW, Attention, Backend, BatchNorm, ClipLoss, Conv2d, DecaySegment, Elem, Gemm, Pool2d,
};
use cliprt::model::clip::Clip;
use cliprt::model::config::ModelConfig;
use cliprt::model::resnet::ModifiedResNet;
use cliprt::model::text::TextTransformer;
use cliprt::model::vit::VisionTransformer;
use cliprt::params::{Init, Layout, ParamBuilder, ParamStore};
use cliprt::testing::{normal, rng, seed, uniform};
use cliprt::Result;
use half::{bf16, f16};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::backend::{backend, draw, TestAct};

type Cpu = CpuBackend<f32>;

const F32_RTOL: f64 = 1e-4;
const BF16_RTOL: f64 = 3e-2;

fn rtol<A: TestAct>() -> f64 {
    if A::MODE == 0 {
        F32_RTOL
    } else {
        BF16_RTOL
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tower {
    Vit,
    ResNet,
    Text,
}

/// What one backend computed: the tower's output, every parameter gradient, the non-trainable buffers after the
/// forward, and the layouts to name them.
struct Run {
    layout: Layout,
    buffer_layout: Layout,
    out: Vec<f64>,
    grads: Vec<f64>,
    buffers: Vec<f64>,
}

/// Parameter values for `layout`: each tensor drawn from its initialiser; constants (zeros, ones, …) moved by
/// N(0, `jitter`²).
fn host_params(layout: &Layout, seed: u64, jitter: f64) -> Vec<f64> {
    let mut r = rng(seed);
    let mut values = Vec::with_capacity(layout.len());
    for e in layout.entries() {
        let n = e.id.len;
        match e.init {
            Init::Normal(std) => values.extend(normal::<f64>(&mut r, n, std)),
            Init::Uniform(bound) => values.extend(uniform::<f64>(&mut r, n, -bound, bound)),
            Init::Zeros => values.extend(normal::<f64>(&mut r, n, jitter)),
            Init::Ones => values.extend(normal::<f64>(&mut r, n, jitter).into_iter().map(|v| 1.0 + v)),
            Init::Constant(c) => values.extend(normal::<f64>(&mut r, n, jitter).into_iter().map(|v| c + v)),
        }
    }
    values
}

/// `batch` token rows of `context`: start-of-text, ordinary ids, end-of-text (the largest id, where the tower pools)
/// at a different position in each row, then padding zeros.
fn token_rows(r: &mut ChaCha8Rng, batch: usize, context: usize, vocab: usize) -> Vec<i32> {
    let (sot, eot) = (vocab as i32 - 2, vocab as i32 - 1);
    let mut tokens = vec![0i32; batch * context];
    for (i, row) in tokens.chunks_mut(context).enumerate() {
        let len = 2 + (3 * i + 5) % (context - 1);
        row[0] = sot;
        for t in &mut row[1..len - 1] {
            *t = r.random_range(1..sot);
        }
        row[len - 1] = eot;
    }
    tokens
}

fn to_act<B: Backend>(x: &[f32]) -> Vec<B::Act> {
    x.iter().map(|&v| B::Act::from_real(v as f64)).collect()
}

fn widen<T: Elem>(x: Vec<T>) -> Vec<f64> {
    x.into_iter().map(Elem::to_real).collect()
}

/// Builds `tower` of `cfg` on `b` with the parameter values `values(layout)`, runs it forward on `images` (or
/// `tokens`) and backward from `d_out`.
#[allow(clippy::too_many_arguments)]
fn run_tower<B: Backend>(
    b: &B,
    tower: Tower,
    cfg: &ModelConfig,
    values: &dyn Fn(&Layout) -> Vec<f64>,
    images: &[f32],
    tokens: &[i32],
    batch: usize,
    d_out: &[f32],
) -> Result<Run> {
    let (embed, act) = (cfg.embed_dim, cfg.activation());
    let mut pb = ParamBuilder::new();
    let images = b.upload(&to_act::<B>(images))?;
    let d_out = b.upload(&to_act::<B>(d_out))?;
    let (store, out) = match tower {
        Tower::Vit => {
            let mut t = pb.scope("visual", |pb| VisionTransformer::<B>::new(pb, &cfg.vision_cfg, embed, act))?;
            let mut p = store(b, pb, values)?;
            t.forward(b, &p, B::view(&images), batch)?;
            let out = widen(b.download(t.out()?)?);
            t.backward(b, &mut p, B::view(&images), B::view(&d_out))?;
            (p, out)
        }
        Tower::ResNet => {
            let mut t = pb.scope("visual", |pb| ModifiedResNet::<B>::new(pb, &cfg.vision_cfg, embed))?;
            let mut p = store(b, pb, values)?;
            t.set_training(true);
            t.forward(b, &mut p, B::view(&images), batch)?;
            let out = widen(b.download(t.out()?)?);
            t.backward(b, &mut p, B::view(&images), B::view(&d_out))?;
            (p, out)
        }
        Tower::Text => {
            let mut t = TextTransformer::<B>::new(&mut pb, &cfg.text_cfg, embed, act)?;
            let mut p = store(b, pb, values)?;
            t.forward(b, &p, tokens, batch)?;
            let out = widen(b.download(t.out()?)?);
            t.backward(b, &mut p, B::view(&d_out))?;
            (p, out)
        }
    };
    Ok(Run {
        layout: store.layout().clone(),
        buffer_layout: store.buffer_layout().clone(),
        out,
        grads: store.download_grads(b)?,
        buffers: store.download_buffers(b)?,
    })
}

/// The store of `pb` holding `values(layout)`, gradients zeroed.
fn store<B: Backend>(b: &B, pb: ParamBuilder, values: &dyn Fn(&Layout) -> Vec<f64>) -> Result<ParamStore<B>> {
    let host = values(pb.param_layout());
    let mut p = pb.build(b, &mut rng(0))?;
    p.set_master(b, &host)?;
    p.zero_grads(b)?;
    Ok(p)
}

fn norm(x: impl Iterator<Item = f64>) -> f64 {
    x.map(|v| v * v).sum::<f64>().sqrt()
}

/// Tensor-by-tensor relative comparison (see the module comment); lists every tensor beyond `rtol`.
fn compare_tensors(label: &str, seed: u64, layout: &Layout, got: &[f64], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{label} (seed {seed}): lengths differ");
    let rms = norm(want.iter().copied()) / (want.len().max(1) as f64).sqrt();
    let mut failures = Vec::new();
    let mut worst = (0.0f64, "none".to_string());
    for e in layout.entries() {
        let (g, w) = (&got[e.id.range()], &want[e.id.range()]);
        if let Some(i) = g.iter().position(|v| !v.is_finite()) {
            failures.push(format!("{} {:?}: element {i} is {}", e.name, e.shape, g[i]));
            continue;
        }
        let err = norm(g.iter().zip(w).map(|(a, b)| a - b));
        let refn = norm(w.iter().copied());
        let floor = 1e-2 * rms * (e.id.len as f64).sqrt();
        let rel = if err == 0.0 { 0.0 } else { err / refn.max(floor) };
        if rel > worst.0 {
            worst = (rel, e.name.clone());
        }
        if rel > rtol {
            failures.push(format!("{} {:?}: ‖err‖/‖ref‖ = {rel:.2e} (‖ref‖ = {refn:.3e})", e.name, e.shape));
        }
    }
    assert!(
        failures.is_empty(),
        "{label} (seed {seed}): {} of {} tensors beyond {rtol:e}:\n  {}",
        failures.len(),
        layout.entries().len(),
        failures.join("\n  ")
    );
    if !layout.is_empty() {
        println!("{label}: worst tensor {} at {:.2e} (tolerance {rtol:e})", worst.1, worst.0);
    }
}

fn compare_out(label: &str, seed: u64, got: &[f64], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{label} (seed {seed}): output lengths differ");
    assert!(got.iter().all(|v| v.is_finite()), "{label} (seed {seed}): non-finite output");
    let rel = norm(got.iter().zip(want).map(|(a, b)| a - b)) / norm(want.iter().copied());
    assert!(rel <= rtol, "{label} (seed {seed}): output ‖err‖/‖ref‖ = {rel:.2e} > {rtol:e}");
}

/// `tower` of the built-in `model` at `batch` on the GPU against the CPU.
fn tower_case<A: TestAct, G: Backend<Act = A, Master = f32>>(
    gpu: &G,
    tower: Tower,
    model: &str,
    batch: usize,
    s: u64,
    jitter: f64,
) {
    let cfg = ModelConfig::builtin(model).unwrap();
    let label = format!("{tower:?} tower of {model} batch {batch} {}", A::LABEL);
    let mut r = rng(s);
    let side = cfg.vision_cfg.image_size;
    let images = draw::<A>(&mut r, batch * 3 * side * side, 0.0, 1.0);
    let tokens = token_rows(&mut r, batch, cfg.text_cfg.context_length, cfg.text_cfg.vocab_size);
    let d_out = draw::<A>(&mut r, batch * cfg.embed_dim, 0.0, 1.0);
    let gpu_values = |layout: &Layout| host_params(layout, s, jitter);
    // The CPU computes with the weights the GPU's layers read: the f32 master rounded to the compute dtype.
    let cpu_values = |layout: &Layout| -> Vec<f64> {
        host_params(layout, s, jitter).into_iter().map(|v| A::quantize(v as f32) as f64).collect()
    };
    let got = run_tower(gpu, tower, &cfg, &gpu_values, &images, &tokens, batch, &d_out)
        .unwrap_or_else(|e| panic!("{label} (seed {s}): the CUDA backend failed: {e}"));
    let want = run_tower(&Cpu::new(), tower, &cfg, &cpu_values, &images, &tokens, batch, &d_out)
        .unwrap_or_else(|e| panic!("{label} (seed {s}): the CPU reference failed: {e}"));
    let dead: Vec<&str> = (want.layout.entries().iter())
        .filter(|e| want.grads[e.id.range()].iter().all(|&g| g == 0.0))
        .map(|e| e.name.as_str())
        .collect();
    assert!(dead.is_empty(), "{label}: tensors with an all-zero reference gradient compare nothing: {dead:?}");
    compare_out(&format!("{label}: output"), s, &got.out, &want.out, rtol::<A>());
    compare_tensors(&format!("{label}: gradients"), s, &want.layout, &got.grads, &want.grads, rtol::<A>());
    compare_tensors(&format!("{label}: buffers"), s, &want.buffer_layout, &got.buffers, &want.buffers, rtol::<A>());
}

/// The tiny ViT (`tiny-ViT`: 32×32 images, patch 8, width 128, 4 layers): output and every parameter gradient.
fn vit_tiny_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    tower_case(gpu, Tower::Vit, "tiny-ViT", 3, seed(13_000), 0.3);
}

/// The tiny modified ResNet (`tiny-RN`: 32×32 images, one bottleneck per stage, width 16) in training mode:
/// output, every parameter gradient and the running statistics of every BatchNorm.
fn resnet_tiny_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    tower_case(gpu, Tower::ResNet, "tiny-RN", 6, seed(13_001), 0.3);
}

/// The text tower of `tiny-ViT` (context 16, the full 49408-id vocabulary, width 128, 4 causal layers, EOT pooling):
/// output and every parameter gradient.
fn text_tiny_case<A: TestAct, G: Backend<Act = A, Master = f32>>(gpu: &G) {
    tower_case(gpu, Tower::Text, "tiny-ViT", 5, seed(13_002), 0.3);
}

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

gpu_tests! {
    vit_tiny_case => gpu_towers_vit_tiny_matches_cpu_f32, gpu_towers_vit_tiny_matches_cpu_bf16;
    resnet_tiny_case => gpu_towers_resnet_tiny_matches_cpu_f32, gpu_towers_resnet_tiny_matches_cpu_bf16;
    text_tiny_case => gpu_towers_text_tiny_matches_cpu_f32, gpu_towers_text_tiny_matches_cpu_bf16;
}

/// The full-size ViT-B/32 image tower (88 M parameters), forward and backward at batch 2, fp32 on both.
#[test]
fn gpu_towers_vit_b32_full_size_forward_backward_f32() {
    let Some(gpu) = backend::<f32>() else { return };
    tower_case(&gpu, Tower::Vit, "ViT-B-32", 2, seed(13_010), 0.02);
}

// ------------------------------------------------------------------------------------------------ allocations -----

/// `CudaBackend<A>` with every trait method wrapped: a call during which the backend's allocation counter moved is
/// recorded with the method's name.
struct Counting<A: CudaAct> {
    inner: CudaBackend<A>,
    log: Mutex<Vec<&'static str>>,
}

impl<A: CudaAct> Counting<A> {
    fn new(inner: CudaBackend<A>) -> Self {
        Counting { inner, log: Mutex::new(Vec::new()) }
    }

    fn track<R>(&self, op: &'static str, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let before = self.inner.memory_stats().allocations;
        let result = f();
        let after = self.inner.memory_stats().allocations;
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.extend(std::iter::repeat_n(op, (after - before) as usize));
        result
    }

    /// The methods that allocated since the last call, with counts: "layernorm_backward ×2, zeros ×1".
    fn take_log(&self) -> String {
        let log = std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()));
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for op in log {
            *counts.entry(op).or_default() += 1;
        }
        counts.iter().map(|(op, n)| format!("{op} ×{n}")).collect::<Vec<_>>().join(", ")
    }
}

/// One optimiser step as `cliprt train` takes it (src/train/mod.rs): images written into the buffer of the first
/// step, gradients zeroed, both towers and the loss forward and backward, gradient-norm clipping (the norm is kept
/// tiny so that the scaling runs every step), AdamW with the compute-dtype shadow, the logit-scale clamp.
#[allow(clippy::too_many_arguments)]
fn train_step<B: Backend>(
    b: &B,
    clip: &mut Clip<B>,
    store: &mut ParamStore<B>,
    images: &mut Option<B::Buf<B::Act>>,
    host_images: &[f32],
    tokens: &[i32],
    batch: usize,
    accum: usize,
    step: u64,
) -> Result<f64> {
    let host = to_act::<B>(host_images);
    let images = match images {
        Some(buf) if B::buf_len(buf) == host.len() => {
            b.write(&host, B::view_mut(buf))?;
            buf
        }
        slot => slot.insert(b.upload(&host)?),
    };
    store.zero_grads(b)?;
    let loss = clip.forward_backward(b, store, B::view(images), tokens, batch, accum)?;
    let norm = store.grad_norm(b)?;
    let coef = 1e-3 / (norm + 1e-6);
    if coef < 1.0 {
        store.scale_grads(b, coef)?;
    }
    let hp = AdamW { lr: 1e-4, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.2, step };
    store.adamw_step(b, &hp)?;
    store.clamp_master(b, clip.logit_scale, 0.0, 100f64.ln())?;
    b.synchronize()?;
    Ok(loss)
}

/// DESIGN "Memory": after the first training step a step allocates nothing. Three full CLIP steps of the tiny ViT
/// in bf16, without and with gradient accumulation (two micro-batches); the allocation count after step 3 must equal
/// that after step 2, and a failure names the trait methods that allocated. (Allocations the backend does not count
/// — straight `CudaDevice::upload` calls inside a launcher — are invisible here.)
#[test]
fn gpu_towers_clip_training_step_allocates_nothing_after_the_first() {
    for accum in [1, 2] {
        let Some(inner) = backend::<bf16>() else { return };
        let b = Counting::new(inner);
        let cfg = ModelConfig::builtin("tiny-ViT").unwrap();
        let (mut clip, mut store) = Clip::build(&b, &cfg, 7).unwrap();
        let (batch, side) = (8, cfg.vision_cfg.image_size);
        let s = seed(13_020);
        let mut r = rng(s);
        let mut images = None;
        let mut stats = Vec::new();
        for step in 1..=3u64 {
            let host_images = normal::<f32>(&mut r, batch * 3 * side * side, 1.0);
            let tokens = token_rows(&mut r, batch, cfg.text_cfg.context_length, cfg.text_cfg.vocab_size);
            let loss = train_step(&b, &mut clip, &mut store, &mut images, &host_images, &tokens, batch, accum, step)
                .unwrap_or_else(|e| panic!("accum {accum}: training step {step} failed: {e}"));
            assert!(loss.is_finite(), "accum {accum}: step {step} loss {loss}");
            stats.push((b.inner.memory_stats(), b.take_log()));
        }
        let [(first, first_log), (second, second_log), (third, third_log)] = &stats[..] else { unreachable!() };
        println!(
            "accum {accum}: allocations after steps 1-3: {} {} {}; live {} B, peak {} B; step 1 allocated in: \
             {first_log}",
            first.allocations, second.allocations, third.allocations, third.live_bytes, third.peak_bytes
        );
        assert_eq!(
            third.allocations,
            second.allocations,
            "accum {accum}: step 3 allocated {} times on the device, in: {third_log} (step 2: {second_log})",
            third.allocations - second.allocations
        );
        assert_eq!(third.live_bytes, second.live_bytes, "accum {accum}: live device bytes changed in step 3");
    }
}

impl<A: CudaAct> Backend for Counting<A> {
    type Act = A;
    type Master = f32;
    type Buf<T: Elem> = DeviceBuf<T>;
    type Ref<'a, T: Elem> = CudaRef<'a, T>;
    type Mut<'a, T: Elem> = CudaMut<'a, T>;

    fn name(&self) -> String {
        <CudaBackend<A> as Backend>::name(&self.inner)
    }
    fn zeros<T: Elem>(&self, len: usize) -> Result<DeviceBuf<T>> {
        self.track("zeros", || <CudaBackend<A> as Backend>::zeros(&self.inner, len))
    }
    fn upload<T: Elem>(&self, host: &[T]) -> Result<DeviceBuf<T>> {
        self.track("upload", || <CudaBackend<A> as Backend>::upload(&self.inner, host))
    }
    fn download<T: Elem>(&self, x: CudaRef<'_, T>) -> Result<Vec<T>> {
        self.track("download", || <CudaBackend<A> as Backend>::download(&self.inner, x))
    }
    fn write<T: Elem>(&self, host: &[T], dst: CudaMut<'_, T>) -> Result<()> {
        self.track("write", || <CudaBackend<A> as Backend>::write(&self.inner, host, dst))
    }
    fn fill<T: Elem>(&self, dst: CudaMut<'_, T>, value: T) -> Result<()> {
        self.track("fill", || <CudaBackend<A> as Backend>::fill(&self.inner, dst, value))
    }
    fn copy<T: Elem>(&self, src: CudaRef<'_, T>, dst: CudaMut<'_, T>) -> Result<()> {
        self.track("copy", || <CudaBackend<A> as Backend>::copy(&self.inner, src, dst))
    }
    fn synchronize(&self) -> Result<()> {
        self.track("synchronize", || <CudaBackend<A> as Backend>::synchronize(&self.inner))
    }
    fn view<T: Elem>(buf: &DeviceBuf<T>) -> CudaRef<'_, T> {
        <CudaBackend<A> as Backend>::view(buf)
    }
    fn view_mut<T: Elem>(buf: &mut DeviceBuf<T>) -> CudaMut<'_, T> {
        <CudaBackend<A> as Backend>::view_mut(buf)
    }
    fn as_ref<'a, T: Elem>(x: &'a CudaMut<'_, T>) -> CudaRef<'a, T> {
        <CudaBackend<A> as Backend>::as_ref(x)
    }
    fn reborrow<'a, T: Elem>(x: &'a mut CudaMut<'_, T>) -> CudaMut<'a, T> {
        <CudaBackend<A> as Backend>::reborrow(x)
    }
    fn slice<'a, T>(x: CudaRef<'a, T>, range: Range<usize>) -> CudaRef<'a, T>
    where
        T: Elem + 'a,
    {
        <CudaBackend<A> as Backend>::slice(x, range)
    }
    fn slice_mut<'a, T>(x: CudaMut<'a, T>, range: Range<usize>) -> CudaMut<'a, T>
    where
        T: Elem + 'a,
    {
        <CudaBackend<A> as Backend>::slice_mut(x, range)
    }
    fn split_at_mut<'a, T>(x: CudaMut<'a, T>, mid: usize) -> (CudaMut<'a, T>, CudaMut<'a, T>)
    where
        T: Elem + 'a,
    {
        <CudaBackend<A> as Backend>::split_at_mut(x, mid)
    }
    fn len<T: Elem>(x: CudaRef<'_, T>) -> usize {
        <CudaBackend<A> as Backend>::len(x)
    }
    fn len_mut<T: Elem>(x: &CudaMut<'_, T>) -> usize {
        <CudaBackend<A> as Backend>::len_mut(x)
    }
    fn master_to_act(&self, x: CudaRef<'_, f32>, y: CudaMut<'_, A>) -> Result<()> {
        self.track("master_to_act", || <CudaBackend<A> as Backend>::master_to_act(&self.inner, x, y))
    }
    fn act_to_master(&self, x: CudaRef<'_, A>, y: CudaMut<'_, f32>) -> Result<()> {
        self.track("act_to_master", || <CudaBackend<A> as Backend>::act_to_master(&self.inner, x, y))
    }
    fn cast_to_bf16(&self, x: CudaRef<'_, f32>, y: CudaMut<'_, bf16>) -> Result<()> {
        self.track("cast_to_bf16", || <CudaBackend<A> as Backend>::cast_to_bf16(&self.inner, x, y))
    }
    fn cast_from_bf16(&self, x: CudaRef<'_, bf16>, y: CudaMut<'_, f32>) -> Result<()> {
        self.track("cast_from_bf16", || <CudaBackend<A> as Backend>::cast_from_bf16(&self.inner, x, y))
    }
    fn cast_to_f16(&self, x: CudaRef<'_, f32>, y: CudaMut<'_, f16>) -> Result<()> {
        self.track("cast_to_f16", || <CudaBackend<A> as Backend>::cast_to_f16(&self.inner, x, y))
    }
    fn cast_from_f16(&self, x: CudaRef<'_, f16>, y: CudaMut<'_, f32>) -> Result<()> {
        self.track("cast_from_f16", || <CudaBackend<A> as Backend>::cast_from_f16(&self.inner, x, y))
    }
    fn gemm(&self, spec: &Gemm, a: CudaRef<'_, A>, b: CudaRef<'_, A>, c: CudaMut<'_, A>) -> Result<()> {
        self.track("gemm", || <CudaBackend<A> as Backend>::gemm(&self.inner, spec, a, b, c))
    }
    fn gemm_bias(
        &self,
        spec: &Gemm,
        a: CudaRef<'_, A>,
        b: CudaRef<'_, A>,
        bias: CudaRef<'_, A>,
        c: CudaMut<'_, A>,
    ) -> Result<()> {
        self.track("gemm_bias", || <CudaBackend<A> as Backend>::gemm_bias(&self.inner, spec, a, b, bias, c))
    }
    fn gemm_to_master(&self, spec: &Gemm, a: CudaRef<'_, A>, b: CudaRef<'_, A>, c: CudaMut<'_, f32>) -> Result<()> {
        self.track("gemm_to_master", || <CudaBackend<A> as Backend>::gemm_to_master(&self.inner, spec, a, b, c))
    }
    fn add_row_vector(&self, y: CudaMut<'_, A>, v: CudaRef<'_, A>, rows: usize, cols: usize) -> Result<()> {
        self.track("add_row_vector", || <CudaBackend<A> as Backend>::add_row_vector(&self.inner, y, v, rows, cols))
    }
    fn sum_rows(
        &self,
        x: CudaRef<'_, A>,
        out: CudaMut<'_, f32>,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.track("sum_rows", || <CudaBackend<A> as Backend>::sum_rows(&self.inner, x, out, rows, cols, accumulate))
    }
    fn add(&self, a: CudaRef<'_, A>, b: CudaRef<'_, A>, out: CudaMut<'_, A>) -> Result<()> {
        self.track("add", || <CudaBackend<A> as Backend>::add(&self.inner, a, b, out))
    }
    fn axpy(&self, alpha: f64, x: CudaRef<'_, A>, y: CudaMut<'_, A>) -> Result<()> {
        self.track("axpy", || <CudaBackend<A> as Backend>::axpy(&self.inner, alpha, x, y))
    }
    fn scale(&self, alpha: f64, y: CudaMut<'_, A>) -> Result<()> {
        self.track("scale", || <CudaBackend<A> as Backend>::scale(&self.inner, alpha, y))
    }
    fn scale_master(&self, alpha: f64, y: CudaMut<'_, f32>) -> Result<()> {
        self.track("scale_master", || <CudaBackend<A> as Backend>::scale_master(&self.inner, alpha, y))
    }
    fn activation_forward(&self, kind: Activation, x: CudaRef<'_, A>, y: CudaMut<'_, A>) -> Result<()> {
        self.track("activation_forward", || <CudaBackend<A> as Backend>::activation_forward(&self.inner, kind, x, y))
    }
    fn activation_backward(
        &self,
        kind: Activation,
        x: CudaRef<'_, A>,
        dy: CudaRef<'_, A>,
        dx: CudaMut<'_, A>,
    ) -> Result<()> {
        self.track("activation_backward", || {
            <CudaBackend<A> as Backend>::activation_backward(&self.inner, kind, x, dy, dx)
        })
    }
    fn transpose(&self, x: CudaRef<'_, A>, y: CudaMut<'_, A>, batch: usize, rows: usize, cols: usize) -> Result<()> {
        self.track("transpose", || <CudaBackend<A> as Backend>::transpose(&self.inner, x, y, batch, rows, cols))
    }
    fn copy_rows(
        &self,
        src: CudaRef<'_, A>,
        src_stride: usize,
        dst: CudaMut<'_, A>,
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.track("copy_rows", || {
            <CudaBackend<A> as Backend>::copy_rows(&self.inner, src, src_stride, dst, dst_stride, rows, cols)
        })
    }
    fn gather_tokens(
        &self,
        x: CudaRef<'_, A>,
        index: CudaRef<'_, i32>,
        y: CudaMut<'_, A>,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        self.track("gather_tokens", || {
            <CudaBackend<A> as Backend>::gather_tokens(&self.inner, x, index, y, batch, seq, dim)
        })
    }
    fn gather_tokens_backward(
        &self,
        dy: CudaRef<'_, A>,
        index: CudaRef<'_, i32>,
        dx: CudaMut<'_, A>,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        self.track("gather_tokens_backward", || {
            <CudaBackend<A> as Backend>::gather_tokens_backward(&self.inner, dy, index, dx, batch, seq, dim)
        })
    }
    fn embedding_forward(
        &self,
        ids: CudaRef<'_, i32>,
        table: CudaRef<'_, A>,
        out: CudaMut<'_, A>,
        vocab: usize,
        dim: usize,
    ) -> Result<()> {
        self.track("embedding_forward", || {
            <CudaBackend<A> as Backend>::embedding_forward(&self.inner, ids, table, out, vocab, dim)
        })
    }
    fn embedding_backward(
        &self,
        ids: CudaRef<'_, i32>,
        dout: CudaRef<'_, A>,
        dtable: CudaMut<'_, f32>,
        vocab: usize,
        dim: usize,
    ) -> Result<()> {
        self.track("embedding_backward", || {
            <CudaBackend<A> as Backend>::embedding_backward(&self.inner, ids, dout, dtable, vocab, dim)
        })
    }
    fn layernorm_forward(
        &self,
        x: CudaRef<'_, A>,
        gamma: CudaRef<'_, A>,
        beta: CudaRef<'_, A>,
        y: CudaMut<'_, A>,
        mean: CudaMut<'_, f32>,
        rstd: CudaMut<'_, f32>,
        rows: usize,
        cols: usize,
        eps: f64,
    ) -> Result<()> {
        self.track("layernorm_forward", || {
            <CudaBackend<A> as Backend>::layernorm_forward(&self.inner, x, gamma, beta, y, mean, rstd, rows, cols, eps)
        })
    }
    fn layernorm_backward(
        &self,
        dy: CudaRef<'_, A>,
        x: CudaRef<'_, A>,
        gamma: CudaRef<'_, A>,
        mean: CudaRef<'_, f32>,
        rstd: CudaRef<'_, f32>,
        dx: CudaMut<'_, A>,
        dgamma: CudaMut<'_, f32>,
        dbeta: CudaMut<'_, f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.track("layernorm_backward", || {
            <CudaBackend<A> as Backend>::layernorm_backward(
                &self.inner,
                dy,
                x,
                gamma,
                mean,
                rstd,
                dx,
                dgamma,
                dbeta,
                rows,
                cols,
            )
        })
    }
    fn batchnorm_forward_train(
        &self,
        spec: &BatchNorm,
        x: CudaRef<'_, A>,
        gamma: Option<CudaRef<'_, A>>,
        beta: Option<CudaRef<'_, A>>,
        y: CudaMut<'_, A>,
        save_mean: CudaMut<'_, f32>,
        save_rstd: CudaMut<'_, f32>,
        running_mean: CudaMut<'_, f32>,
        running_var: CudaMut<'_, f32>,
    ) -> Result<()> {
        self.track("batchnorm_forward_train", || {
            <CudaBackend<A> as Backend>::batchnorm_forward_train(
                &self.inner,
                spec,
                x,
                gamma,
                beta,
                y,
                save_mean,
                save_rstd,
                running_mean,
                running_var,
            )
        })
    }
    fn batchnorm_forward_eval(
        &self,
        spec: &BatchNorm,
        x: CudaRef<'_, A>,
        gamma: Option<CudaRef<'_, A>>,
        beta: Option<CudaRef<'_, A>>,
        running_mean: CudaRef<'_, f32>,
        running_var: CudaRef<'_, f32>,
        y: CudaMut<'_, A>,
    ) -> Result<()> {
        self.track("batchnorm_forward_eval", || {
            <CudaBackend<A> as Backend>::batchnorm_forward_eval(
                &self.inner,
                spec,
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                y,
            )
        })
    }
    fn batchnorm_backward(
        &self,
        spec: &BatchNorm,
        dy: CudaRef<'_, A>,
        x: CudaRef<'_, A>,
        gamma: Option<CudaRef<'_, A>>,
        save_mean: CudaRef<'_, f32>,
        save_rstd: CudaRef<'_, f32>,
        dx: CudaMut<'_, A>,
        dgamma: Option<CudaMut<'_, f32>>,
        dbeta: Option<CudaMut<'_, f32>>,
    ) -> Result<()> {
        self.track("batchnorm_backward", || {
            <CudaBackend<A> as Backend>::batchnorm_backward(
                &self.inner,
                spec,
                dy,
                x,
                gamma,
                save_mean,
                save_rstd,
                dx,
                dgamma,
                dbeta,
            )
        })
    }
    fn l2norm_forward(
        &self,
        x: CudaRef<'_, A>,
        y: CudaMut<'_, A>,
        norms: CudaMut<'_, f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.track("l2norm_forward", || {
            <CudaBackend<A> as Backend>::l2norm_forward(&self.inner, x, y, norms, rows, cols)
        })
    }
    fn l2norm_backward(
        &self,
        dy: CudaRef<'_, A>,
        y: CudaRef<'_, A>,
        norms: CudaRef<'_, f32>,
        dx: CudaMut<'_, A>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.track("l2norm_backward", || {
            <CudaBackend<A> as Backend>::l2norm_backward(&self.inner, dy, y, norms, dx, rows, cols)
        })
    }
    fn conv2d_forward(&self, spec: &Conv2d, x: CudaRef<'_, A>, w: CudaRef<'_, A>, y: CudaMut<'_, A>) -> Result<()> {
        self.track("conv2d_forward", || <CudaBackend<A> as Backend>::conv2d_forward(&self.inner, spec, x, w, y))
    }
    fn conv2d_backward_data(
        &self,
        spec: &Conv2d,
        dy: CudaRef<'_, A>,
        w: CudaRef<'_, A>,
        dx: CudaMut<'_, A>,
    ) -> Result<()> {
        self.track("conv2d_backward_data", || {
            <CudaBackend<A> as Backend>::conv2d_backward_data(&self.inner, spec, dy, w, dx)
        })
    }
    fn conv2d_backward_filter(
        &self,
        spec: &Conv2d,
        dy: CudaRef<'_, A>,
        x: CudaRef<'_, A>,
        dw: CudaMut<'_, f32>,
    ) -> Result<()> {
        self.track("conv2d_backward_filter", || {
            <CudaBackend<A> as Backend>::conv2d_backward_filter(&self.inner, spec, dy, x, dw)
        })
    }
    fn avgpool2d_forward(&self, spec: &Pool2d, x: CudaRef<'_, A>, y: CudaMut<'_, A>) -> Result<()> {
        self.track("avgpool2d_forward", || <CudaBackend<A> as Backend>::avgpool2d_forward(&self.inner, spec, x, y))
    }
    fn avgpool2d_backward(&self, spec: &Pool2d, dy: CudaRef<'_, A>, dx: CudaMut<'_, A>) -> Result<()> {
        self.track("avgpool2d_backward", || <CudaBackend<A> as Backend>::avgpool2d_backward(&self.inner, spec, dy, dx))
    }
    fn softmax_forward(&self, x: CudaRef<'_, A>, y: CudaMut<'_, A>, rows: usize, cols: usize) -> Result<()> {
        self.track("softmax_forward", || <CudaBackend<A> as Backend>::softmax_forward(&self.inner, x, y, rows, cols))
    }
    fn softmax_backward(
        &self,
        y: CudaRef<'_, A>,
        dy: CudaRef<'_, A>,
        dx: CudaMut<'_, A>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.track("softmax_backward", || {
            <CudaBackend<A> as Backend>::softmax_backward(&self.inner, y, dy, dx, rows, cols)
        })
    }
    fn attention_saved_len(&self, spec: &Attention) -> usize {
        <CudaBackend<A> as Backend>::attention_saved_len(&self.inner, spec)
    }
    fn attention_forward(
        &self,
        spec: &Attention,
        qkv: CudaRef<'_, A>,
        key_padding: Option<CudaRef<'_, u8>>,
        out: CudaMut<'_, A>,
        saved: CudaMut<'_, f32>,
    ) -> Result<()> {
        self.track("attention_forward", || {
            <CudaBackend<A> as Backend>::attention_forward(&self.inner, spec, qkv, key_padding, out, saved)
        })
    }
    fn attention_backward(
        &self,
        spec: &Attention,
        qkv: CudaRef<'_, A>,
        key_padding: Option<CudaRef<'_, u8>>,
        _out: CudaRef<'_, A>,
        saved: CudaRef<'_, f32>,
        dout: CudaRef<'_, A>,
        dqkv: CudaMut<'_, A>,
    ) -> Result<()> {
        self.track("attention_backward", || {
            <CudaBackend<A> as Backend>::attention_backward(
                &self.inner,
                spec,
                qkv,
                key_padding,
                _out,
                saved,
                dout,
                dqkv,
            )
        })
    }
    fn cross_entropy_forward(
        &self,
        logits: CudaRef<'_, A>,
        targets: CudaRef<'_, i32>,
        losses: CudaMut<'_, f32>,
        lse: CudaMut<'_, f32>,
        rows: usize,
        classes: usize,
        ignore_index: i32,
        label_smoothing: f64,
    ) -> Result<()> {
        self.track("cross_entropy_forward", || {
            <CudaBackend<A> as Backend>::cross_entropy_forward(
                &self.inner,
                logits,
                targets,
                losses,
                lse,
                rows,
                classes,
                ignore_index,
                label_smoothing,
            )
        })
    }
    fn cross_entropy_backward(
        &self,
        logits: CudaRef<'_, A>,
        targets: CudaRef<'_, i32>,
        lse: CudaRef<'_, f32>,
        dlogits: CudaMut<'_, A>,
        rows: usize,
        classes: usize,
        ignore_index: i32,
        label_smoothing: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.track("cross_entropy_backward", || {
            <CudaBackend<A> as Backend>::cross_entropy_backward(
                &self.inner,
                logits,
                targets,
                lse,
                dlogits,
                rows,
                classes,
                ignore_index,
                label_smoothing,
                grad_scale,
            )
        })
    }
    fn clip_loss_saved_len(&self, spec: &ClipLoss) -> usize {
        <CudaBackend<A> as Backend>::clip_loss_saved_len(&self.inner, spec)
    }
    fn clip_loss_forward(
        &self,
        spec: &ClipLoss,
        image: CudaRef<'_, A>,
        text: CudaRef<'_, A>,
        log_scale: CudaRef<'_, f32>,
        loss: CudaMut<'_, f32>,
        saved: CudaMut<'_, f32>,
    ) -> Result<()> {
        self.track("clip_loss_forward", || {
            <CudaBackend<A> as Backend>::clip_loss_forward(&self.inner, spec, image, text, log_scale, loss, saved)
        })
    }
    fn clip_loss_backward(
        &self,
        spec: &ClipLoss,
        image: CudaRef<'_, A>,
        text: CudaRef<'_, A>,
        log_scale: CudaRef<'_, f32>,
        saved: CudaRef<'_, f32>,
        dloss: f64,
        dimage: CudaMut<'_, A>,
        dtext: Option<CudaMut<'_, A>>,
        dlog_scale: CudaMut<'_, f32>,
    ) -> Result<()> {
        self.track("clip_loss_backward", || {
            <CudaBackend<A> as Backend>::clip_loss_backward(
                &self.inner,
                spec,
                image,
                text,
                log_scale,
                saved,
                dloss,
                dimage,
                dtext,
                dlog_scale,
            )
        })
    }
    fn nn_search(
        &self,
        queries: CudaRef<'_, A>,
        keys: CudaRef<'_, A>,
        index: CudaMut<'_, i32>,
        sim: CudaMut<'_, f32>,
        batch: usize,
        num_keys: usize,
        dim: usize,
        k: usize,
    ) -> Result<()> {
        self.track("nn_search", || {
            <CudaBackend<A> as Backend>::nn_search(&self.inner, queries, keys, index, sim, batch, num_keys, dim, k)
        })
    }
    fn adamw_update(
        &self,
        hp: &AdamW,
        segments: &[DecaySegment],
        params: CudaMut<'_, f32>,
        grads: CudaRef<'_, f32>,
        m: CudaMut<'_, f32>,
        v: CudaMut<'_, f32>,
        shadow: Option<CudaMut<'_, A>>,
    ) -> Result<()> {
        self.track("adamw_update", || {
            <CudaBackend<A> as Backend>::adamw_update(&self.inner, hp, segments, params, grads, m, v, shadow)
        })
    }
    fn sum_squares(&self, x: CudaRef<'_, f32>) -> Result<f64> {
        self.track("sum_squares", || <CudaBackend<A> as Backend>::sum_squares(&self.inner, x))
    }
    fn sum(&self, x: CudaRef<'_, f32>) -> Result<f64> {
        self.track("sum", || <CudaBackend<A> as Backend>::sum(&self.inner, x))
    }
}
