//! Full-size models on the CPU: one training step (forward, loss, backward) of ViT-B/32 and RN50 CLIP at batch 2
//! gives a finite loss and gradients, and the parameter counts and state-dict sizes are exactly open_clip's
//! (`open_clip.create_model(name)`: ViT-B-32 151,277,313 parameters / 302 state-dict entries; RN50 102,007,137 /
//! 489, with 53,248 running-statistic values and 55 `num_batches_tracked`).

use cliprt::backend::cpu::CpuBackend;
use cliprt::data::tokenizer::Tokenizer;
use cliprt::model::clip::Clip;
use cliprt::model::config::ModelConfig;
use cliprt::testing;

type Cpu = CpuBackend<f32>;

fn one_step(name: &str, params: usize, state_dict_len: usize) {
    let b = Cpu::new();
    let config = ModelConfig::builtin(name).unwrap();
    let (mut model, mut store) = Clip::build(&b, &config, 0).unwrap();
    assert_eq!(store.num_params(), params, "{name}: parameter count");
    assert_eq!(model.state_dict(&b, &store).unwrap().len(), state_dict_len, "{name}: state-dict entries");

    let batch = 2;
    let size = config.vision_cfg.image_size;
    let images: Vec<f32> = testing::normal(&mut testing::rng(1), batch * 3 * size * size, 1.0);
    let tokens = Tokenizer::clip().tokenize_batch(&["a photo of a cat", "a diagram of a red square"], 77);
    let loss = model.forward_loss(&b, &mut store, &images, &tokens, batch).unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{name}: loss {loss}");
    store.zero_grads(&b).unwrap();
    model.backward(&b, &mut store, &images).unwrap();
    let grads = store.download_grads(&b).unwrap();
    assert!(grads.iter().all(|g| g.is_finite()), "{name}: non-finite gradient");
    let norm = grads.iter().map(|g| g * g).sum::<f64>().sqrt();
    assert!(norm > 0.0, "{name}: all gradients are zero");
    println!("{name}: loss {loss:.4}, gradient norm {norm:.4e}");
}

#[test]
fn full_size_vit_b_32_training_step_on_cpu() {
    one_step("ViT-B-32", 151_277_313, 302);
}

#[test]
fn full_size_rn50_training_step_on_cpu() {
    one_step("RN50", 102_007_137, 489);
}
