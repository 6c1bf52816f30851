//! Parity with open_clip (PyTorch) on the CPU backend, from the fixtures `scripts/make_fixtures.py models` wrote:
//! tiny ViT (GELU and QuickGELU) and modified-ResNet CLIP models, every parameter and BatchNorm statistic moved off
//! its initial value. cliprt loads open_clip's state dict strictly, runs one training-mode forward and backward, and
//! must match the embeddings and loss (‖a−b‖ ≤ 1e-4·‖b‖ + 1e-6) and every parameter gradient (≤ 1e-3·‖b‖ + 1e-6).

use std::path::{Path, PathBuf};

use cliprt::backend::cpu::CpuBackend;
use cliprt::checkpoint::{self, StateDict, TensorData};
use cliprt::model::clip::Clip;
use cliprt::model::config::ModelConfig;
use cliprt::params::ParamStore;

type Cpu = CpuBackend<f32>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn floats(dict: &StateDict, name: &str) -> Vec<f32> {
    match &dict.get(name).unwrap_or_else(|| panic!("fixture lacks `{name}`")).1 {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

fn ints(dict: &StateDict, name: &str) -> Vec<i32> {
    match &dict[name].1 {
        TensorData::I64(v) => v.iter().map(|&x| x as i32).collect(),
        TensorData::F32(_) => panic!("`{name}` should be int64"),
    }
}

/// ‖got − want‖ ≤ rtol·‖want‖ + 1e-6, no NaN; prints the relative error.
fn assert_rel(label: &str, got: &[f32], want: &[f32], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    assert!(got.iter().all(|v| v.is_finite()), "{label}: non-finite value");
    let err: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    let relative = err / norm.max(1e-30);
    println!("{label}: relative error {relative:.2e}");
    assert!(
        err <= rtol * norm + 1e-6,
        "{label}: ‖err‖ {err:.3e} vs ‖ref‖ {norm:.3e} (relative {relative:.2e}, allowed {rtol:e})"
    );
}

struct Loaded {
    backend: Cpu,
    model: Clip<Cpu>,
    store: ParamStore<Cpu>,
    io: StateDict,
    batch: usize,
}

fn load(kind: &str) -> Loaded {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("clip_{kind}.json"))).unwrap()).unwrap();
    let config = ModelConfig::from_json(&meta["config"].to_string()).unwrap();
    let backend = Cpu::new();
    let (mut model, mut store) = Clip::build(&backend, &config, 0).unwrap();
    model.load(&backend, &mut store, &fixture(&format!("clip_{kind}.safetensors"))).unwrap();
    let io = checkpoint::load_safetensors(&fixture(&format!("clip_{kind}_io.safetensors"))).unwrap();
    Loaded { backend, model, store, io, batch: meta["batch"].as_u64().unwrap() as usize }
}

/// One training-mode forward and backward; checks embeddings, loss, every gradient and the running statistics.
fn check_step(kind: &str) {
    let Loaded { backend: b, mut model, mut store, io, batch } = load(kind);
    let images = floats(&io, "images");
    let tokens = ints(&io, "tokens");
    let loss = model.forward_loss(&b, &mut store, &images, &tokens, batch).unwrap();
    assert_rel(&format!("{kind}: image embeddings"), model.visual.out().unwrap(), &floats(&io, "image_features"), 1e-4);
    assert_rel(&format!("{kind}: text embeddings"), model.text.out().unwrap(), &floats(&io, "text_features"), 1e-4);
    assert_rel(&format!("{kind}: loss"), &[loss as f32], &floats(&io, "loss"), 1e-4);

    store.zero_grads(&b).unwrap();
    model.backward(&b, &mut store, &images).unwrap();
    let grads = store.download_grads(&b).unwrap();
    let mut checked = 0;
    for e in store.layout().entries() {
        let got: Vec<f32> = grads[e.id.range()].iter().map(|&g| g as f32).collect();
        assert_rel(&format!("{kind}: gradient of {}", e.name), &got, &floats(&io, &format!("grad.{}", e.name)), 1e-3);
        checked += 1;
    }
    assert_eq!(checked, io.keys().filter(|k| k.starts_with("grad.")).count(), "every open_clip parameter is compared");

    let buffers = store.download_buffers(&b).unwrap();
    for e in store.buffer_layout().entries() {
        let got: Vec<f32> = buffers[e.id.range()].iter().map(|&v| v as f32).collect();
        assert_rel(
            &format!("{kind}: {} after one training step", e.name),
            &got,
            &floats(&io, &format!("after.{}", e.name)),
            1e-4,
        );
    }
    for (name, value) in model.counters() {
        assert_eq!(value as f32, floats(&io, &format!("after.{name}"))[0], "{kind}: {name}");
    }
}

#[test]
fn open_clip_vit_forward_loss_and_every_gradient_match() {
    check_step("vit");
}

#[test]
fn open_clip_vit_quickgelu_forward_loss_and_every_gradient_match() {
    check_step("vit_quickgelu");
}

#[test]
fn open_clip_resnet_forward_loss_every_gradient_and_running_stats_match() {
    check_step("resnet");
}

#[test]
fn open_clip_resnet_eval_mode_embeddings_match() {
    let Loaded { backend: b, mut model, mut store, io, batch } = load("resnet");
    let images = floats(&io, "images");
    // As the fixture did: one training-mode forward (which updates the running statistics), then evaluation mode.
    model.forward_loss(&b, &mut store, &images, &ints(&io, "tokens"), batch).unwrap();
    model.visual.set_training(false);
    let out = model.encode_image(&b, &mut store, &images, batch).unwrap().to_vec();
    assert_rel("resnet: eval-mode image embeddings", &out, &floats(&io, "eval_image_features"), 1e-4);
}

#[test]
fn open_clip_state_dict_round_trip_is_bit_exact() {
    for kind in ["vit", "resnet"] {
        let original = checkpoint::load_safetensors(&fixture(&format!("clip_{kind}.safetensors"))).unwrap();
        let Loaded { backend: b, mut model, mut store, .. } = load(kind);
        let dir = std::env::temp_dir().join(format!("cliprt-roundtrip-{kind}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        model.save(&b, &store, &path).unwrap();
        let saved = checkpoint::load_safetensors(&path).unwrap();
        assert_eq!(saved, original, "{kind}: saving what was loaded must reproduce open_clip's state dict exactly");
        // And back in: same bits in the store.
        let before = store.download_master(&b).unwrap();
        model.load(&b, &mut store, &path).unwrap();
        assert_eq!(store.download_master(&b).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn open_clip_state_dict_loading_is_strict_and_names_the_problem() {
    let Loaded { backend: b, mut model, mut store, .. } = load("vit");
    let mut dict = checkpoint::load_safetensors(&fixture("clip_vit.safetensors")).unwrap();
    let before = store.download_master(&b).unwrap();
    let removed = dict.remove("visual.proj").unwrap();
    let err = model.load_state_dict(&b, &mut store, &dict).unwrap_err().to_string();
    assert!(err.contains("missing 1") && err.contains("visual.proj"), "{err}");
    dict.insert("visual.proj".into(), removed);
    dict.insert("visual.extra".into(), (vec![1], TensorData::F32(vec![0.0])));
    let err = model.load_state_dict(&b, &mut store, &dict).unwrap_err().to_string();
    assert!(err.contains("unexpected 1") && err.contains("visual.extra"), "{err}");
    dict.remove("visual.extra");
    dict.insert("visual.proj".into(), (vec![2, 3], TensorData::F32(vec![0.0; 6])));
    let err = model.load_state_dict(&b, &mut store, &dict).unwrap_err().to_string();
    assert!(err.contains("visual.proj") && err.contains("shape"), "{err}");
    assert_eq!(store.download_master(&b).unwrap(), before, "a failed load must leave the weights untouched");
    let corrupt = std::env::temp_dir().join(format!("cliprt-corrupt-{}.safetensors", std::process::id()));
    std::fs::write(&corrupt, b"not a safetensors file").unwrap();
    let err = model.load(&b, &mut store, &corrupt).unwrap_err().to_string();
    assert!(err.contains("safetensors"), "{err}");
    std::fs::remove_file(&corrupt).unwrap();
}

/// With `CLIPRT_EXPORT_DIR` set, writes cliprt-initialised tiny ViT and ResNet CLIPs (model file, inputs and
/// embeddings) for `scripts/check_open_clip_load.py`, which loads each model file into open_clip with a strict
/// `load_state_dict` and compares the embeddings. Without it, checks the same files can be written and read back.
#[test]
fn open_clip_export_cliprt_initialised_models() {
    let dir = match std::env::var("CLIPRT_EXPORT_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => std::env::temp_dir().join(format!("cliprt-export-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).unwrap();
    for (kind, source) in [("vit", "clip_vit.json"), ("resnet", "clip_resnet.json")] {
        let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture(source)).unwrap()).unwrap();
        let config = ModelConfig::from_json(&meta["config"].to_string()).unwrap();
        let b = Cpu::new();
        let (mut model, mut store) = Clip::build(&b, &config, 7).unwrap();
        model.visual.set_training(false);
        let batch = 2;
        let size = config.vision_cfg.image_size;
        let images: Vec<f32> = cliprt::testing::normal(&mut cliprt::testing::rng(8), batch * 3 * size * size, 1.0);
        let context = config.text_cfg.context_length;
        let vocab = config.text_cfg.vocab_size as i32;
        let mut tokens = vec![0i32; batch * context];
        for (i, row) in tokens.chunks_mut(context).enumerate() {
            row[..4].copy_from_slice(&[vocab - 2, 5 + i as i32, 9, vocab - 1]);
        }
        let image_features = model.encode_image(&b, &mut store, &images, batch).unwrap().to_vec();
        let text_features = model.encode_text(&b, &store, &tokens, batch).unwrap().to_vec();
        model.save(&b, &store, &dir.join(format!("{kind}.safetensors"))).unwrap();
        let io: StateDict = [
            ("images".to_string(), (vec![batch, 3, size, size], TensorData::F32(images))),
            ("tokens".to_string(), (vec![batch, context], TensorData::I64(tokens.iter().map(|&t| t as i64).collect()))),
            ("image_features".to_string(), (vec![batch, config.embed_dim], TensorData::F32(image_features))),
            ("text_features".to_string(), (vec![batch, config.embed_dim], TensorData::F32(text_features))),
        ]
        .into_iter()
        .collect();
        checkpoint::save_safetensors(&dir.join(format!("{kind}_io.safetensors")), &io).unwrap();
        std::fs::write(dir.join(format!("{kind}.json")), meta["config"].to_string()).unwrap();
        let back = checkpoint::load_safetensors(&dir.join(format!("{kind}_io.safetensors"))).unwrap();
        assert_eq!(back, io);
    }
    if std::env::var("CLIPRT_EXPORT_DIR").is_err() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
