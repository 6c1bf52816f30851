//! CPU backend throughput at the tiny training config's shapes (ViT width 128, patch 8 on 32×32 images → 17 tokens;
//! text width 128, context 16; batch 256). Run: `cargo bench --bench cpu_primitives`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::{Activation, Attention, Backend, ClipLoss, Conv2d, Gemm};
use cliprt::testing;

type Cpu = CpuBackend<f32>;

fn gemm(c: &mut Criterion) {
    let b = Cpu::new();
    let mut group = c.benchmark_group("gemm");
    // Linear layers of a width-128 tower over 256·17 tokens: qkv, mlp up, mlp down.
    for (m, n, k) in [(4352, 384, 128), (4352, 512, 128), (4352, 128, 512)] {
        let spec = Gemm::new(m, n, k, false, true);
        let mut rng = testing::rng(1);
        let (x, w) = (testing::normal::<f32>(&mut rng, m * k, 1.0), testing::normal::<f32>(&mut rng, n * k, 1.0));
        let mut y = vec![0f32; m * n];
        group.throughput(Throughput::Elements(spec.flops() as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{m}x{n}x{k}")), |bench| {
            bench.iter(|| b.gemm(&spec, &x, &w, &mut y).unwrap())
        });
    }
    group.finish();
}

fn layernorm(c: &mut Criterion) {
    let b = Cpu::new();
    let (rows, cols) = (4352, 128);
    let mut rng = testing::rng(2);
    let x = testing::normal::<f32>(&mut rng, rows * cols, 1.0);
    let (gamma, beta) = (vec![1f32; cols], vec![0f32; cols]);
    let (mut y, mut mean, mut rstd) = (vec![0f32; rows * cols], vec![0f32; rows], vec![0f32; rows]);
    let mut group = c.benchmark_group("layernorm");
    group.throughput(Throughput::Bytes((2 * rows * cols * 4) as u64));
    group.bench_function("forward_4352x128", |bench| {
        bench.iter(|| b.layernorm_forward(&x, &gamma, &beta, &mut y, &mut mean, &mut rstd, rows, cols, 1e-5).unwrap())
    });
    let dy = testing::normal::<f32>(&mut rng, rows * cols, 1.0);
    let (mut dx, mut dgamma, mut dbeta) = (vec![0f32; rows * cols], vec![0f32; cols], vec![0f32; cols]);
    group.bench_function("backward_4352x128", |bench| {
        bench.iter(|| {
            b.layernorm_backward(&dy, &x, &gamma, &mean, &rstd, &mut dx, &mut dgamma, &mut dbeta, rows, cols).unwrap()
        })
    });
    group.finish();
}

fn attention(c: &mut Criterion) {
    let b = Cpu::new();
    let spec = Attention::packed_self(256, 17, 2, 64, false);
    let mut rng = testing::rng(3);
    let qkv = testing::normal::<f32>(&mut rng, spec.qkv_len(), 1.0);
    let (mut out, mut saved) = (vec![0f32; spec.out_len()], vec![0f32; b.attention_saved_len(&spec)]);
    let mut group = c.benchmark_group("attention");
    group.bench_function("forward_b256_s17_h2_d64", |bench| {
        bench.iter(|| b.attention_forward(&spec, &qkv, None, &mut out, &mut saved).unwrap())
    });
    let dout = testing::normal::<f32>(&mut rng, spec.out_len(), 1.0);
    let mut dqkv = vec![0f32; spec.qkv_len()];
    group.bench_function("backward_b256_s17_h2_d64", |bench| {
        bench.iter(|| b.attention_backward(&spec, &qkv, None, &out, &saved, &dout, &mut dqkv).unwrap())
    });
    group.finish();
}

fn conv_and_activation(c: &mut Criterion) {
    let b = Cpu::new();
    // The ViT patch embedding: 256 images of 3×32×32, 8×8 patches, width 128.
    let spec = Conv2d { n: 256, c_in: 3, h: 32, w: 32, c_out: 128, kernel_h: 8, kernel_w: 8, stride: 8, pad: 0 };
    let mut rng = testing::rng(4);
    let (x, w) = (
        testing::normal::<f32>(&mut rng, spec.input_len(), 1.0),
        testing::normal::<f32>(&mut rng, spec.weight_len(), 0.1),
    );
    let mut y = vec![0f32; spec.output_len()];
    let mut group = c.benchmark_group("conv_activation");
    group
        .bench_function("patch_embed_forward", |bench| bench.iter(|| b.conv2d_forward(&spec, &x, &w, &mut y).unwrap()));
    let h = testing::normal::<f32>(&mut rng, 4352 * 512, 1.0);
    let mut hy = vec![0f32; h.len()];
    group.bench_function("gelu_forward_4352x512", |bench| {
        bench.iter(|| b.activation_forward(Activation::Gelu, &h, &mut hy).unwrap())
    });
    let dh = testing::normal::<f32>(&mut rng, h.len(), 1.0);
    group.bench_function("gelu_backward_4352x512", |bench| {
        bench.iter(|| b.activation_backward(Activation::Gelu, &h, &dh, &mut hy).unwrap())
    });
    group.finish();
}

fn clip_loss(c: &mut Criterion) {
    let b = Cpu::new();
    let spec = ClipLoss::symmetric(256, 128);
    let mut rng = testing::rng(5);
    let (img, txt) =
        (testing::normal::<f32>(&mut rng, 256 * 128, 1.0), testing::normal::<f32>(&mut rng, 256 * 128, 1.0));
    let t = [2.6592f32];
    let (mut loss, mut saved) = ([0f32], vec![0f32; b.clip_loss_saved_len(&spec)]);
    let (mut di, mut dt, mut dls) = (vec![0f32; img.len()], vec![0f32; txt.len()], [0f32]);
    let mut group = c.benchmark_group("clip_loss");
    group.bench_function("forward_backward_n256_d128", |bench| {
        bench.iter(|| {
            b.clip_loss_forward(&spec, &img, &txt, &t, &mut loss, &mut saved).unwrap();
            b.clip_loss_backward(&spec, &img, &txt, &t, &saved, 1.0, &mut di, Some(&mut dt), &mut dls).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, gemm, layernorm, attention, conv_and_activation, clip_loss);
criterion_main!(benches);
