//! Issue #9 on the GPU: one whole step of every multi-view objective on `CudaBackend<f32>` (the fused CLIP loss for
//! every contrastive term, the nn-queue search for DeCLIP's NNS) against the same step on the CPU reference — the
//! loss and every parameter gradient — and a few bf16 training steps that stay finite and lower the loss.

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::Backend;
use cliprt::data::shapes::{self, ShapesConfig, Split};
use cliprt::data::tokenizer::Tokenizer;
use cliprt::model::clip::Clip;
use cliprt::model::config::ModelConfig;
use cliprt::objective::kind::{AugmentPolicy, ObjectiveKind, ObjectiveOptions};
use cliprt::objective::multiview::ObjectiveHeads;
use cliprt::params::{ParamBuilder, ParamStore};
use cliprt::testing;
use cliprt::train::views::{make_views, ViewBatch};
use half::bf16;

use crate::backend::backend;

const SMALL_MODEL: &str = r#"{
  "embed_dim": 32,
  "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
}"#;

const MULTI_VIEW: [ObjectiveKind; 6] = [
    ObjectiveKind::Declip,
    ObjectiveKind::Cl2l,
    ObjectiveKind::Siamlip,
    ObjectiveKind::Byolip,
    ObjectiveKind::Barlip,
    ObjectiveKind::Swalip,
];

fn options() -> ObjectiveOptions {
    ObjectiveOptions { head_scale: 1.0 / 32.0, local_embed_dim: 32, queue_size: 512, ..ObjectiveOptions::default() }
}

fn setup(kind: ObjectiveKind) -> (ModelConfig, ViewBatch) {
    let mut cfg = ModelConfig::from_json(SMALL_MODEL).unwrap();
    let tokenizer = if kind == ObjectiveKind::Declip { Tokenizer::declip() } else { Tokenizer::clip() };
    cfg.text_cfg.vocab_size = tokenizer.vocab_size();
    let shapes_cfg = ShapesConfig { resolution: 16, train_size: 256, held_out_size: 8, second_object: false, seed: 2 };
    let samples = shapes::samples(&shapes_cfg, Split::Train, &(0..24).collect::<Vec<_>>()).unwrap();
    (cfg, make_views(kind, AugmentPolicy::Paper, &samples, tokenizer, 16, 9, 0).unwrap())
}

fn build<B: Backend>(b: &B, kind: ObjectiveKind, cfg: &ModelConfig) -> (Clip<B>, ParamStore<B>, ObjectiveHeads<B>) {
    let mut pb = ParamBuilder::new();
    let clip = Clip::new(&mut pb, cfg).unwrap();
    let heads = pb.scope("objective", |pb| ObjectiveHeads::new(pb, kind, &options(), cfg)).unwrap();
    let store = pb.build(b, &mut testing::rng(21)).unwrap();
    (clip, store, heads)
}

fn step<B: Backend>(b: &B, kind: ObjectiveKind, cfg: &ModelConfig, views: &ViewBatch) -> (f64, Vec<f64>) {
    let (mut clip, mut store, mut heads) = build(b, kind, cfg);
    store.zero_grads(b).unwrap();
    let loss = heads.forward_backward(b, &mut clip, &mut store, views, 3, None).unwrap();
    (loss.total, store.download_grads(b).unwrap())
}

/// fp32 parity mode: the loss to 1e-4 and the whole gradient buffer to 1e-3 (relative L2).
#[test]
fn gpu_objectives_step_matches_cpu_f32() {
    let Some(gpu) = backend::<f32>() else { return };
    let cpu = CpuBackend::<f32>::new();
    for kind in MULTI_VIEW {
        let (cfg, views) = setup(kind);
        let (want_loss, want) = step(&cpu, kind, &cfg, &views);
        let (got_loss, got) = step(&gpu, kind, &cfg, &views);
        assert!(
            (got_loss - want_loss).abs() <= 1e-4 * want_loss.abs().max(1.0),
            "{}: loss {got_loss} on the GPU, {want_loss} on the CPU",
            kind.name()
        );
        let err: f64 = got.iter().zip(&want).map(|(g, w)| (g - w).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
        assert!(got.iter().all(|g| g.is_finite()), "{}: non-finite gradient", kind.name());
        assert!(err <= 1e-3 * norm.max(1e-12), "{}: gradient relative error {:.3e}", kind.name(), err / norm);
    }
}

/// bf16 training: 10 AdamW steps of each objective stay finite and lower the loss.
#[test]
fn gpu_objectives_bf16_steps_lower_the_loss() {
    let Some(gpu) = backend::<bf16>() else { return };
    for kind in MULTI_VIEW {
        let (cfg, views) = setup(kind);
        let (mut clip, mut store, mut heads) = build(&gpu, kind, &cfg);
        let mut losses = Vec::new();
        for s in 0..10 {
            store.zero_grads(&gpu).unwrap();
            let loss = heads.forward_backward(&gpu, &mut clip, &mut store, &views, 3, None).unwrap().total;
            assert!(loss.is_finite(), "{}: loss {loss} at step {s}", kind.name());
            losses.push(loss);
            let hp =
                cliprt::backend::AdamW { lr: 2e-3, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.1, step: s + 1 };
            store.adamw_step(&gpu, &hp).unwrap();
        }
        assert!(losses[9] < losses[0], "{}: {losses:?}", kind.name());
    }
}
