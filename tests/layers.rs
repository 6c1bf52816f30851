//! The nn layers on the CPU backend in f64: each layer's backward (input gradient and every parameter gradient)
//! against central differences of its forward, with all parameters moved away from their initial values; plus the
//! parameter store (one buffer, named views, open_clip's weight-decay rule, AdamW through the store).

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::{Activation, AdamW, Backend};
use cliprt::nn::{
    ActivationLayer, AvgPool2d, BatchNorm2d, Conv2dLayer, Embedding, GatherTokens, LayerNorm, Linear, Mlp,
    MultiHeadAttention,
};
use cliprt::params::{Init, ParamBuilder, ParamId, ParamStore};
use cliprt::testing::{self, check_gradient, dot};
use cliprt::Error;

type Cpu = CpuBackend<f64>;

/// A layer wrapped so the harness can run it: forward from a host input to a host output, backward from a host
/// output gradient to a host input gradient (None when the layer has no differentiable input).
trait Probe {
    fn forward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64>;
    fn backward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>>;
}

/// Builds the store with every parameter drawn from N(0, 0.5²) + init, so no gradient is trivially zero.
fn store(pb: ParamBuilder, seed: u64) -> ParamStore<Cpu> {
    testing::jittered_store(&Cpu::new(), pb, seed, 0.5).unwrap()
}

/// Checks the input gradient and every parameter gradient of `probe` at input `x` against central differences of
/// the scalar `Σ w·forward(x)` with random `w`.
fn grad_check_layer(label: &str, seed: u64, probe: &mut impl Probe, p: &mut ParamStore<Cpu>, x: Vec<f64>) {
    let b = Cpu::new();
    let mut rng = testing::rng(seed ^ 0x5eed);
    let out = probe.forward(&b, p, &x);
    let w: Vec<f64> = testing::normal(&mut rng, out.len(), 1.0);
    p.zero_grads(&b).unwrap();
    let dx = probe.backward(&b, p, &x, &w);
    let grads = p.download_grads(&b).unwrap();
    if let Some(dx) = dx {
        check_gradient(&format!("{label}: input"), seed, &x, &dx, 150, |xp| dot(&w, &probe.forward(&b, p, xp)));
    }
    if p.num_params() > 0 {
        let theta = p.download_master(&b).unwrap();
        check_gradient(&format!("{label}: parameters"), seed, &theta, &grads, 300, |tp| {
            p.set_master(&b, tp).unwrap();
            dot(&w, &probe.forward(&b, p, &x))
        });
        p.set_master(&b, &theta).unwrap();
    }
}

fn host(b: &Cpu, x: &[f64]) -> Vec<f64> {
    b.download(x).unwrap()
}

struct LinearProbe(Linear<Cpu>, usize);
impl Probe for LinearProbe {
    fn forward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64> {
        self.0.forward(b, p, x, self.1).unwrap();
        host(b, self.0.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        let mut dx = testing::poisoned(x.len());
        self.0.backward(b, p, x, dy, Some(&mut dx)).unwrap();
        Some(dx)
    }
}

#[test]
fn linear_grad_with_and_without_bias() {
    let seed = testing::seed(11);
    for (rows, i, o, bias) in [(1, 1, 1, true), (3, 5, 7, true), (4, 6, 2, false), (9, 3, 3, true)] {
        let mut pb = ParamBuilder::new();
        let layer = Linear::new(&mut pb, "fc", i, o, bias).unwrap();
        let mut p = store(pb, seed);
        let x = testing::normal(&mut testing::rng(seed), rows * i, 1.0);
        grad_check_layer(
            &format!("linear {rows}x{i}->{o} bias={bias}"),
            seed,
            &mut LinearProbe(layer, rows),
            &mut p,
            x,
        );
    }
}

#[test]
fn linear_forward_matches_manual_product() {
    let b = Cpu::new();
    let mut pb = ParamBuilder::new();
    let mut layer = Linear::new(&mut pb, "fc", 2, 3, true).unwrap();
    let mut p = pb.build(&b, &mut testing::rng(1)).unwrap();
    // weight [3, 2] = [[1, 2], [3, 4], [5, 6]], bias [0.5, -1, 2]
    p.set_master(&b, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, -1.0, 2.0]).unwrap();
    layer.forward(&b, &p, &[1.0, -1.0, 0.0, 2.0], 2).unwrap();
    assert_eq!(layer.out().unwrap(), &[-0.5, -2.0, 1.0, 4.5, 7.0, 14.0]);
}

struct LayerNormProbe(LayerNorm<Cpu>, usize);
impl Probe for LayerNormProbe {
    fn forward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64> {
        self.0.forward(b, p, x, self.1).unwrap();
        host(b, self.0.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        let mut dx = testing::poisoned(x.len());
        self.0.backward(b, p, x, dy, &mut dx).unwrap();
        Some(dx)
    }
}

#[test]
fn layernorm_layer_grad() {
    let seed = testing::seed(12);
    for (rows, width) in [(1, 2), (3, 7), (5, 16)] {
        let mut pb = ParamBuilder::new();
        let layer = LayerNorm::new(&mut pb, "ln", width).unwrap();
        let mut p = store(pb, seed);
        let x = testing::normal(&mut testing::rng(seed), rows * width, 2.0);
        grad_check_layer(&format!("layernorm {rows}x{width}"), seed, &mut LayerNormProbe(layer, rows), &mut p, x);
    }
}

struct MlpProbe(Mlp<Cpu>, usize);
impl Probe for MlpProbe {
    fn forward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64> {
        self.0.forward(b, p, x, self.1).unwrap();
        host(b, self.0.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        let mut dx = testing::poisoned(x.len());
        self.0.backward(b, p, x, dy, &mut dx).unwrap();
        Some(dx)
    }
}

#[test]
fn mlp_grad_gelu_and_quickgelu() {
    let seed = testing::seed(13);
    for (kind, rows, width) in [(Activation::Gelu, 3, 4), (Activation::QuickGelu, 2, 5), (Activation::Relu, 4, 3)] {
        let mut pb = ParamBuilder::new();
        let layer = Mlp::new(&mut pb, "mlp", width, 4 * width, kind).unwrap();
        let mut p = store(pb, seed);
        let x = testing::normal(&mut testing::rng(seed), rows * width, 1.0);
        grad_check_layer(&format!("mlp {kind:?}"), seed, &mut MlpProbe(layer, rows), &mut p, x);
    }
}

struct MhaProbe {
    layer: MultiHeadAttention<Cpu>,
    batch: usize,
    seq: usize,
    padding: Option<Vec<u8>>,
}
impl Probe for MhaProbe {
    fn forward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64> {
        self.layer.forward(b, p, x, self.batch, self.seq, self.padding.as_deref()).unwrap();
        host(b, self.layer.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        let mut dx = testing::poisoned(x.len());
        self.layer.backward(b, p, x, dy, self.padding.as_deref(), &mut dx).unwrap();
        Some(dx)
    }
}

#[test]
fn multi_head_attention_grad_plain_causal_and_padded() {
    let seed = testing::seed(14);
    let cases: [(usize, usize, usize, usize, bool, bool); 4] =
        [(1, 1, 4, 1, false, false), (2, 5, 8, 2, false, false), (3, 4, 6, 3, true, false), (2, 5, 4, 2, false, true)];
    for (batch, seq, width, heads, causal, padded) in cases {
        let mut pb = ParamBuilder::new();
        let layer = MultiHeadAttention::new(&mut pb, "attn", width, heads, causal, None).unwrap();
        let mut p = store(pb, seed);
        let x = testing::normal(&mut testing::rng(seed), batch * seq * width, 1.0);
        // Second sequence keeps only its first two keys.
        let padding = padded.then(|| (0..batch * seq).map(|i| u8::from(i / seq == 1 && i % seq >= 2)).collect());
        let mut probe = MhaProbe { layer, batch, seq, padding };
        let label = format!("attention b{batch} s{seq} w{width} h{heads} causal={causal} padded={padded}");
        grad_check_layer(&label, seed, &mut probe, &mut p, x);
    }
}

#[test]
fn multi_head_attention_rejects_width_not_divisible_by_heads() {
    let mut pb = ParamBuilder::new();
    let err = MultiHeadAttention::<Cpu>::new(&mut pb, "attn", 10, 3, false, None).err().expect("must fail");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

struct EmbeddingProbe(Embedding<Cpu>, Vec<i32>);
impl Probe for EmbeddingProbe {
    fn forward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, _x: &[f64]) -> Vec<f64> {
        self.0.forward(b, p, &self.1).unwrap();
        host(b, self.0.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, _x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        self.0.backward(b, p, &self.1, dy).unwrap();
        None
    }
}

#[test]
fn embedding_layer_grad_with_repeated_ids() {
    let seed = testing::seed(15);
    let mut pb = ParamBuilder::new();
    let layer = Embedding::new(&mut pb, "token_embedding", 7, 3, Init::Normal(0.02)).unwrap();
    let mut p = store(pb, seed);
    let ids = vec![0, 3, 3, 6, 1, 3];
    grad_check_layer("embedding", seed, &mut EmbeddingProbe(layer, ids), &mut p, vec![]);
}

struct ConvProbe(Conv2dLayer<Cpu>, usize, usize, usize);
impl Probe for ConvProbe {
    fn forward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64> {
        self.0.forward(b, p, x, self.1, self.2, self.3).unwrap();
        host(b, self.0.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        let mut dx = testing::poisoned(x.len());
        self.0.backward(b, p, x, dy, Some(&mut dx)).unwrap();
        Some(dx)
    }
}

#[test]
fn conv2d_layer_grad() {
    let seed = testing::seed(16);
    for (n, c_in, c_out, hw, kernel, stride, pad) in
        [(1, 1, 1, 3, 1, 1, 0), (2, 3, 4, 5, 3, 1, 1), (1, 2, 3, 6, 3, 2, 1)]
    {
        let mut pb = ParamBuilder::new();
        let layer = Conv2dLayer::new(&mut pb, "conv1", c_in, c_out, kernel, stride, pad, None).unwrap();
        let mut p = store(pb, seed);
        let x = testing::normal(&mut testing::rng(seed), n * c_in * hw * hw, 1.0);
        let label = format!("conv n{n} {c_in}->{c_out} {hw}x{hw} k{kernel} s{stride} p{pad}");
        grad_check_layer(&label, seed, &mut ConvProbe(layer, n, hw, hw), &mut p, x);
    }
}

struct BatchNormProbe(BatchNorm2d<Cpu>, usize, usize);
impl Probe for BatchNormProbe {
    fn forward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64> {
        self.0.forward(b, p, x, self.1, self.2).unwrap();
        host(b, self.0.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        let mut dx = testing::poisoned(x.len());
        self.0.backward(b, p, x, dy, &mut dx).unwrap();
        Some(dx)
    }
}

#[test]
fn batchnorm2d_layer_grad_affine_and_not() {
    let seed = testing::seed(17);
    for (n, c, spatial, affine) in [(4, 3, 5, true), (3, 2, 1, true), (5, 4, 2, false)] {
        let mut pb = ParamBuilder::new();
        let layer = BatchNorm2d::new(&mut pb, "bn1", c, affine).unwrap();
        let mut p = store(pb, seed);
        let x = testing::normal(&mut testing::rng(seed), n * c * spatial, 1.5);
        let label = format!("batchnorm n{n} c{c} s{spatial} affine={affine}");
        grad_check_layer(&label, seed, &mut BatchNormProbe(layer, n, spatial), &mut p, x);
    }
}

#[test]
fn batchnorm2d_running_statistics_and_eval_mode() {
    let b = Cpu::new();
    let mut pb = ParamBuilder::new();
    let mut bn = BatchNorm2d::new(&mut pb, "bn", 1, true).unwrap();
    let mut p = pb.build(&b, &mut testing::rng(2)).unwrap();
    // One channel, values 1..4: mean 2.5, unbiased variance 5/3.
    bn.forward(&b, &mut p, &[1.0, 2.0, 3.0, 4.0], 4, 1).unwrap();
    bn.forward(&b, &mut p, &[1.0, 2.0, 3.0, 4.0], 4, 1).unwrap();
    assert_eq!(bn.num_batches_tracked, 2);
    let stats = p.download_buffers(&b).unwrap();
    let mean = 2.5 * (1.0 - 0.9 * 0.9); // momentum 0.1 twice from 0
    let var = 0.9 * 0.9 * 1.0 + (5.0 / 3.0) * (1.0 - 0.9 * 0.9); // from 1
    assert!((stats[0] - mean).abs() < 1e-12, "running_mean {} vs {mean}", stats[0]);
    assert!((stats[1] - var).abs() < 1e-12, "running_var {} vs {var}", stats[1]);
    bn.training = false;
    bn.forward(&b, &mut p, &[mean], 1, 1).unwrap();
    assert!(bn.out().unwrap()[0].abs() < 1e-12, "eval mode must normalise with the running mean");
    assert_eq!(bn.num_batches_tracked, 2, "eval mode must not count batches");
    let mut dx = vec![0.0];
    assert!(bn.backward(&b, &mut p, &[mean], &[1.0], &mut dx).is_err(), "backward of an eval forward must be refused");
}

struct PoolProbe(AvgPool2d<Cpu>, [usize; 4]);
impl Probe for PoolProbe {
    fn forward(&mut self, b: &Cpu, _p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64> {
        let [n, c, h, w] = self.1;
        self.0.forward(b, x, n, c, h, w).unwrap();
        host(b, self.0.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, _p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        let mut dx = testing::poisoned(x.len());
        self.0.backward(b, dy, &mut dx).unwrap();
        Some(dx)
    }
}

#[test]
fn avgpool_layer_grad() {
    let seed = testing::seed(18);
    for (shape, kernel, stride, pad) in [([2, 3, 4, 4], 2, 2, 0), ([1, 2, 5, 3], 3, 1, 1), ([1, 1, 1, 1], 1, 1, 0)] {
        let mut p = store(ParamBuilder::new(), seed);
        let x = testing::normal(&mut testing::rng(seed), shape.iter().product(), 1.0);
        let probe = &mut PoolProbe(AvgPool2d::new(kernel, stride, pad), shape);
        grad_check_layer(&format!("avgpool {shape:?} k{kernel} s{stride} p{pad}"), seed, probe, &mut p, x);
    }
}

struct ActivationProbe(ActivationLayer<Cpu>);
impl Probe for ActivationProbe {
    fn forward(&mut self, b: &Cpu, _p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64> {
        self.0.forward(b, x).unwrap();
        host(b, self.0.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, _p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        let mut dx = testing::poisoned(x.len());
        self.0.backward(b, x, dy, &mut dx).unwrap();
        Some(dx)
    }
}

#[test]
fn activation_layer_grad() {
    let seed = testing::seed(19);
    for kind in [Activation::Relu, Activation::Gelu, Activation::QuickGelu] {
        let mut p = store(ParamBuilder::new(), seed);
        let x = testing::normal_away_from(&mut testing::rng(seed), 17, &[0.0], 1e-3);
        grad_check_layer(
            &format!("activation {kind:?}"),
            seed,
            &mut ActivationProbe(ActivationLayer::new(kind)),
            &mut p,
            x,
        );
    }
}

struct GatherProbe(GatherTokens<Cpu>, Vec<i32>, usize, usize);
impl Probe for GatherProbe {
    fn forward(&mut self, b: &Cpu, _p: &mut ParamStore<Cpu>, x: &[f64]) -> Vec<f64> {
        self.0.forward(b, x, &self.1, self.1.len(), self.2, self.3).unwrap();
        host(b, self.0.out().unwrap())
    }
    fn backward(&mut self, b: &Cpu, _p: &mut ParamStore<Cpu>, x: &[f64], dy: &[f64]) -> Option<Vec<f64>> {
        let mut dx = testing::poisoned(x.len());
        self.0.backward(b, &self.1, dy, &mut dx).unwrap();
        Some(dx)
    }
}

#[test]
fn gather_tokens_layer_grad() {
    let seed = testing::seed(20);
    let mut p = store(ParamBuilder::new(), seed);
    let (seq, dim, index) = (5, 3, vec![4, 0, 2]);
    let x = testing::normal(&mut testing::rng(seed), index.len() * seq * dim, 1.0);
    grad_check_layer("gather tokens", seed, &mut GatherProbe(GatherTokens::default(), index, seq, dim), &mut p, x);
}

#[test]
fn param_store_is_one_contiguous_buffer_with_named_views() {
    let b = Cpu::new();
    let mut pb = ParamBuilder::new();
    let fc = pb.scope("visual", |pb| Linear::<Cpu>::new(pb, "proj", 4, 3, true)).unwrap();
    let ln = LayerNorm::<Cpu>::new(&mut pb, "ln_final", 3).unwrap();
    let p = pb.build(&b, &mut testing::rng(3)).unwrap();
    let names: Vec<&str> = p.layout().entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["visual.proj.weight", "visual.proj.bias", "ln_final.weight", "ln_final.bias"]);
    assert_eq!(fc.weight, ParamId { offset: 0, len: 12 });
    assert_eq!(fc.bias, Some(ParamId { offset: 12, len: 3 }));
    assert_eq!(ln.weight, ParamId { offset: 15, len: 3 });
    assert_eq!(p.num_params(), 21);
    assert_eq!(p.id("ln_final.bias").unwrap(), ParamId { offset: 18, len: 3 });
    assert!(matches!(p.id("nope"), Err(Error::Param { .. })));
    assert_eq!(p.weight(ln.weight), &[1.0, 1.0, 1.0], "LayerNorm weight initialises to ones");
    assert_eq!(p.weight(ln.bias), &[0.0, 0.0, 0.0]);
    let bound = 0.5; // 1/√4
    assert!(p.weight(fc.weight).iter().all(|w| w.abs() <= bound), "Linear weight within U(±1/√in)");
}

#[test]
fn param_builder_rejects_duplicate_names() {
    let mut pb = ParamBuilder::new();
    pb.param("a", &[2], Init::Zeros).unwrap();
    assert!(matches!(pb.param("a", &[3], Init::Zeros), Err(Error::Param { .. })));
}

#[test]
fn param_store_initialisation_is_deterministic_from_the_seed() {
    let b = Cpu::new();
    let build = |seed| {
        let mut pb = ParamBuilder::new();
        Mlp::<Cpu>::new(&mut pb, "mlp", 4, 8, Activation::Gelu).unwrap();
        pb.build(&b, &mut testing::rng(seed)).unwrap().download_master(&b).unwrap()
    };
    assert_eq!(build(7), build(7));
    assert_ne!(build(7), build(8));
}

#[test]
fn weight_decay_follows_open_clip_exclusion_rule() {
    let b = Cpu::new();
    let mut pb = ParamBuilder::new();
    pb.param("token_embedding.weight", &[5, 2], Init::Zeros).unwrap(); // decayed (2-D, embeddings ARE decayed)
    pb.param("positional_embedding", &[3, 2], Init::Zeros).unwrap(); // decayed
    pb.param("ln_final.weight", &[2], Init::Ones).unwrap(); // 1-D
    pb.param("visual.bn1.weight", &[2], Init::Ones).unwrap(); // 1-D
    pb.param("attn.in_proj_bias", &[6], Init::Zeros).unwrap(); // bias
    pb.param("logit_scale", &[], Init::Constant(2.6592)).unwrap(); // 0-D
    pb.param("text_projection", &[2, 2], Init::Zeros).unwrap(); // decayed
    pb.param("visual.ln_post.special", &[2, 2], Init::Zeros).unwrap(); // 2-D but named ln
    let p = pb.build(&b, &mut testing::rng(4)).unwrap();
    let segments: Vec<(usize, usize, bool)> = p.decay_segments().iter().map(|s| (s.start, s.len, s.decay)).collect();
    assert_eq!(segments, [(0, 16, true), (16, 11, false), (27, 4, true), (31, 4, false)]);
}

#[test]
fn adamw_step_through_the_store_updates_master_and_compute_copy() {
    let b = Cpu::new();
    let mut pb = ParamBuilder::new();
    let w = pb.param("w", &[2, 2], Init::Constant(1.0)).unwrap();
    let bias = pb.param("b.bias", &[2], Init::Constant(1.0)).unwrap();
    let mut p = pb.build(&b, &mut testing::rng(5)).unwrap();
    {
        let [dw, db] = p.grads_mut([w, bias]).unwrap();
        dw.copy_from_slice(&[0.5, -0.5, 2.0, 0.0]);
        db.copy_from_slice(&[1.0, -1.0]);
    }
    let hp = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.5, step: 1 };
    p.adamw_step(&b, &hp).unwrap();
    // Step 1: m̂ = g, v̂ = g², so the Adam step is lr·sign(g) (0 where g = 0); decay only on the 2-D tensor.
    let after = p.download_master(&b).unwrap();
    let decayed = 1.0 - 0.1 * 0.5;
    let want = [decayed - 0.1, decayed + 0.1, decayed - 0.1, decayed, 0.9, 1.1];
    for (a, e) in after.iter().zip(want) {
        assert!((a - e).abs() < 1e-6, "{after:?} vs {want:?}");
    }
    assert_eq!(p.weight(w), &after[0..4], "the compute copy follows the master weights");
}

#[test]
fn grads_mut_refuses_overlapping_views() {
    let b = Cpu::new();
    let mut pb = ParamBuilder::new();
    pb.param("w", &[4], Init::Zeros).unwrap();
    let mut p = pb.build(&b, &mut testing::rng(6)).unwrap();
    let a = ParamId { offset: 0, len: 3 };
    let c = ParamId { offset: 2, len: 2 };
    assert!(p.grads_mut([a, c]).is_err());
    assert!(p.grads_mut([ParamId { offset: 3, len: 2 }]).is_err(), "a view past the end must be refused");
    let [x, y] = p.grads_mut([c, ParamId { offset: 0, len: 2 }]).unwrap();
    assert_eq!((x.len(), y.len()), (2, 2));
}

#[test]
fn layer_buffers_are_reused_across_steps() {
    let b = Cpu::new();
    let mut pb = ParamBuilder::new();
    let mut fc = Linear::new(&mut pb, "fc", 3, 2, true).unwrap();
    let p = pb.build(&b, &mut testing::rng(7)).unwrap();
    fc.forward(&b, &p, &[1.0; 6], 2).unwrap();
    let first = fc.out().unwrap().as_ptr();
    fc.forward(&b, &p, &[2.0; 6], 2).unwrap();
    assert_eq!(fc.out().unwrap().as_ptr(), first, "same batch size: the output buffer must be reused, not reallocated");
}

/// One forward and backward through Conv2d → BatchNorm → MLP → causal attention at sizes large
/// enough for the parallel paths (threaded GEMM, rayon over rows), returning every output and gradient bit pattern.
fn step_bits(threads: usize) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let b = CpuBackend::<f32>::new();
        let mut pb = ParamBuilder::new();
        let mut conv = Conv2dLayer::new(&mut pb, "conv", 3, 16, 3, 1, 1, None).unwrap();
        let mut bn = BatchNorm2d::new(&mut pb, "bn", 16, true).unwrap();
        let mut mlp = Mlp::new(&mut pb, "mlp", 64, 256, Activation::Gelu).unwrap();
        let mut attn = MultiHeadAttention::new(&mut pb, "attn", 64, 4, true, None).unwrap();
        let mut p = pb.build(&b, &mut testing::rng(9)).unwrap();
        let (n, hw) = (16, 8);
        let x: Vec<f32> = testing::normal(&mut testing::rng(10), n * 3 * hw * hw, 1.0);
        conv.forward(&b, &p, &x, n, hw, hw).unwrap();
        let conv_out = conv.out().unwrap().to_vec();
        bn.forward(&b, &mut p, &conv_out, n, hw * hw).unwrap();
        // Read the [16, 16·64] activations as 64 sequences of 4 tokens of width 64.
        let tokens = bn.out().unwrap().to_vec();
        mlp.forward(&b, &p, &tokens, 256).unwrap();
        let mlp_out = mlp.out().unwrap().to_vec();
        attn.forward(&b, &p, &mlp_out, 64, 4, None).unwrap();
        let out = attn.out().unwrap().to_vec();
        let dy: Vec<f32> = testing::normal(&mut testing::rng(11), out.len(), 1.0);
        let mut d_mlp_out = vec![0f32; mlp_out.len()];
        attn.backward(&b, &mut p, &mlp_out, &dy, None, &mut d_mlp_out).unwrap();
        let mut d_tokens = vec![0f32; tokens.len()];
        mlp.backward(&b, &mut p, &tokens, &d_mlp_out, &mut d_tokens).unwrap();
        let mut d_conv_out = vec![0f32; conv_out.len()];
        bn.backward(&b, &mut p, &conv_out, &d_tokens, &mut d_conv_out).unwrap();
        let mut dx = vec![0f32; x.len()];
        conv.backward(&b, &mut p, &x, &d_conv_out, Some(&mut dx)).unwrap();
        let grads = b.download(Cpu32::view(&p.grads)).unwrap();
        out.iter().chain(&dx).chain(&grads).map(|v| v.to_bits()).collect()
    })
}

type Cpu32 = CpuBackend<f32>;

#[test]
fn cpu_results_are_bit_identical_across_thread_counts() {
    let one = step_bits(1);
    assert!(one.iter().all(|&bits| f32::from_bits(bits).is_finite()), "non-finite value in the step");
    assert_eq!(one, step_bits(2), "1 vs 2 threads");
    assert_eq!(one, step_bits(4), "1 vs 4 threads");
}
