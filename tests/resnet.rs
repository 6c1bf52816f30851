//! The modified ResNet image tower on the CPU backend: open_clip's names, shapes, order, parameter counts and
//! initialisers; forward parity with open_clip; every parameter gradient against central differences in f64;
//! BatchNorm train/eval behaviour; the zero-initialised residual branches.
//!
//! Fixtures (written once with open_clip 3.3.0 / PyTorch 2.15 in /tmp/torchenv):
//! - `resnet_rn50_keys.txt`, `resnet_tiny_rn_keys.txt`: `name shape` per line of `model.visual.state_dict()`
//!   (`ModifiedResNet(layers=[1,1,1,1], output_dim=64, heads=8, image_size=32, width=16)` for tiny-RN);
//! - `resnet_parity.json`: the outputs of `ModifiedResNet(layers=[1,2,1,1], output_dim=16, heads=4, image_size=64,
//!   width=4).double()` on two formula images, in training mode then evaluation mode, with every parameter and
//!   running statistic set by the formula of [`formula`] (tensor `t` in declaration order, element `j`):
//!   `sin(0.7·j + 1.3·t + 0.2)/√fan_in`, running_mean `0.1·f`, running_var `1 + 0.5·f²`; images
//!   `sin(0.37·j + 0.5)`.

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::{AdamW, Backend};
use cliprt::model::config::{ModelConfig, VisionConfig, VisionLayers};
use cliprt::model::resnet::ModifiedResNet;
use cliprt::params::{Init, Layout, ParamBuilder, ParamStore};
use cliprt::testing::{self, assert_close, check_gradient, dot};

type Cpu = CpuBackend<f64>;

fn vision(image_size: usize, layers: [usize; 4], width: usize, head_width: usize) -> VisionConfig {
    VisionConfig {
        image_size,
        layers: VisionLayers::ResNet(layers),
        width,
        patch_size: None,
        head_width,
        mlp_ratio: 4.0,
    }
}

/// Declares the tower inside a `visual` scope, as the CLIP model does.
fn declare(cfg: &VisionConfig, embed_dim: usize) -> (ParamBuilder, ModifiedResNet<Cpu>) {
    let mut pb = ParamBuilder::new();
    let tower = pb.scope("visual", |pb| ModifiedResNet::<Cpu>::new(pb, cfg, embed_dim)).unwrap();
    (pb, tower)
}

fn relative(name: &str) -> &str {
    name.strip_prefix("visual.").unwrap_or_else(|| panic!("`{name}` is not under the visual scope"))
}

/// The fixture's lines split into trainable parameters, running statistics and `num_batches_tracked` owners.
struct Keys {
    params: Vec<(String, Vec<usize>)>,
    buffers: Vec<(String, Vec<usize>)>,
    batchnorms: Vec<String>,
}

fn fixture_keys(file: &str) -> Keys {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut keys = Keys { params: Vec::new(), buffers: Vec::new(), batchnorms: Vec::new() };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, shape) = line.split_once(' ').unwrap_or_else(|| panic!("{path}: bad line `{line}`"));
        if let Some(bn) = name.strip_suffix(".num_batches_tracked") {
            keys.batchnorms.push(bn.to_string());
            continue;
        }
        let shape: Vec<usize> = shape.split('x').map(|d| d.parse().unwrap()).collect();
        if name.ends_with(".running_mean") || name.ends_with(".running_var") {
            keys.buffers.push((name.to_string(), shape));
        } else {
            keys.params.push((name.to_string(), shape));
        }
    }
    keys
}

fn entries(layout: &Layout) -> Vec<(String, Vec<usize>)> {
    layout.entries().iter().map(|e| (relative(&e.name).to_string(), e.shape.clone())).collect()
}

fn assert_same_list(what: &str, got: &[(String, Vec<usize>)], want: &[(String, Vec<usize>)]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{what}: entry {i} differs");
    }
    assert_eq!(got.len(), want.len(), "{what}: {} entries, open_clip has {}", got.len(), want.len());
}

#[test]
fn rn50_names_shapes_order_and_count_match_open_clip() {
    let cfg = ModelConfig::builtin("RN50").unwrap();
    let (pb, tower) = declare(&cfg.vision_cfg, cfg.embed_dim);
    let want = fixture_keys("resnet_rn50_keys.txt");
    assert_same_list("RN50 parameters", &entries(pb.param_layout()), &want.params);
    // open_clip: sum(p.numel() for p in model.visual.parameters())
    assert_eq!(pb.param_layout().len(), 38_316_896);
    // Running statistics (the store's buffer layout) and the BatchNorms that own a num_batches_tracked, from the
    // layers themselves (building an RN50 store is left to the GPU tests).
    let bns = tower.batchnorms();
    let names: Vec<String> = bns.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, want.batchnorms);
    let buffers: Vec<(String, Vec<usize>)> = bns
        .iter()
        .flat_map(|(n, bn)| {
            [
                (format!("{n}.running_mean"), vec![bn.running_mean.len]),
                (format!("{n}.running_var"), vec![bn.running_var.len]),
            ]
        })
        .collect();
    assert_same_list("RN50 running statistics", &buffers, &want.buffers);
    assert_eq!(tower.attnpool.heads, 32);
    assert_eq!(tower.attnpool.spacial_dim, 7);
}

#[test]
fn tiny_rn_store_layouts_match_open_clip() {
    let cfg = ModelConfig::builtin("tiny-RN").unwrap();
    let (pb, tower) = declare(&cfg.vision_cfg, cfg.embed_dim);
    let store = pb.build(&Cpu::new(), &mut testing::rng(1)).unwrap();
    let want = fixture_keys("resnet_tiny_rn_keys.txt");
    assert_same_list("tiny-RN parameters", &entries(store.layout()), &want.params);
    assert_same_list("tiny-RN buffers", &entries(store.buffer_layout()), &want.buffers);
    let names: Vec<String> = tower.batchnorms().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, want.batchnorms);
    assert_eq!(store.num_params(), 1_327_832);
}

#[test]
fn rn50_initialisers_follow_open_clip() {
    let cfg = ModelConfig::builtin("RN50").unwrap();
    let (pb, _) = declare(&cfg.vision_cfg, cfg.embed_dim);
    let std = 2048f64.powf(-0.5);
    for e in pb.param_layout().entries() {
        let name = relative(&e.name);
        let want = if name.ends_with("conv1.weight")
            || name.ends_with("conv2.weight")
            || name.ends_with("conv3.weight")
            || name.ends_with("downsample.0.weight")
        {
            // nn.Conv2d: kaiming-uniform a=√5 = U(±1/√fan_in)
            Init::Uniform(1.0 / (e.shape[1..].iter().product::<usize>() as f64).sqrt())
        } else if name.starts_with("layer") && name.ends_with("bn3.weight") {
            Init::Zeros // init_parameters: zero_init of each residual branch's last BatchNorm
        } else if name.ends_with(".weight") && e.shape.len() == 1 {
            Init::Ones
        } else if name.starts_with("attnpool.") && name.ends_with("_proj.weight") {
            Init::Normal(std) // init_parameters: c_proj.in_features^-½
        } else if name.starts_with("attnpool.") && name.ends_with("_proj.bias") {
            Init::Uniform(std) // nn.Linear default: U(±1/√in_features)
        } else if name == "attnpool.positional_embedding" {
            Init::Normal(std) // randn/√embed_dim
        } else if name.ends_with(".bias") {
            Init::Zeros
        } else {
            panic!("no rule for `{name}`")
        };
        assert_eq!(e.init, want, "{name}");
    }
}

/// Every parameter drawn as initialised, then moved by noise of its own initial scale (0.3 for the BatchNorm
/// constants), so that no gradient is trivially zero (the bn3 weights start at zero) while the output stays O(1).
fn jittered(pb: ParamBuilder, seed: u64) -> ParamStore<Cpu> {
    let b = Cpu::new();
    let mut rng = testing::rng(seed);
    let mut store = pb.build(&b, &mut rng).unwrap();
    let mut moved = store.download_master(&b).unwrap();
    for e in store.layout().entries() {
        let scale = match e.init {
            Init::Uniform(bound) => bound,
            Init::Normal(std) => std,
            _ => 0.3,
        };
        let noise: Vec<f64> = testing::normal(&mut rng, e.id.len, scale);
        moved[e.id.range()].iter_mut().zip(noise).for_each(|(v, n)| *v += n);
    }
    store.set_master(&b, &moved).unwrap();
    store
}

#[test]
fn resnet_tower_grad_every_tensor() {
    let seed = testing::seed(41);
    let b = Cpu::new();
    // 64×64 images keep layer4 at 2×2, so its BatchNorms see 8 values per channel and the pool attends over 5 tokens;
    // two blocks in layer1 so that one has the identity shortcut.
    let (cfg, embed, batch) = (vision(64, [2, 1, 1, 1], 8, 16), 8, 2);
    let (pb, mut tower) = declare(&cfg, embed);
    let mut p = jittered(pb, seed);
    let mut rng = testing::rng(seed ^ 0x1a6e);
    let images: Vec<f64> = testing::normal(&mut rng, batch * 3 * 64 * 64, 1.0);
    tower.forward(&b, &mut p, &images, batch).unwrap();
    let out = tower.out().unwrap().to_vec();
    assert_eq!(out.len(), batch * embed);
    let w: Vec<f64> = testing::normal(&mut rng, out.len(), 1.0);
    p.zero_grads(&b).unwrap();
    tower.backward(&b, &mut p, &images, &w).unwrap();
    let grads = p.download_grads(&b).unwrap();
    let theta = p.download_master(&b).unwrap();

    // Each tensor is probed at a few coordinates. The loss is checked as K·L(θ + u/K) in u with K = 100: the same
    // derivative, but the parameter moves by 1e-8 instead of check_gradient's 1e-6, so that no ReLU input or
    // near-tie crosses a kink within a step (with ~10⁵ rectified activations, a 1e-6 step crosses some).
    let k = 100.0;
    let entries = p.layout().entries().to_vec();
    for e in &entries {
        let range = e.id.range();
        let u0 = vec![0.0; range.len()];
        check_gradient(&format!("resnet grad {}", e.name), seed, &u0, &grads[range.clone()], 3, |u| {
            let mut moved = theta.clone();
            moved[range.clone()].iter_mut().zip(u).for_each(|(t, du)| *t += du / k);
            p.set_master(&b, &moved).unwrap();
            tower.forward(&b, &mut p, &images, batch).unwrap();
            k * dot(&w, tower.out().unwrap())
        });
    }
    assert!(entries.len() > 60, "every block's tensors were probed ({} tensors)", entries.len());
}

#[test]
fn backward_accumulates_gradients() {
    let seed = testing::seed(43);
    let b = Cpu::new();
    let (cfg, embed, batch) = (vision(32, [1, 1, 1, 1], 8, 16), 8, 3);
    let (pb, mut tower) = declare(&cfg, embed);
    let mut p = jittered(pb, seed);
    let mut rng = testing::rng(seed);
    let images: Vec<f64> = testing::normal(&mut rng, batch * 3 * 32 * 32, 1.0);
    let d_out: Vec<f64> = testing::normal(&mut rng, batch * embed, 1.0);
    tower.forward(&b, &mut p, &images, batch).unwrap();
    p.zero_grads(&b).unwrap();
    tower.backward(&b, &mut p, &images, &d_out).unwrap();
    let once = p.download_grads(&b).unwrap();
    assert!(once.iter().all(|g| g.is_finite()) && once.iter().any(|&g| g != 0.0));
    tower.backward(&b, &mut p, &images, &d_out).unwrap();
    let twice = p.download_grads(&b).unwrap();
    let doubled: Vec<f64> = once.iter().map(|g| 2.0 * g).collect();
    assert_close("second backward adds", seed, &twice, &doubled, 1e-12, 1e-12);
}

#[test]
fn eval_mode_uses_running_statistics() {
    let seed = testing::seed(47);
    let b = Cpu::new();
    let (cfg, embed, batch) = (vision(32, [1, 1, 1, 1], 8, 16), 8, 3);
    let (pb, mut tower) = declare(&cfg, embed);
    let mut p = jittered(pb, seed);
    let mut rng = testing::rng(seed);
    let images: Vec<f64> = testing::normal(&mut rng, batch * 3 * 32 * 32, 1.0);
    let image_len = 3 * 32 * 32;
    let initial_buffers = p.download_buffers(&b).unwrap();

    // One training step: batch statistics, running statistics updated once per BatchNorm.
    tower.forward(&b, &mut p, &images, batch).unwrap();
    let train_out = tower.out().unwrap().to_vec();
    let d_out: Vec<f64> = testing::normal(&mut rng, batch * embed, 1.0);
    p.zero_grads(&b).unwrap();
    tower.backward(&b, &mut p, &images, &d_out).unwrap();
    p.adamw_step(&b, &AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step: 1 }).unwrap();
    let trained_buffers = p.download_buffers(&b).unwrap();
    assert_ne!(initial_buffers, trained_buffers, "a training forward moves the running statistics");
    assert!(tower.batchnorms().iter().all(|(_, bn)| bn.num_batches_tracked == 1));

    tower.set_training(false);
    assert!(tower.batchnorms().iter().all(|(_, bn)| !bn.training));
    tower.forward(&b, &mut p, &images, batch).unwrap();
    let eval_out = tower.out().unwrap().to_vec();
    assert_eq!(p.download_buffers(&b).unwrap(), trained_buffers, "evaluation leaves the running statistics");
    assert!(tower.batchnorms().iter().all(|(_, bn)| bn.num_batches_tracked == 1));
    let diff: f64 = eval_out.iter().zip(&train_out).map(|(e, t)| (e - t).abs()).sum();
    assert!(diff > 1e-3, "evaluation output equals the training output (Σ|Δ| = {diff:e})");
    // Running statistics make each image's output independent of the rest of the batch.
    tower.forward(&b, &mut p, &images[image_len..2 * image_len], 1).unwrap();
    let alone = tower.out().unwrap().to_vec();
    assert_close("image 1 alone vs in its batch", seed, &alone, &eval_out[embed..2 * embed], 1e-12, 1e-12);
    // No backward through an evaluation-mode forward.
    assert!(tower.backward(&b, &mut p, &images[image_len..2 * image_len], &d_out[..embed]).is_err());
}

#[test]
fn residual_branches_start_at_zero() {
    let b = Cpu::new();
    let cfg = ModelConfig::builtin("tiny-RN").unwrap();
    let (pb, mut tower) = declare(&cfg.vision_cfg, cfg.embed_dim);
    let mut p = pb.build(&b, &mut testing::rng(5)).unwrap();
    let master = p.download_master(&b).unwrap();
    let mut zeroed = 0;
    for e in p.layout().entries() {
        if e.name.starts_with("visual.layer") && e.name.ends_with(".bn3.weight") {
            assert!(master[e.id.range()].iter().all(|&v| v == 0.0), "{} is not zero", e.name);
            zeroed += 1;
        }
    }
    assert_eq!(zeroed, tower.blocks.len());
    // So each block is relu(shortcut): the identity where the shape is kept, relu(downsample(x)) where it changes.
    let batch = 2;
    let images: Vec<f64> = testing::normal(&mut testing::rng(6), batch * 3 * 32 * 32, 1.0);
    tower.forward(&b, &mut p, &images, batch).unwrap();
    for (i, block) in tower.blocks.iter().enumerate() {
        let out = block.out().unwrap();
        let want: Vec<f64> = match &block.downsample {
            Some(ds) => ds.bn.out().unwrap().iter().map(|v| v.max(0.0)).collect(),
            None => {
                let x = if i == 0 { tower.avgpool.out().unwrap() } else { tower.blocks[i - 1].out().unwrap() };
                x.to_vec()
            }
        };
        assert_eq!(out, &want[..], "{}", block.name);
    }
}

/// `sin(0.7·j + 1.3·t + 0.2)/√fan_in` for element `j` of tensor `t` (fan_in = product of all but the first dim).
fn formula(t: usize, shape: &[usize]) -> Vec<f64> {
    let len: usize = shape.iter().product();
    let fan: usize = if shape.len() >= 2 { shape[1..].iter().product() } else { 1 };
    (0..len).map(|j| (0.7 * j as f64 + 1.3 * t as f64 + 0.2).sin() / (fan as f64).sqrt()).collect()
}

#[test]
fn forward_matches_open_clip_train_and_eval() {
    let path = format!("{}/tests/fixtures/resnet_parity.json", env!("CARGO_MANIFEST_DIR"));
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let c = &fixture["config"];
    let num = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
    let layers: Vec<usize> = c["layers"].as_array().unwrap().iter().map(num).collect();
    let (image_size, batch, embed) = (num(&c["image_size"]), num(&c["batch"]), num(&c["embed_dim"]));
    let cfg = vision(image_size, layers.try_into().unwrap(), num(&c["width"]), num(&c["head_width"]));
    let floats =
        |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };

    let b = Cpu::new();
    let (pb, mut tower) = declare(&cfg, embed);
    let mut p = pb.build(&b, &mut testing::rng(0)).unwrap();
    let params: Vec<f64> = p.layout().entries().iter().enumerate().flat_map(|(t, e)| formula(t, &e.shape)).collect();
    p.set_master(&b, &params).unwrap();
    let buffers: Vec<f64> = p
        .buffer_layout()
        .entries()
        .iter()
        .enumerate()
        .flat_map(|(t, e)| {
            let f = formula(t, &e.shape);
            let running_mean = e.name.ends_with("running_mean");
            f.into_iter().map(move |v| if running_mean { 0.1 * v } else { 1.0 + 0.5 * v * v })
        })
        .collect();
    let host: Vec<f64> = buffers;
    b.write(&host, Cpu::view_mut(&mut p.buffers)).unwrap();
    let n = batch * 3 * image_size * image_size;
    let images: Vec<f64> = (0..n).map(|j| (0.37 * j as f64 + 0.5).sin()).collect();

    tower.forward(&b, &mut p, &images, batch).unwrap();
    assert_close(
        "training-mode output vs open_clip",
        0,
        tower.out().unwrap(),
        &floats(&fixture["train_out"]),
        1e-10,
        1e-10,
    );
    let sums = fixture["buffer_sums"].as_object().unwrap();
    let stats = p.download_buffers(&b).unwrap();
    for e in p.buffer_layout().entries() {
        let got: f64 = stats[e.id.range()].iter().sum();
        let want = sums[relative(&e.name)].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-10 * (1.0 + want.abs()), "{}: Σ = {got}, open_clip {want}", e.name);
    }
    tower.set_training(false);
    tower.forward(&b, &mut p, &images, batch).unwrap();
    assert_close(
        "evaluation-mode output vs open_clip",
        0,
        tower.out().unwrap(),
        &floats(&fixture["eval_out"]),
        1e-10,
        1e-10,
    );
}
