//! A whole CLIP training step on the CPU (both towers, the contrastive loss, the backward, AdamW) is bit-identical
//! whatever the thread count and whatever instruction set the kernels run with (baseline, AVX2, AVX-512).

use cliprt::backend::cpu::simd::{self, Level};
use cliprt::backend::cpu::CpuBackend;
use cliprt::backend::AdamW;
use cliprt::model::clip::Clip;
use cliprt::model::config::{ModelConfig, TextConfig, VisionConfig, VisionLayers};
use cliprt::testing::{indices, normal, rng, seed};

/// A small CLIP with every path of tiny-ViT: patch embedding, multi-head attention (causal text), exact GELU, the
/// pooled last block, the token embedding.
fn config() -> ModelConfig {
    ModelConfig {
        embed_dim: 32,
        vision_cfg: VisionConfig {
            image_size: 32,
            layers: VisionLayers::Transformer(2),
            width: 64,
            patch_size: Some(8),
            head_width: 32,
            mlp_ratio: 4.0,
        },
        text_cfg: TextConfig { context_length: 12, vocab_size: 500, width: 64, heads: 2, layers: 2, mlp_ratio: 4.0 },
        quick_gelu: false,
    }
}

/// Two training steps; the bits of the losses and of every master weight after them.
fn two_steps(s: u64, threads: usize, level: Level) -> Vec<u32> {
    simd::set_max_level(level);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let bits = pool.install(|| {
        let (cfg, batch) = (config(), 24);
        let b = CpuBackend::<f32>::new();
        let (mut clip, mut params) = Clip::build(&b, &cfg, s).unwrap();
        let mut r = rng(s + 1);
        let images: Vec<f32> = normal(&mut r, batch * 3 * 32 * 32, 1.0);
        let context = cfg.text_cfg.context_length;
        let mut tokens = indices(&mut r, batch * context, 498);
        for (i, row) in tokens.chunks_mut(context).enumerate() {
            // [SOT, words…, EOT, 0…] with 0 to context − 2 words.
            let words = i % (context - 1);
            row[0] = 498;
            row[words + 1] = 499;
            row[words + 2..].fill(0);
        }
        let mut bits = Vec::new();
        for step in 1..=2 {
            params.zero_grads(&b).unwrap();
            let loss = clip.forward_loss(&b, &mut params, &images, &tokens, batch).unwrap();
            clip.backward(&b, &mut params, &images).unwrap();
            let hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.1, step };
            params.adamw_step(&b, &hp).unwrap();
            bits.push((loss as f32).to_bits());
        }
        bits.extend(params.master.iter().map(|v| v.to_bits()));
        bits
    });
    simd::set_max_level(Level::Avx512);
    bits
}

#[test]
fn training_step_is_bit_identical_across_threads_and_instruction_sets() {
    let s = seed(401);
    let reference = two_steps(s, 1, Level::Avx512);
    for (threads, level) in [(2, Level::Avx512), (3, Level::Avx512), (2, Level::Avx2), (2, Level::Baseline)] {
        let got = two_steps(s, threads, level);
        let differ = got.iter().zip(&reference).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{threads} threads at {level:?}: {differ} of {} values differ (seed {s})", got.len());
    }
}
