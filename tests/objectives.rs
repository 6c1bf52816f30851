//! `cliprt train --objective X` (issue #9) end to end on the CPU: every objective trains 20 steps with a finite,
//! decreasing loss on the shapes set; the binary writes summary.json with a finite `final_loss`; the views are a
//! function of (seed, step); and the whole multi-view step's gradients — towers, heads, both logit scales — match
//! central differences in f64 for DeCLIP and every member of the CL2L family.
//!
//! (Each loss term already has its own finite-difference test in tests/objective_*.rs; this checks the wiring:
//! which rows of which view each term reads, that every gradient reaches its tower, and the weights.)

use std::path::{Path, PathBuf};

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
use cliprt::train::config::TrainArgs;
use cliprt::train::views::{make_views, ViewBatch};
use cliprt::train::{self, Outcome};

/// 16×16 images, one ViT block of width 32, a one-block text tower: a 20-step run takes seconds.
const SMALL_MODEL: &str = r#"{
  "embed_dim": 32,
  "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
}"#;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cliprt-objectives-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn small_run(dir: &Path, objective: ObjectiveKind) -> TrainArgs {
    let model = dir.join("small.json");
    std::fs::write(&model, SMALL_MODEL).unwrap();
    TrainArgs {
        model_config: Some(model),
        train_size: Some(512),
        held_out_size: Some(70),
        batch_size: Some(32),
        steps: Some(20),
        warmup: Some(2),
        lr: Some(2e-3),
        eval_every: Some(0),
        device: Some("cpu".into()),
        out: Some(dir.join("run")),
        no_progress: true,
        objective: Some(objective),
        head_scale: Some(1.0 / 32.0),
        local_embed_dim: Some(32),
        queue_size: Some(256),
        ..TrainArgs::default()
    }
}

fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

/// 20 steps: finite losses, the mean of the last five below the mean of the first five, summary written.
fn trains(objective: ObjectiveKind) {
    let dir = scratch(objective.name());
    let args = small_run(&dir, objective);
    let summary = match train::run(&args).unwrap() {
        Outcome::Finished(s) => s,
        Outcome::Stopped { .. } => panic!("the run stopped early"),
    };
    assert_eq!(summary.objective, objective.name());
    assert!(summary.final_loss.is_finite(), "{}: final loss {}", objective.name(), summary.final_loss);
    let l = losses(&dir.join("run"));
    assert_eq!(l.len(), 20);
    assert!(l.iter().all(|x| x.is_finite()), "{}: {l:?}", objective.name());
    let (first, last) = (l[..5].iter().sum::<f64>() / 5.0, l[15..].iter().sum::<f64>() / 5.0);
    assert!(
        last < first,
        "{}: loss did not decrease: first five {first:.4}, last five {last:.4}: {l:?}",
        objective.name()
    );
    // The model file loads into a plain CLIP (the objective's heads are skipped) and evaluates.
    let cfg =
        ModelConfig::from_json(&std::fs::read_to_string(dir.join("run").join("model_config.json")).unwrap()).unwrap();
    let backend = CpuBackend::<f32>::new();
    let (mut model, mut store) = Clip::build(&backend, &cfg, 0).unwrap();
    model.load(&backend, &mut store, &dir.join("run").join("last.safetensors")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn objective_clip_trains_20_steps() {
    trains(ObjectiveKind::Clip);
}
#[test]
fn objective_declip_trains_20_steps() {
    trains(ObjectiveKind::Declip);
}
#[test]
fn objective_cl2l_trains_20_steps() {
    trains(ObjectiveKind::Cl2l);
}
#[test]
fn objective_siamlip_trains_20_steps() {
    trains(ObjectiveKind::Siamlip);
}
#[test]
fn objective_byolip_trains_20_steps() {
    trains(ObjectiveKind::Byolip);
}
#[test]
fn objective_barlip_trains_20_steps() {
    trains(ObjectiveKind::Barlip);
}
#[test]
fn objective_swalip_trains_20_steps() {
    trains(ObjectiveKind::Swalip);
}

/// The issue's check through the binary: `cliprt train --objective X --steps 20 --out DIR` exits 0 and writes a
/// finite `final_loss` (small model and heads so that CI stays fast).
#[test]
fn objective_cli_writes_summary_for_every_objective() {
    let dir = scratch("cli");
    std::fs::write(dir.join("small.json"), SMALL_MODEL).unwrap();
    for objective in ObjectiveKind::ALL {
        let out = dir.join(objective.name());
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_cliprt"))
            .args(["train", "--objective", objective.name(), "--steps", "20", "--out"])
            .arg(&out)
            .args(["--model-config"])
            .arg(dir.join("small.json"))
            .args(["--device", "cpu", "--batch-size", "16", "--train-size", "256", "--held-out-size", "35"])
            .args(["--eval-every", "0", "--head-scale", "0.03125", "--queue-size", "128", "--no-progress"])
            .output()
            .unwrap();
        assert!(status.status.success(), "{}: {}", objective.name(), String::from_utf8_lossy(&status.stderr));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        let loss = summary["final_loss"].as_f64().unwrap();
        assert!(loss.is_finite(), "{}: final_loss {loss}", objective.name());
        assert_eq!(summary["objective"], objective.name());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad settings are errors naming the setting.
#[test]
fn objective_bad_settings_are_clear_errors() {
    let dir = scratch("bad");
    let mut args = small_run(&dir, ObjectiveKind::Declip);
    args.accum_freq = Some(2);
    let msg = train::run(&args).err().unwrap().to_string();
    assert!(msg.contains("accum_freq"), "{msg}");
    let mut args = small_run(&dir, ObjectiveKind::Byolip);
    args.ema_momentum = Some(1.5);
    let msg = train::run(&args).err().unwrap().to_string();
    assert!(msg.contains("ema_momentum"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------------------ views -------------

fn samples(n: usize) -> Vec<shapes::Sample> {
    let cfg = ShapesConfig { resolution: 16, train_size: 64, held_out_size: 8, second_object: false, seed: 1 };
    shapes::samples(&cfg, Split::Train, &(0..n).collect::<Vec<_>>()).unwrap()
}

/// Views depend on (seed, step) only; each objective gets its number of views; DeCLIP's first caption view is
/// masked with labels exactly where it differs or was kept.
#[test]
fn objective_views_are_seeded_and_shaped() {
    let s = samples(6);
    for kind in ObjectiveKind::ALL {
        let tok = if kind == ObjectiveKind::Declip { Tokenizer::declip() } else { Tokenizer::clip() };
        let a = make_views(kind, AugmentPolicy::Paper, &s, tok, 16, 7, 3).unwrap();
        let b = make_views(kind, AugmentPolicy::Paper, &s, tok, 16, 7, 3).unwrap();
        let c = make_views(kind, AugmentPolicy::Paper, &s, tok, 16, 7, 4).unwrap();
        assert_eq!(a.images, b.images);
        assert_eq!(a.tokens, b.tokens);
        assert_ne!(a.images, c.images, "{}: another step gives other views", kind.name());
        let (vi, vt) = kind.views();
        assert_eq!((a.image_views, a.text_views), (vi, vt));
        assert_eq!(a.images.len(), vi * 6 * 3 * 16 * 16);
        assert_eq!(a.tokens.len(), vt * 6 * 16);
        assert_eq!(a.mlm_labels.is_some(), kind == ObjectiveKind::Declip);
    }
    // Masked positions: the labels hold the original ids, the rest −100.
    let a = make_views(ObjectiveKind::Declip, AugmentPolicy::Paper, &s, Tokenizer::declip(), 16, 7, 3).unwrap();
    let plain = Tokenizer::declip().tokenize_batch(&s.iter().map(|x| x.caption.as_str()).collect::<Vec<_>>(), 16);
    let labels = a.mlm_labels.unwrap();
    for (i, (&orig, &label)) in plain.iter().zip(&labels).enumerate() {
        if label == -100 {
            assert_eq!(a.tokens[i], orig, "an unselected token changed at {i}");
        } else {
            assert_eq!(label, orig);
        }
    }
}

// ------------------------------------------------------------------------------------------ gradients --------

/// A tiny f64 model: 8×8 images in 4 patches, width 8, one block per tower, context 16.
const TINY_MODEL: &str = r#"{
  "embed_dim": 8,
  "vision_cfg": {"image_size": 8, "layers": 1, "width": 8, "patch_size": 4, "head_width": 8},
  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1}
}"#;

type F64 = CpuBackend<f64>;

fn build(
    kind: ObjectiveKind,
    cfg: &ModelConfig,
    o: &ObjectiveOptions,
) -> (Clip<F64>, ParamStore<F64>, ObjectiveHeads<F64>) {
    let backend = F64::new();
    let mut pb = ParamBuilder::new();
    let clip = Clip::new(&mut pb, cfg).unwrap();
    let heads = pb.scope("objective", |pb| ObjectiveHeads::new(pb, kind, o, cfg)).unwrap();
    let store = pb.build(&backend, &mut testing::rng(11)).unwrap();
    (clip, store, heads)
}

/// Loss at `master` (a fresh model each time, so DeCLIP's queue starts from the same rows), and the gradients.
fn loss_and_grads(
    kind: ObjectiveKind,
    cfg: &ModelConfig,
    o: &ObjectiveOptions,
    master: Option<&[f64]>,
    views: &ViewBatch,
) -> (f64, Vec<f64>, Vec<f64>) {
    let backend = F64::new();
    let (mut clip, mut store, mut heads) = build(kind, cfg, o);
    if let Some(m) = master {
        store.set_master(&backend, m).unwrap();
    }
    store.zero_grads(&backend).unwrap();
    let loss = heads.forward_backward(&backend, &mut clip, &mut store, views, 5, None).unwrap();
    (loss.total, store.download_master(&backend).unwrap(), store.download_grads(&backend).unwrap())
}

/// Central differences of the step's loss against its gradients, for the parameters `pick` selects (by name).
///
/// Stop-gradients make the loss's true derivative differ from the training gradient wherever a parameter also moves
/// a DETACHED target (SimSiam's z, SiamLIP's z, SwALIP's Sinkhorn targets), so those objectives are checked either
/// with that term's weight at 0 (the rest of the wiring) or on the parameters that only reach the online side (the
/// predictors, the logit scales), where the two agree.
fn check_gradients(kind: ObjectiveKind, o: ObjectiveOptions, pick: impl Fn(&str) -> bool) {
    let mut cfg = ModelConfig::from_json(TINY_MODEL).unwrap();
    let tokenizer = if kind == ObjectiveKind::Declip { Tokenizer::declip() } else { Tokenizer::clip() };
    cfg.text_cfg.vocab_size = tokenizer.vocab_size();
    let cfg_shapes = ShapesConfig { resolution: 8, train_size: 64, held_out_size: 8, second_object: false, seed: 1 };
    let s = shapes::samples(&cfg_shapes, Split::Train, &(0..6).collect::<Vec<_>>()).unwrap();
    let views = make_views(kind, AugmentPolicy::Paper, &s, tokenizer, 16, 3, 1).unwrap();
    let (_, master, grads) = loss_and_grads(kind, &cfg, &o, None, &views);
    // Every logit scale, plus parameters drawn at random across the whole buffer (towers and heads).
    let backend = F64::new();
    let (_, store, _) = build(kind, &cfg, &o);
    let layout = store.layout().entries().to_vec();
    let mut picks: Vec<(String, usize)> = Vec::new();
    let mut rng = testing::rng(kind as u64 + 1);
    use rand::Rng;
    for e in layout.iter().filter(|e| e.id.len > 0 && pick(&e.name)) {
        // One element of every tensor that is not a token-embedding row no caption uses.
        if e.name == "token_embedding.weight" {
            continue;
        }
        picks.push((e.name.clone(), e.id.offset + rng.random_range(0..e.id.len)));
    }
    let _ = backend;
    let h = 1e-5;
    let mut worst = (0.0f64, String::new());
    for (name, i) in &picks {
        let mut plus = master.clone();
        plus[*i] += h;
        let mut minus = master.clone();
        minus[*i] -= h;
        let lp = loss_and_grads(kind, &cfg, &o, Some(&plus), &views).0;
        let lm = loss_and_grads(kind, &cfg, &o, Some(&minus), &views).0;
        let numeric = (lp - lm) / (2.0 * h);
        let err = (numeric - grads[*i]).abs() / (1e-6 + numeric.abs().max(grads[*i].abs()));
        if err > worst.0 {
            worst = (err, format!("{name}[{i}]: analytic {:.6e}, numeric {numeric:.6e}", grads[*i]));
        }
    }
    assert!(picks.len() >= 2, "{}: nothing picked", kind.name());
    assert!(worst.0 < 1e-4, "{}: worst relative error {:.2e} at {}", kind.name(), worst.0, worst.1);
}

fn tiny_options() -> ObjectiveOptions {
    ObjectiveOptions { head_scale: 1.0 / 128.0, local_embed_dim: 8, queue_size: 16, ..ObjectiveOptions::default() }
}

fn everything(_: &str) -> bool {
    true
}

/// MVS, NNS and TSS through both towers (ISS off: its z is detached), then ISS on its predictor.
#[test]
fn objective_declip_step_gradients_match_finite_differences() {
    check_gradients(ObjectiveKind::Declip, ObjectiveOptions { iss_weight: 0.0, ..tiny_options() }, everything);
    check_gradients(ObjectiveKind::Declip, tiny_options(), |n| {
        n.contains("iss_predictor") || n.contains("logit_scale")
    });
}
#[test]
fn objective_cl2l_step_gradients_match_finite_differences() {
    check_gradients(ObjectiveKind::Cl2l, tiny_options(), everything);
}
/// SiamLIP's distances on the predictors (their targets z are detached) with everything else in the loss.
#[test]
fn objective_siamlip_step_gradients_match_finite_differences() {
    check_gradients(ObjectiveKind::Siamlip, tiny_options(), |n| {
        n.contains("ssl_predictor") || n.contains("logit_scale")
    });
}
/// Barlow Twins has no stop-gradient: every parameter.
#[test]
fn objective_barlip_step_gradients_match_finite_differences() {
    check_gradients(ObjectiveKind::Barlip, tiny_options(), everything);
}
/// SwALIP's targets come from its own logits (detached): the logit scales, which the targets do not see.
#[test]
fn objective_swalip_step_gradients_match_finite_differences() {
    check_gradients(ObjectiveKind::Swalip, tiny_options(), |n| n.contains("logit_scale"));
}

/// The text tower's all-token forward (DeCLIP's MLM needs every token) gives the pooled forward's embeddings.
#[test]
fn objective_text_all_tokens_forward_matches_pooled() {
    let cfg = ModelConfig::from_json(SMALL_MODEL).unwrap();
    let backend = CpuBackend::<f64>::new();
    let (mut clip, store) = Clip::build(&backend, &cfg, 4).unwrap();
    let s = samples(5);
    let texts: Vec<&str> = s.iter().map(|x| x.caption.as_str()).collect();
    let tokens = Tokenizer::clip().tokenize_batch(&texts, 16);
    clip.text.forward(&backend, &store, &tokens, 5).unwrap();
    let pooled = backend.download(clip.text.out().unwrap()).unwrap();
    clip.text.forward_all_tokens(&backend, &store, &tokens, 5).unwrap();
    let all = backend.download(clip.text.out().unwrap()).unwrap();
    for (a, b) in pooled.iter().zip(&all) {
        assert!((a - b).abs() < 1e-10, "{a} vs {b}");
    }
}

/// `--augment none` gives every image view the whole image (the normalised pixels of the plain pipeline), while
/// `geometric` keeps the crops.
#[test]
fn objective_augment_none_views_are_the_whole_image() {
    let s = samples(4);
    let none = make_views(ObjectiveKind::Cl2l, AugmentPolicy::None, &s, Tokenizer::clip(), 16, 7, 3).unwrap();
    let plane = 3 * 16 * 16;
    let cfg = ShapesConfig { resolution: 16, train_size: 64, held_out_size: 8, second_object: false, seed: 1 };
    let (plain, _, _) = shapes::batch(&cfg, Split::Train, &(0..4).collect::<Vec<_>>()).unwrap();
    for v in 0..3 {
        let view = &none.images[v * 4 * plane..(v + 1) * 4 * plane];
        let err = view.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-4, "view {v}: max difference {err} from the plain images");
    }
    let geo = make_views(ObjectiveKind::Cl2l, AugmentPolicy::Geometric, &s, Tokenizer::clip(), 16, 7, 3).unwrap();
    assert_ne!(&geo.images[plane * 4..], &none.images[plane * 4..]);
}
