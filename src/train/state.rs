//! Checkpoints of a run: `checkpoint-<step>.safetensors` (exactly open_clip's state dict, as `last.safetensors`)
//! plus a sidecar `checkpoint-<step>.train.safetensors` (AdamW's first and second moments, `exp_avg.<name>` and
//! `exp_avg_sq.<name>`, f32, shapes of the parameters) and `checkpoint-<step>.json` ([`TrainState`]: step, data
//! position, RNG, the resolved settings and model config). Every file is written atomically (temp + rename), the
//! JSON last: a checkpoint counts only once its JSON exists, so an interrupted save is never picked up by `--resume`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::checkpoint::{self, StateDict, TensorData};
use crate::error::{Error, Result};
use crate::model::clip::Clip;
use crate::model::config::ModelConfig;
use crate::params::ParamStore;
use crate::train::config::TrainConfig;
use crate::train::data::DataPosition;

pub const STATE_FORMAT: &str = "cliprt-train-state-v1";

/// The random number generator the run draws from after initialisation: only the data order, a ChaCha8 stream per
/// epoch, so `(seed, stream = epoch)` is its whole state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub algorithm: String,
    pub seed: u64,
    pub stream: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: String,
    /// Optimiser steps done.
    pub step: u64,
    pub total_steps: u64,
    pub data_position: DataPosition,
    pub rng: RngState,
    /// Seconds spent in training steps so far (excluding evaluation and saving).
    pub train_seconds: f64,
    pub config: TrainConfig,
    pub model_config: ModelConfig,
    pub model_file: String,
    pub optimizer_file: String,
}

pub fn model_file(step: u64) -> String {
    format!("checkpoint-{step}.safetensors")
}
fn optimizer_file(step: u64) -> String {
    format!("checkpoint-{step}.train.safetensors")
}
fn state_file(step: u64) -> String {
    format!("checkpoint-{step}.json")
}

/// Saves the model, its optimiser sidecar and the state JSON for `state.step`, then `last.safetensors`.
pub fn save<B: Backend>(
    dir: &Path,
    backend: &B,
    model: &Clip<B>,
    store: &ParamStore<B>,
    state: &mut TrainState,
) -> Result<PathBuf> {
    state.model_file = model_file(state.step);
    state.optimizer_file = optimizer_file(state.step);
    // The model file and last.safetensors hold the same bytes: serialise once.
    let model_bytes = checkpoint::serialize_safetensors(&model.state_dict(backend, store)?)?;
    let model_path = dir.join(&state.model_file);
    checkpoint::write_atomic(&model_path, &model_bytes)?;
    checkpoint::save_safetensors(&dir.join(&state.optimizer_file), &optimizer_dict(backend, store)?)?;
    let json =
        serde_json::to_vec_pretty(state).map_err(|e| Error::Invalid { op: "save train state", msg: e.to_string() })?;
    checkpoint::write_atomic(&dir.join(state_file(state.step)), &json)?;
    checkpoint::write_atomic(&dir.join("last.safetensors"), &model_bytes)?;
    Ok(model_path)
}

fn optimizer_dict<B: Backend>(backend: &B, store: &ParamStore<B>) -> Result<StateDict> {
    let n = store.num_params();
    let (m, v) = store.download_adam_moments(backend)?.unwrap_or_else(|| (vec![0.0; n], vec![0.0; n]));
    let mut dict = StateDict::new();
    for e in store.layout().entries() {
        let take = |x: &[f64]| TensorData::F32(x[e.id.range()].iter().map(|&x| x as f32).collect());
        dict.insert(format!("exp_avg.{}", e.name), (e.shape.clone(), take(&m)));
        dict.insert(format!("exp_avg_sq.{}", e.name), (e.shape.clone(), take(&v)));
    }
    Ok(dict)
}

/// The newest complete checkpoint in `dir`: the highest step whose JSON, model and optimiser files all exist.
pub fn latest(dir: &Path) -> Result<(TrainState, PathBuf)> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: format!("{} (--resume expects the --out folder of an earlier `cliprt train`)", dir.display()),
        source,
    })?;
    let mut steps: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("checkpoint-")?.strip_suffix(".json")?.parse().ok()
        })
        .filter(|&s| dir.join(model_file(s)).is_file() && dir.join(optimizer_file(s)).is_file())
        .collect();
    steps.sort_unstable();
    let Some(&step) = steps.last() else {
        return Err(Error::Invalid {
            op: "resume",
            msg: format!(
                "{} holds no complete checkpoint (checkpoint-<step>.json with its .safetensors and \
                 .train.safetensors); train with --save-every N or let a run finish first",
                dir.display()
            ),
        });
    };
    let path = dir.join(state_file(step));
    let text =
        std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid { op: "resume", msg: format!("{}: {e}", path.display()) })?;
    if state.format != STATE_FORMAT || state.step != step {
        return Err(Error::Invalid {
            op: "resume",
            msg: format!("{}: not a {STATE_FORMAT} file for step {step}", path.display()),
        });
    }
    Ok((state, path))
}

/// Loads the model weights and AdamW moments of `state` from `dir`.
pub fn restore<B: Backend>(
    dir: &Path,
    backend: &B,
    model: &mut Clip<B>,
    store: &mut ParamStore<B>,
    state: &TrainState,
) -> Result<()> {
    model.load(backend, store, &dir.join(&state.model_file))?;
    let path = dir.join(&state.optimizer_file);
    let dict = checkpoint::load_safetensors(&path)?;
    let n = store.num_params();
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    for e in store.layout().entries() {
        for (prefix, dst) in [("exp_avg", &mut m), ("exp_avg_sq", &mut v)] {
            let name = format!("{prefix}.{}", e.name);
            match dict.get(&name) {
                Some((shape, TensorData::F32(values))) if *shape == e.shape => {
                    for (d, &x) in dst[e.id.range()].iter_mut().zip(values) {
                        *d = x as f64;
                    }
                }
                _ => {
                    return Err(Error::Invalid {
                        op: "resume",
                        msg: format!("{}: `{name}` is missing or not f32 of shape {:?}", path.display(), e.shape),
                    })
                }
            }
        }
    }
    if dict.len() != 2 * store.layout().entries().len() {
        return Err(Error::Invalid {
            op: "resume",
            msg: format!("{}: holds tensors of another model ({} tensors)", path.display(), dict.len()),
        });
    }
    store.set_adam_moments(backend, &m, &v)
}
