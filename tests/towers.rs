//! The ViT and text towers end to end on the CPU in f64: every parameter gradient against central differences of
//! `Σ w·out`, with all parameters moved away from their initial values; pooling, masking and shapes.

use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::Activation;
use cliprt::model::config::{TextConfig, VisionConfig, VisionLayers};
use cliprt::model::text::TextTransformer;
use cliprt::model::vit::VisionTransformer;
use cliprt::params::{ParamBuilder, ParamStore};
use cliprt::testing::{self, check_gradient, dot};

type Cpu = CpuBackend<f64>;

fn jittered(pb: ParamBuilder, seed: u64) -> ParamStore<Cpu> {
    testing::jittered_store(&Cpu::new(), pb, seed, 0.3).unwrap()
}

fn tiny_vision() -> VisionConfig {
    VisionConfig {
        image_size: 8,
        layers: VisionLayers::Transformer(2),
        width: 8,
        patch_size: Some(4),
        head_width: 4,
        mlp_ratio: 2.0,
    }
}

fn tiny_text() -> TextConfig {
    TextConfig { context_length: 5, vocab_size: 11, width: 8, heads: 2, layers: 2, mlp_ratio: 2.0 }
}

#[test]
fn vit_tower_grad_every_parameter() {
    let seed = testing::seed(31);
    let b = Cpu::new();
    for act in [Activation::Gelu, Activation::QuickGelu] {
        let mut pb = ParamBuilder::new();
        let mut vit = pb.scope("visual", |pb| VisionTransformer::new(pb, &tiny_vision(), 6, act)).unwrap();
        let mut p = jittered(pb, seed);
        let batch = 3;
        let images: Vec<f64> = testing::normal(&mut testing::rng(seed + 1), batch * 3 * 8 * 8, 1.0);
        vit.forward(&b, &p, &images, batch).unwrap();
        let w: Vec<f64> = testing::normal(&mut testing::rng(seed + 2), batch * 6, 1.0);
        p.zero_grads(&b).unwrap();
        vit.backward(&b, &mut p, &images, &w).unwrap();
        let grads = p.download_grads(&b).unwrap();
        let theta = p.download_master(&b).unwrap();
        check_gradient(&format!("vit {act:?}"), seed, &theta, &grads, 600, |t| {
            p.set_master(&b, t).unwrap();
            vit.forward(&b, &p, &images, batch).unwrap();
            dot(&w, vit.out().unwrap())
        });
    }
}

#[test]
fn text_tower_grad_every_parameter() {
    let seed = testing::seed(32);
    let b = Cpu::new();
    let mut pb = ParamBuilder::new();
    let mut text = TextTransformer::new(&mut pb, &tiny_text(), 6, Activation::Gelu).unwrap();
    let mut p = jittered(pb, seed);
    // SOT = 9, EOT = 10 (the largest id), padded with 0; the EOT sits at different positions.
    let tokens = [9, 3, 4, 10, 0, 9, 10, 0, 0, 0, 9, 1, 2, 5, 10];
    text.forward(&b, &p, &tokens, 3).unwrap();
    let w: Vec<f64> = testing::normal(&mut testing::rng(seed + 2), 3 * 6, 1.0);
    p.zero_grads(&b).unwrap();
    text.backward(&b, &mut p, &w).unwrap();
    let grads = p.download_grads(&b).unwrap();
    let theta = p.download_master(&b).unwrap();
    check_gradient("text tower", seed, &theta, &grads, 600, |t| {
        p.set_master(&b, t).unwrap();
        text.forward(&b, &p, &tokens, 3).unwrap();
        dot(&w, text.out().unwrap())
    });
    // Token embeddings of ids never used get no gradient; the causal mask means tokens after EOT do not matter.
    let emb = p.id("token_embedding.weight").unwrap();
    let unused = &grads[emb.offset + 6 * 8..emb.offset + 9 * 8]; // ids 6, 7, 8
    assert!(unused.iter().all(|&g| g == 0.0), "unused token ids must get zero gradient");
}

#[test]
fn text_tower_output_ignores_tokens_after_eot() {
    let b = Cpu::new();
    let mut pb = ParamBuilder::new();
    let mut text = TextTransformer::new(&mut pb, &tiny_text(), 6, Activation::Gelu).unwrap();
    let p = jittered(pb, 33);
    text.forward(&b, &p, &[9, 3, 10, 0, 0], 1).unwrap();
    let a = text.out().unwrap().to_vec();
    text.forward(&b, &p, &[9, 3, 10, 7, 2], 1).unwrap();
    assert_eq!(a, text.out().unwrap(), "the causal mask hides positions after the pooled EOT");
    text.forward(&b, &p, &[9, 4, 10, 0, 0], 1).unwrap();
    assert_ne!(a, text.out().unwrap(), "a token before EOT changes the output");
}

#[test]
fn vit_and_text_parameter_names_follow_open_clip() {
    let mut pb = ParamBuilder::new();
    pb.scope("visual", |pb| VisionTransformer::<Cpu>::new(pb, &tiny_vision(), 6, Activation::Gelu)).unwrap();
    TextTransformer::<Cpu>::new(&mut pb, &tiny_text(), 6, Activation::Gelu).unwrap();
    let names: Vec<String> = pb.param_layout().entries().iter().map(|e| format!("{} {:?}", e.name, e.shape)).collect();
    for want in [
        "visual.conv1.weight [8, 3, 4, 4]",
        "visual.class_embedding [8]",
        "visual.positional_embedding [5, 8]",
        "visual.ln_pre.weight [8]",
        "visual.transformer.resblocks.1.attn.in_proj_weight [24, 8]",
        "visual.transformer.resblocks.1.attn.out_proj.bias [8]",
        "visual.transformer.resblocks.0.mlp.c_fc.weight [16, 8]",
        "visual.ln_post.bias [8]",
        "visual.proj [8, 6]",
        "token_embedding.weight [11, 8]",
        "positional_embedding [5, 8]",
        "transformer.resblocks.1.ln_2.weight [8]",
        "transformer.resblocks.0.mlp.c_proj.weight [8, 16]",
        "ln_final.weight [8]",
        "text_projection [8, 6]",
    ] {
        assert!(names.iter().any(|n| n == want), "missing `{want}` in {names:#?}");
    }
}
