//! `cliprt train`: the training loop. One step reads top to bottom in [`Trainer::step`]: next batch → both towers,
//! the contrastive loss and their backward ([`Clip::forward_backward`], micro-batched with `--accum-freq`) →
//! gradient clipping → AdamW over the one parameter buffer → logit-scale clamp → log line.

pub mod config;
pub mod data;
pub mod log;
pub mod mfu;
pub mod state;
pub mod views;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::backend::cpu::CpuBackend;
use crate::backend::{AdamW, Backend};
use crate::data::shapes::ShapesConfig;
use crate::data::tokenizer::Tokenizer;
use crate::device::{DeviceChoice, Selected};
use crate::error::{Error, Result};
use crate::model::clip::{Clip, OBJECTIVE_PREFIX};
use crate::model::config::ModelConfig;
use crate::objective::kind::ObjectiveKind;
use crate::objective::multiview::ObjectiveHeads;
use crate::params::{ParamBuilder, ParamStore};
use crate::schedule::LrSchedule;
use config::{TrainArgs, TrainConfig};
use data::{DataPosition, Feed, ShapesStream};
use log::{StepLog, StepRecord};
use mfu::GpuPerf;
use state::{RngState, TrainState};

/// open_clip clamps the log temperature to `[0, ln 100]` after every step.
pub const MAX_LOG_SCALE: f64 = 4.605_170_185_988_092;

/// What a finished run reports (`summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub final_loss: f64,
    pub zeroshot_top1: f64,
    pub zeroshot_top5: f64,
    /// Whole run, start to end (model build, training, evaluation, saving).
    pub wall_seconds: f64,
    /// Time inside training steps only (summed over resumed segments).
    pub train_seconds: f64,
    pub samples_per_s: f64,
    /// The median over steps of each step's samples/s (the first steps build caches and buffers).
    pub median_samples_per_s: f64,
    /// `cpu` or `cuda`.
    pub device: String,
    /// `fp32` or `bf16`: the compute dtype of activations.
    pub precision: String,
    /// The GPU's name (GPU runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// GPU runs: MFU and memory (see [`GpuSummary`]).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub gpu_perf: Option<GpuSummary>,
    pub model: String,
    pub params: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// The training objective (`--objective`).
    pub objective: String,
    pub held_out_images: usize,
    pub out: PathBuf,
}

/// What a GPU run adds to `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct GpuSummary {
    /// Model FLOPs of one training sample (3 × forward, see `crate::model::flops`).
    pub flops_per_sample: u64,
    /// Model TFLOP/s over the whole run (`samples_per_s`) and at the median step (`median_samples_per_s`).
    pub model_tflops: f64,
    pub median_model_tflops: f64,
    /// The dense bf16 peak MFU is measured against, and the table entry it came from (absent when the device is not
    /// in the table, or in fp32 mode).
    pub peak_tflops: Option<f64>,
    pub peak_source: Option<String>,
    /// Model FLOP rate over `peak_tflops` (0–1): whole run, and at the median step.
    pub mfu: Option<f64>,
    pub median_mfu: Option<f64>,
    /// The rate of the large GEMM measured at start-up (`gemm_size`³ in `gemm_dtype`), and the model FLOP rate over
    /// it (whole run, median step).
    pub gemm_tflops: f64,
    pub gemm_size: usize,
    pub gemm_dtype: String,
    pub of_gemm: f64,
    pub median_of_gemm: f64,
    /// The most device memory the backend held at once (buffers and scratch), in bytes.
    pub peak_device_memory_bytes: u64,
}

/// How a call to [`run`] ended.
pub enum Outcome {
    Finished(Box<Summary>),
    /// `--stop-at` reached: a checkpoint was written and `--resume` continues.
    Stopped {
        step: u64,
        out: PathBuf,
    },
}

/// Runs `cliprt train` with these arguments, printing progress to stderr and the result lines to stdout.
pub fn run(args: &TrainArgs) -> Result<Outcome> {
    let started = Instant::now();
    let (config, resume) = match &args.resume {
        Some(dir) => {
            check_resume_flags(args)?;
            let (mut state, _) = state::latest(dir)?;
            if state.config.objective != ObjectiveKind::Clip {
                return Err(Error::Invalid {
                    op: "cliprt train --resume",
                    msg: format!(
                        "{} was trained with --objective {}: resuming is implemented for clip only (the queue, EMA \
                         target and heads' BatchNorm state of the multi-view objectives are not checkpointed); start \
                         a new run",
                        dir.display(),
                        state.config.objective.name()
                    ),
                });
            }
            state.config.stop_at = args.stop_at;
            if args.threads.is_some() {
                state.config.threads = args.threads;
            }
            state.config.out = Some(dir.clone());
            (state.config.clone(), Some(state))
        }
        None => (args.resolve()?, None),
    };
    // The whole run executes on a pool thread, so the kernels' parallel loops start from inside the pool instead of
    // the calling thread handing each one over and sleeping (about 6% of a tiny-ViT step; see src/bench.rs).
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(threads) = config.threads {
        pool = pool.num_threads(threads);
    }
    let pool = pool.build().map_err(|e| Error::Invalid { op: "threads", msg: format!("thread pool: {e}") })?;
    pool.install(|| {
        let model_config = match &resume {
            Some(state) => state.model_config.clone(),
            None => ModelConfig::resolve(Some(&config.model), config.model_config.as_deref(), &config.model)?,
        };
        let device = crate::device::select(&config.device, config.precision)?;
        println!("{}", device.line);
        let out = match &config.out {
            Some(dir) => dir.clone(),
            None => default_out_dir(),
        };
        if resume.is_none() {
            prepare_out_dir(&out)?;
        }
        let setup =
            Setup { config: config.clone(), model_config, out, resume: resume.clone(), progress: !args.no_progress };
        match &device.backend {
            Selected::Cpu => setup.train(&CpuBackend::<f32>::new(), &device, None, started),
            Selected::CudaBf16(backend) => {
                let perf = gpu_perf(backend, &device, &setup.model_config)?;
                setup.train(backend, &device, Some(perf), started)
            }
            Selected::CudaF32(backend) => {
                let perf = gpu_perf(backend, &device, &setup.model_config)?;
                setup.train(backend, &device, Some(perf), started)
            }
        }
    })
}

/// Measures the start-up GEMM and prints the MFU lines.
fn gpu_perf<'a, A: crate::backend::cuda::CudaAct>(
    backend: &'a crate::backend::cuda::CudaBackend<A>,
    device: &DeviceChoice,
    model: &ModelConfig,
) -> Result<GpuPerf<'a>> {
    let name = device.gpu.as_ref().map_or("unknown GPU", |g| g.name.as_str());
    let perf = GpuPerf::new(backend, name, device.precision, model)?;
    println!("{}", perf.intro());
    Ok(perf)
}

/// Everything a run needs besides its backend.
struct Setup {
    config: TrainConfig,
    model_config: ModelConfig,
    out: PathBuf,
    resume: Option<TrainState>,
    progress: bool,
}

impl Setup {
    fn train<B: Backend>(
        self,
        backend: &B,
        device: &DeviceChoice,
        perf: Option<GpuPerf<'_>>,
        started: Instant,
    ) -> Result<Outcome> {
        let mut trainer = Trainer::new(backend, self, device, perf)?;
        trainer.train(started)
    }
}

/// With `--resume` the run continues with the settings saved in its checkpoint; only where to stop and how many
/// threads may change (results do not depend on the thread count).
fn check_resume_flags(args: &TrainArgs) -> Result<()> {
    let allowed = TrainArgs {
        resume: args.resume.clone(),
        stop_at: args.stop_at,
        threads: args.threads,
        no_progress: args.no_progress,
        ..TrainArgs::default()
    };
    if format!("{args:?}") != format!("{allowed:?}") {
        return Err(Error::Invalid {
            op: "cliprt train --resume",
            msg: "a resumed run keeps the settings saved in its checkpoint; besides --resume only --stop-at, \
                  --threads and --no-progress may be given"
                .into(),
        });
    }
    Ok(())
}

/// `runs/<UTC date>-<time>`, unique per second.
fn default_out_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    PathBuf::from(format!("runs/{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Creates the output folder; refuses one that already holds a run, so nothing written before is overwritten.
fn prepare_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.display().to_string(), source })?;
    if out.join("log.jsonl").exists() || out.join("last.safetensors").exists() {
        return Err(Error::Invalid {
            op: "cliprt train",
            msg: format!(
                "{} already holds a run (log.jsonl); continue it with --resume {0} or choose another --out",
                out.display()
            ),
        });
    }
    Ok(())
}

/// Everything a run holds between steps.
struct Trainer<'b, B: Backend> {
    backend: &'b B,
    config: TrainConfig,
    model_config: ModelConfig,
    model: Clip<B>,
    store: ParamStore<B>,
    feed: Feed<B::Act>,
    shapes: ShapesConfig,
    schedule: LrSchedule,
    log: StepLog,
    records: Vec<StepRecord>,
    out: PathBuf,
    /// `cpu` or `cuda`, and the compute dtype.
    device: String,
    precision: String,
    gpu: Option<String>,
    perf: Option<GpuPerf<'b>>,
    step: u64,
    train_seconds: f64,
    progress: bool,
    images: Option<B::Buf<B::Act>>,
    /// What a multi-view objective adds (none for clip), and BYOLIP's EMA target model.
    heads: Option<ObjectiveHeads<B>>,
    target: Option<Target<B>>,
}

/// BYOLIP's target: a second model whose weights follow the online one's by EMA.
struct Target<B: Backend> {
    model: Clip<B>,
    heads: ObjectiveHeads<B>,
    store: ParamStore<B>,
}

/// A model, its parameters, and a multi-view objective's heads.
type Built<B> = (Clip<B>, ParamStore<B>, Option<ObjectiveHeads<B>>);

/// The CLIP model plus, for a multi-view objective, its heads under `objective.` in the same parameter buffer (so
/// the CLIP tensors are drawn exactly as `Clip::build` draws them).
fn build_model<B: Backend>(backend: &B, model_config: &ModelConfig, config: &TrainConfig) -> Result<Built<B>> {
    let mut pb = ParamBuilder::new();
    let model = Clip::new(&mut pb, model_config)?;
    let heads = match config.objective {
        ObjectiveKind::Clip => None,
        kind => {
            let scope = OBJECTIVE_PREFIX.trim_end_matches('.');
            Some(pb.scope(scope, |pb| ObjectiveHeads::new(pb, kind, &config.objective_options, model_config))?)
        }
    };
    let store = pb.build(backend, &mut crate::testing::rng(config.seed))?;
    Ok((model, store, heads))
}

impl<'b, B: Backend> Trainer<'b, B> {
    fn new(backend: &'b B, setup: Setup, device: &DeviceChoice, perf: Option<GpuPerf<'b>>) -> Result<Self> {
        let Setup { config, model_config, out, resume, progress } = setup;
        let mut model_config = model_config;
        if config.objective == ObjectiveKind::Declip {
            // DeCLIP's vocabulary adds <|mask|> (SPEC §2).
            model_config.text_cfg.vocab_size = Tokenizer::declip().vocab_size();
        }
        let (mut model, mut store, heads) = build_model(backend, &model_config, &config)?;
        let target = match config.objective {
            ObjectiveKind::Byolip => {
                let (model, store, heads) = build_model(backend, &model_config, &config)?;
                Some(Target { model, heads: heads.expect("byolip has heads"), store })
            }
            _ => None,
        };
        let (step, position, train_seconds) = match &resume {
            Some(s) => {
                state::restore(&out, backend, &mut model, &mut store, s)?;
                (s.step, s.data_position, s.train_seconds)
            }
            None => (0, DataPosition::default(), 0.0),
        };
        let json = serde_json::to_vec_pretty(&model_config).expect("plain config");
        crate::checkpoint::write_atomic(&out.join("model_config.json"), &json)?;
        let shapes = ShapesConfig {
            resolution: model_config.vision_cfg.image_size,
            train_size: config.train_size,
            held_out_size: config.held_out_size,
            second_object: config.second_object,
            seed: config.data_seed,
        };
        let context = model_config.text_cfg.context_length;
        let stream = ShapesStream::new(shapes.clone(), config.seed, config.batch_size, context, position)?;
        // On the GPU the next batch is drawn while the current step runs (see `Feed`); the multi-view objectives
        // draw their views inline.
        let feed = Feed::new(stream, perf.is_some() && heads.is_none());
        let schedule = LrSchedule {
            base_lr: config.lr,
            warmup: config.warmup,
            total: config.total_steps(),
            kind: config.schedule,
        };
        let (log, records) = StepLog::open(&out, step)?;
        Ok(Trainer {
            backend,
            config,
            model_config,
            model,
            store,
            feed,
            shapes,
            schedule,
            log,
            records,
            out,
            device: device.name.clone(),
            precision: device.precision.as_str().to_string(),
            gpu: device.gpu.as_ref().map(|g| g.name.clone()),
            perf,
            step,
            train_seconds,
            progress,
            images: None,
            heads,
            target,
        })
    }

    fn train(&mut self, started: Instant) -> Result<Outcome> {
        let total = self.config.total_steps();
        let end = self.config.stop_at.map_or(total, |s| s.min(total));
        let model_name = match &self.config.model_config {
            Some(path) => path.display().to_string(),
            None => self.config.model.clone(),
        };
        println!(
            "model {model_name}: {} parameters; batch {}; steps {}{}; output {}",
            self.store.num_params(),
            self.config.batch_size,
            total,
            if self.step > 0 { format!(" (resuming after step {})", self.step) } else { String::new() },
            self.out.display()
        );
        let bar = progress_bar(total, self.step, self.progress);
        while self.step < end {
            let mut record = self.step()?;
            let every = self.config.eval_every;
            if self.step == total {
                let (top1, top5) = self.zeroshot(self.config.held_out_size)?;
                (record.zeroshot_top1, record.zeroshot_top5) = (Some(top1), Some(top5));
            } else if every > 0 && self.step.is_multiple_of(every) {
                let (top1, top5) = self.zeroshot(self.config.eval_subset)?;
                (record.zeroshot_top1, record.zeroshot_top5) = (Some(top1), Some(top5));
                // On the GPU: this step's throughput too (a hidden bar shows it nowhere else).
                let rate = self.perf.as_ref().map_or(String::new(), |p| {
                    format!("; {:.0} samples/s, {}", record.samples_per_s, p.short(record.samples_per_s))
                });
                let line = format!(
                    "step {}: loss {:.4}, zero-shot top-1 {top1:.3} top-5 {top5:.3} ({} held-out images){rate}",
                    self.step,
                    record.loss,
                    self.config.eval_subset.min(self.config.held_out_size)
                );
                // A hidden bar (no terminal, or --no-progress) prints nothing: say it on stdout instead.
                if bar.is_hidden() {
                    println!("{line}");
                } else {
                    bar.println(line);
                }
            }
            self.log.append(&record)?;
            let mfu = self.perf.as_ref().map_or(String::new(), |p| format!(" {}", p.short(record.samples_per_s)));
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} samples/s{mfu}",
                record.loss, record.lr, record.samples_per_s
            ));
            bar.inc(1);
            self.records.push(record);
            let save_every = self.config.save_every;
            if (save_every > 0 && self.step.is_multiple_of(save_every)) || self.step == end {
                self.save()?;
            }
        }
        bar.finish_and_clear();
        if self.step < total {
            self.plot()?;
            println!(
                "stopped after step {} of {total} (--stop-at); continue with: cliprt train --resume {}",
                self.step,
                self.out.display()
            );
            return Ok(Outcome::Stopped { step: self.step, out: self.out.clone() });
        }
        let last = self.records.last().expect("the run did at least one step");
        let (final_loss, top1, top5) =
            (last.loss, last.zeroshot_top1.unwrap_or(f64::NAN), last.zeroshot_top5.unwrap_or(f64::NAN));
        self.plot()?;
        let trained_samples = (total * self.config.batch_size as u64) as f64;
        let samples_per_s = trained_samples / self.train_seconds.max(1e-9);
        let mut rates: Vec<f64> = self.records.iter().map(|r| r.samples_per_s).collect();
        rates.sort_by(f64::total_cmp);
        let median_samples_per_s = crate::bench::median(&rates);
        let gpu_perf = self.perf.as_ref().map(|p| {
            let (all, median) = (p.utilisation(samples_per_s), p.utilisation(median_samples_per_s));
            GpuSummary {
                flops_per_sample: p.flops.train_per_sample(),
                model_tflops: all.tflops,
                median_model_tflops: median.tflops,
                peak_tflops: p.peak.map(|x| x.tflops),
                peak_source: p.peak.map(|x| x.label.to_string()),
                mfu: all.mfu,
                median_mfu: median.mfu,
                gemm_tflops: p.gemm.tflops,
                gemm_size: p.gemm.size,
                gemm_dtype: p.gemm.dtype.to_string(),
                of_gemm: all.of_gemm,
                median_of_gemm: median.of_gemm,
                peak_device_memory_bytes: p.memory().peak_bytes,
            }
        });
        let summary = Summary {
            steps: total,
            final_loss,
            zeroshot_top1: top1,
            zeroshot_top5: top5,
            wall_seconds: started.elapsed().as_secs_f64(),
            train_seconds: self.train_seconds,
            samples_per_s,
            median_samples_per_s,
            device: self.device.clone(),
            precision: self.precision.clone(),
            gpu: self.gpu.clone(),
            gpu_perf,
            model: model_name,
            params: self.store.num_params(),
            batch_size: self.config.batch_size,
            seed: self.config.seed,
            objective: self.config.objective.name().to_string(),
            held_out_images: self.config.held_out_size,
            out: self.out.clone(),
        };
        let json = serde_json::to_vec_pretty(&summary).expect("plain summary");
        crate::checkpoint::write_atomic(&self.out.join("summary.json"), &json)?;
        println!(
            "zero-shot on {} held-out shapes images ({} classes): top-1 {top1:.3}, top-5 {top5:.3}",
            self.config.held_out_size,
            crate::data::shapes::classes().len()
        );
        let gpu = self.perf.as_ref().map_or(String::new(), |p| {
            format!(
                "; median step {:.0} samples/s, {}",
                summary.median_samples_per_s,
                p.summary_line(summary.median_samples_per_s)
            )
        });
        println!(
            "{total} steps in {:.1} s of training ({:.0} samples/s), {:.1} s in all; final loss {final_loss:.4}{gpu}; \
             wrote {}",
            summary.train_seconds,
            summary.samples_per_s,
            summary.wall_seconds,
            self.out.display()
        );
        Ok(Outcome::Finished(Box::new(summary)))
    }

    /// One optimiser step; returns its log record.
    fn step(&mut self) -> Result<StepRecord> {
        let t0 = Instant::now();
        let lr = self.schedule.lr(self.step);
        let loss = match self.heads.is_some() {
            false => self.clip_forward_backward()?,
            true => self.multiview_forward_backward()?,
        };
        self.finish_step(t0, lr, loss)
    }

    /// CLIP: the next batch through both towers and the loss, micro-batched with `--accum-freq`.
    fn clip_forward_backward(&mut self) -> Result<f64> {
        let backend = self.backend;
        let batch = self.feed.next_batch()?;
        let host = &batch.images;
        let images = match &mut self.images {
            Some(buf) if B::buf_len(buf) == host.len() => {
                backend.write(host, B::view_mut(buf))?;
                buf
            }
            slot => slot.insert(backend.upload(host)?),
        };
        self.store.zero_grads(backend)?;
        let loss = self.model.forward_backward(
            backend,
            &mut self.store,
            B::view(images),
            &batch.tokens,
            self.config.batch_size,
            self.config.accum_freq,
        )?;
        Ok(loss)
    }

    /// A multi-view objective: the step's views drawn from the next batch, then the objective's forward and
    /// backward (see `crate::objective::multiview`).
    fn multiview_forward_backward(&mut self) -> Result<f64> {
        let backend = self.backend;
        let heads = self.heads.as_mut().expect("multi-view objective");
        let samples = self.feed.next_samples()?;
        let tokenizer = Tokenizer::for_vocab(self.model_config.text_cfg.vocab_size);
        let context = self.model_config.text_cfg.context_length;
        let policy = self.config.objective_options.augment;
        let views = crate::train::views::make_views(
            heads.kind,
            policy,
            &samples,
            tokenizer,
            context,
            self.config.seed,
            self.step,
        )?;
        self.store.zero_grads(backend)?;
        let target = self.target.as_mut().map(|t| (&mut t.model, &mut t.heads, &mut t.store));
        let loss =
            heads.forward_backward(backend, &mut self.model, &mut self.store, &views, self.config.seed, target)?;
        Ok(loss.total)
    }

    /// Gradient clipping, AdamW, the logit-scale clamps (and BYOLIP's EMA), timing and the log record.
    fn finish_step(&mut self, t0: Instant, lr: f64, loss: f64) -> Result<StepRecord> {
        let backend = self.backend;
        if !loss.is_finite() {
            return Err(Error::Invalid {
                op: "cliprt train",
                msg: format!(
                    "the loss is {loss} at step {}; lower --lr or set --grad-clip-norm (checkpoints so far are kept)",
                    self.step + 1
                ),
            });
        }
        let grad_norm = match self.config.grad_clip_norm {
            Some(max_norm) => {
                let norm = self.store.grad_norm(backend)?;
                // As torch.nn.utils.clip_grad_norm_: scale by max/(norm + 1e-6) when that is below 1.
                let coef = max_norm / (norm + 1e-6);
                if coef < 1.0 {
                    self.store.scale_grads(backend, coef)?;
                }
                Some(norm)
            }
            None => None,
        };
        let c = &self.config;
        let hp =
            AdamW { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay, step: self.step + 1 };
        self.store.adamw_step(backend, &hp)?;
        let o = &self.config.objective_options;
        let (lo, hi) = match self.config.objective {
            // DeCLIP's YFCC15M configs clamp the parameter to [3, 6] (SPEC §2).
            ObjectiveKind::Declip => (o.declip_log_scale_min, o.declip_log_scale_max),
            _ => (0.0, MAX_LOG_SCALE),
        };
        let log_scale = self.store.clamp_master(backend, self.model.logit_scale, lo, hi)?[0];
        if let Some(local) = self.heads.as_ref().and_then(|h| h.local_logit_scale()) {
            self.store.clamp_master(backend, local, 0.0, MAX_LOG_SCALE)?;
        }
        if let Some(target) = &mut self.target {
            // BYOLIP: target ← τ·target + (1−τ)·online, over the whole buffer (on the host: one round trip a step).
            let tau = o.ema_momentum;
            let online = self.store.download_master(backend)?;
            let mut ema = target.store.download_master(backend)?;
            for (e, &x) in ema.iter_mut().zip(&online) {
                *e = tau * *e + (1.0 - tau) * x;
            }
            target.store.set_master(backend, &ema)?;
        }
        backend.synchronize()?;
        let seconds = t0.elapsed().as_secs_f64();
        self.train_seconds += seconds;
        self.step += 1;
        let samples_per_s = self.config.batch_size as f64 / seconds;
        let utilisation = self.perf.as_ref().map(|p| p.utilisation(samples_per_s));
        Ok(StepRecord {
            step: self.step,
            loss,
            lr,
            samples_per_s,
            logit_scale: log_scale.exp(),
            grad_norm,
            zeroshot_top1: None,
            zeroshot_top5: None,
            model_tflops: utilisation.map(|u| u.tflops),
            mfu: utilisation.and_then(|u| u.mfu),
        })
    }

    /// Zero-shot top-1/top-5 on the first `images` held-out images.
    fn zeroshot(&mut self, images: usize) -> Result<(f64, f64)> {
        let shapes = ShapesConfig { held_out_size: images.min(self.shapes.held_out_size), ..self.shapes.clone() };
        crate::eval::zeroshot::zeroshot_shapes(
            self.backend,
            &mut self.model,
            &mut self.store,
            &shapes,
            self.config.batch_size,
        )
    }

    fn save(&mut self) -> Result<()> {
        let mut state = TrainState {
            format: state::STATE_FORMAT.into(),
            step: self.step,
            total_steps: self.config.total_steps(),
            data_position: self.feed.position(),
            rng: RngState { algorithm: "ChaCha8".into(), seed: self.config.seed, stream: self.feed.position().epoch },
            train_seconds: self.train_seconds,
            config: TrainConfig { stop_at: None, ..self.config.clone() },
            model_config: self.model_config.clone(),
            model_file: String::new(),
            optimizer_file: String::new(),
        };
        state::save(&self.out, self.backend, &self.model, &self.store, &mut state)?;
        Ok(())
    }

    fn plot(&self) -> Result<()> {
        let loss: Vec<(u64, f64)> = self.records.iter().map(|r| (r.step, r.loss)).collect();
        let accuracy: Vec<(u64, f64)> =
            self.records.iter().filter_map(|r| r.zeroshot_top1.map(|a| (r.step, a))).collect();
        let title = format!("cliprt train: {} on shapes", self.config.model);
        crate::plot::write_training_plot(&self.out.join("curves.png"), &loss, &accuracy, &title)
    }
}

fn progress_bar(total: u64, done: u64, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
