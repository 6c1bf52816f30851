//! What a training run is asked to do: defaults, then a `--config file.toml`, then command-line flags, in that order
//! of precedence. The resolved [`TrainConfig`] is written into every checkpoint sidecar, so a resumed run continues
//! with exactly the settings it started with.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::Precision;
use crate::error::{Error, Result};
use crate::objective::kind::{ObjectiveKind, ObjectiveOptions};
use crate::schedule::ScheduleKind;

/// Optimiser steps of the default run: calibrated so that `cargo run --release -- train` on a 2-core CPU trains in
/// at most 120 s and reaches ≥ 0.90 zero-shot top-1 on the held-out shapes (see README and docs/perf/cpu.md).
pub const DEFAULT_STEPS: u64 = 300;

/// Every setting of a run. Field names are the TOML keys (and the flags, with `-` for `_`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Built-in model name (open_clip's: ViT-B-32, RN50, …, tiny-ViT, tiny-RN); ignored when `model_config` is set.
    pub model: String,
    /// An open_clip model-config JSON file.
    pub model_config: Option<PathBuf>,
    /// Training data: `shapes` (the embedded data set).
    pub data: String,
    /// Seed of the shapes data set (the held-out split is fixed by it, whatever the model seed).
    pub data_seed: u64,
    pub train_size: usize,
    pub held_out_size: usize,
    /// Draw a second object in every image (SPEC §5).
    pub second_object: bool,
    pub batch_size: usize,
    /// Optimiser steps; `epochs` instead gives `ceil(epochs · train_size / batch_size)`.
    pub steps: Option<u64>,
    pub epochs: Option<f64>,
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
    pub schedule: ScheduleKind,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this value (none: no clipping).
    pub grad_clip_norm: Option<f64>,
    /// Micro-batches per step (open_clip `--accum-freq`); must divide `batch_size`.
    pub accum_freq: usize,
    /// Seed of the model's initialisation and of the data order.
    pub seed: u64,
    /// `auto` (the GPU when one is usable, else the CPU), `cpu`, `cuda` or `cuda:0`.
    pub device: String,
    /// Compute precision: `auto` (bf16 on a GPU, fp32 on the CPU), `bf16` (GPU only) or `fp32` (on a GPU: the
    /// all-fp32 parity mode). Master weights and optimiser state are fp32 in every mode.
    pub precision: Precision,
    /// CPU threads (default: all cores).
    pub threads: Option<usize>,
    /// Output folder (default: `runs/<date>-<time>`).
    pub out: Option<PathBuf>,
    /// Zero-shot evaluation on `eval_subset` held-out images every this many steps (0: only at the end).
    pub eval_every: u64,
    pub eval_subset: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub save_every: u64,
    /// Stop after this step as if interrupted (the schedule still spans `steps`): for `--resume` tests and
    /// time-sliced jobs.
    pub stop_at: Option<u64>,
    /// The training objective (SPEC §1–3): clip, declip, cl2l, siamlip, byolip, barlip or swalip.
    pub objective: ObjectiveKind,
    /// Its weights and sizes (the papers' defaults).
    pub objective_options: ObjectiveOptions,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "tiny-ViT".into(),
            model_config: None,
            data: "shapes".into(),
            data_seed: 0,
            train_size: 20_000,
            held_out_size: 2_000,
            second_object: false,
            batch_size: 256,
            steps: None,
            epochs: None,
            lr: 1e-3,
            warmup: 20,
            schedule: ScheduleKind::Cosine,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            grad_clip_norm: None,
            accum_freq: 1,
            seed: 0,
            device: "auto".into(),
            precision: Precision::Auto,
            threads: None,
            out: None,
            eval_every: 100,
            eval_subset: 500,
            save_every: 0,
            stop_at: None,
            objective: ObjectiveKind::Clip,
            objective_options: ObjectiveOptions::default(),
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file of [`TrainConfig`] keys; unknown keys are errors (a typo must not be silently ignored).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: format!("training config {}", path.display()), source })?;
        toml::from_str(&text)
            .map_err(|e| Error::Invalid { op: "training config", msg: format!("{}: {e}", path.display()) })
    }

    /// Total optimiser steps of the run.
    pub fn total_steps(&self) -> u64 {
        match (self.steps, self.epochs) {
            (Some(steps), _) => steps,
            (None, Some(epochs)) => {
                let per_epoch = (self.train_size / self.batch_size.max(1)).max(1) as f64;
                (epochs * per_epoch).ceil() as u64
            }
            (None, None) => DEFAULT_STEPS,
        }
    }

    /// Rejects settings that cannot run, naming the setting and the fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid { op: "training config", msg });
        if self.data != "shapes" {
            return bad(format!(
                "data `{}`: only the embedded `shapes` set can be trained on so far; use --data shapes",
                self.data
            ));
        }
        if self.batch_size == 0 {
            return bad("batch_size is 0; use at least 2 (the contrastive loss needs negatives)".into());
        }
        if self.batch_size > self.train_size {
            return bad(format!(
                "batch_size {} is larger than train_size {}; lower the batch size or raise train_size",
                self.batch_size, self.train_size
            ));
        }
        if self.accum_freq == 0 || !self.batch_size.is_multiple_of(self.accum_freq) {
            return bad(format!(
                "accum_freq {} must be at least 1 and divide batch_size {}",
                self.accum_freq, self.batch_size
            ));
        }
        if self.steps.is_some() && self.epochs.is_some() {
            return bad("both steps and epochs are set; give one of them".into());
        }
        if self.total_steps() == 0 {
            return bad("the run has 0 steps; use steps ≥ 1 (or epochs > 0)".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr {} must be a positive number", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight_decay {} must be ≥ 0", self.weight_decay));
        }
        if !(0.0..1.0).contains(&self.beta1)
            || !(0.0..1.0).contains(&self.beta2)
            || self.eps.is_nan()
            || self.eps <= 0.0
        {
            return bad("AdamW needs 0 ≤ beta1, beta2 < 1 and eps > 0".into());
        }
        if let Some(c) = self.grad_clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("grad_clip_norm {c} must be a positive number"));
            }
        }
        if let Err(e) = crate::device::check_name(&self.device) {
            return bad(match e {
                Error::Invalid { msg, .. } => msg,
                other => other.to_string(),
            });
        }
        if self.threads == Some(0) {
            return bad("threads is 0; use at least 1 (or leave it out for all cores)".into());
        }
        if self.eval_subset == 0 {
            return bad("eval_subset is 0; use at least 1 held-out image".into());
        }
        if self.objective != ObjectiveKind::Clip {
            if self.accum_freq != 1 {
                return bad(format!(
                    "accum_freq {} with --objective {}: gradient accumulation is implemented for clip only; use \
                     accum_freq 1",
                    self.accum_freq,
                    self.objective.name()
                ));
            }
            if self.batch_size < 2 {
                return bad("the multi-view objectives need batch_size ≥ 2".into());
            }
        }
        self.objective_options.validate()
    }
}

/// `cliprt train` flags: each one, when given, overrides the config file and the defaults.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// TOML file with any of the settings below (keys as the flags, `_` for `-`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint (bit-identical on the CPU).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Built-in model [default: tiny-ViT].
    #[arg(long)]
    pub model: Option<String>,
    /// open_clip model-config JSON (embed_dim, vision_cfg, text_cfg), e.g. configs/tiny-ViT.json.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Training data [default: shapes].
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long)]
    pub data_seed: Option<u64>,
    /// Shapes training images [default: 20000].
    #[arg(long)]
    pub train_size: Option<usize>,
    /// Shapes held-out images [default: 2000].
    #[arg(long)]
    pub held_out_size: Option<usize>,
    #[arg(long)]
    pub second_object: bool,
    /// [default: 256]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Optimiser steps [default: 300].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Epochs over the training split (instead of --steps).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Peak learning rate [default: 1e-3].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warm-up steps [default: 20].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// [default: cosine]
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Decoupled weight decay [default: 0.1].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub beta1: Option<f64>,
    #[arg(long)]
    pub beta2: Option<f64>,
    #[arg(long)]
    pub eps: Option<f64>,
    /// Clip the global gradient norm [default: no clipping].
    #[arg(long)]
    pub grad_clip_norm: Option<f64>,
    /// Micro-batches per step, features of the whole batch shared (open_clip --accum-freq) [default: 1].
    #[arg(long)]
    pub accum_freq: Option<usize>,
    /// [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// auto (the GPU when one is usable, else the CPU), cpu, cuda or cuda:0 [default: auto].
    #[arg(long)]
    pub device: Option<String>,
    /// auto (bf16 on a GPU, fp32 on the CPU), bf16 (GPU only) or fp32 (on a GPU: the all-fp32 parity mode)
    /// [default: auto].
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output folder [default: runs/<date>-<time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Zero-shot on a held-out subset every N steps, 0 = only at the end [default: 100].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Held-out images of the periodic zero-shot [default: 500].
    #[arg(long)]
    pub eval_subset: Option<usize>,
    /// Checkpoint every N steps, 0 = only at the end [default: 0].
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Stop after this step as if interrupted (the schedule still spans --steps).
    #[arg(long)]
    pub stop_at: Option<u64>,
    /// No progress bar (one line per eval instead).
    #[arg(long)]
    pub no_progress: bool,
    /// Training objective: clip, declip, cl2l, siamlip, byolip, barlip, swalip [default: clip].
    #[arg(long, value_enum)]
    pub objective: Option<ObjectiveKind>,
    /// DeCLIP weight of the multi-view term [default: 0.4].
    #[arg(long)]
    pub mvs_weight: Option<f64>,
    /// DeCLIP weight of the nearest-neighbour term [default: 0.2].
    #[arg(long)]
    pub nns_weight: Option<f64>,
    /// DeCLIP weight of the image self-supervision term [default: 0.2].
    #[arg(long)]
    pub iss_weight: Option<f64>,
    /// DeCLIP weight of the masked-language-modelling term [default: 0.2].
    #[arg(long)]
    pub tss_weight: Option<f64>,
    /// DeCLIP nearest-neighbour queue rows [default: 65536].
    #[arg(long)]
    pub queue_size: Option<usize>,
    /// CL2L label smoothing of the local pairs [default: 0.1].
    #[arg(long)]
    pub local_smoothing: Option<f64>,
    /// CL2L local heads' output width [default: 256].
    #[arg(long)]
    pub local_embed_dim: Option<usize>,
    /// Weight of the SSL term of siamlip/byolip/barlip/swalip [default: 1; swalip 0.2].
    #[arg(long)]
    pub ssl_weight: Option<f64>,
    /// BYOLIP EMA momentum [default: 0.99].
    #[arg(long)]
    pub ema_momentum: Option<f64>,
    /// Scale of the projector/predictor widths (1 = the papers' 1024–8192) [default: 1].
    #[arg(long)]
    pub head_scale: Option<f64>,
    /// Image augmentations of the multi-view objectives: paper (each recipe), geometric (its crops and flips
    /// only) or none (the whole image in every view) [default: paper].
    #[arg(long, value_enum)]
    pub augment: Option<crate::objective::kind::AugmentPolicy>,
}

impl TrainArgs {
    /// Defaults, overridden by `--config`, overridden by the flags given.
    pub fn resolve(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { c.$field = v.clone(); } )* };
        }
        macro_rules! set_opt {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { c.$field = Some(v.clone()); } )* };
        }
        set!(model, data, data_seed, train_size, held_out_size, batch_size, lr, warmup, schedule, weight_decay);
        set!(beta1, beta2, eps, accum_freq, seed, device, precision, eval_every, eval_subset, save_every);
        set_opt!(model_config, grad_clip_norm, threads, out, stop_at);
        set!(objective);
        let o = &mut c.objective_options;
        macro_rules! set_objective {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { o.$field = v.clone(); } )* };
        }
        set_objective!(mvs_weight, nns_weight, iss_weight, tss_weight, queue_size, local_smoothing, local_embed_dim);
        set_objective!(ema_momentum, head_scale, augment);
        if let Some(w) = self.ssl_weight {
            o.ssl_weight = Some(w);
        }
        if self.second_object {
            c.second_object = true;
        }
        // --model NAME on the command line beats a model_config from the file.
        if self.model.is_some() && self.model_config.is_none() {
            c.model_config = None;
        }
        // --steps and --epochs on the command line replace whichever the file gave; both at once is ambiguous.
        if self.steps.is_some() && self.epochs.is_some() {
            return Err(Error::Invalid {
                op: "training config",
                msg: "both --steps and --epochs are given; give one of them".into(),
            });
        }
        if let Some(steps) = self.steps {
            (c.steps, c.epochs) = (Some(steps), None);
        }
        if let Some(epochs) = self.epochs {
            (c.steps, c.epochs) = (None, Some(epochs));
        }
        c.validate()?;
        Ok(c)
    }
}
