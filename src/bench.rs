//! `cliprt bench train-step`: the throughput of one full CPU training step of a CLIP model (issue #4).
//!
//! A step is what training does per batch: zero the gradients, run both towers and the contrastive loss, run the
//! backward, and take one AdamW step over the whole parameter buffer. Inputs are random but shaped like real ones
//! (normal images, tokenizer-style rows `[SOT, ids…, EOT, 0…]`), drawn once from the seed. After `warmup` untimed
//! steps (they size every activation buffer, so timed steps allocate nothing), `steps` steps are timed phase by
//! phase.

use std::path::PathBuf;
use std::time::Instant;

use rand::Rng;
use serde::Serialize;

use crate::backend::cpu::CpuBackend;
use crate::backend::AdamW;
use crate::error::{Error, Result};
use crate::model::clip::Clip;
use crate::model::config::ModelConfig;
use crate::testing;

/// The arguments of `cliprt bench train-step`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainStepArgs {
    /// Where to run: auto (a GPU when the CUDA backend can train, else the CPU), cpu, or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// A built-in model by open_clip name (default tiny-ViT).
    #[arg(long)]
    pub model: Option<String>,
    /// An open_clip JSON model config (wins over --model).
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Image/text pairs per step.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Untimed steps first (buffer allocation, caches).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// CPU threads (default: rayon's, one per core, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the initial weights and of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Milliseconds per step of each phase, averaged over the timed steps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseMs {
    /// Both towers and the contrastive loss.
    pub forward_loss: f64,
    /// The loss backward and both towers' backward.
    pub backward: f64,
    /// Zeroing the gradients and the AdamW step.
    pub optimizer: f64,
}

/// What one `bench train-step` run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainStepReport {
    /// Where the steps ran ("cpu-f32"), with a note when `auto` fell back to the CPU.
    pub device: String,
    pub model: String,
    pub params: usize,
    pub batch: usize,
    pub threads: usize,
    /// The instruction set the CPU kernels run with ("Avx512", "Avx2", "Baseline").
    pub simd: String,
    pub warmup: usize,
    pub steps: usize,
    /// `batch·steps / total timed seconds`.
    pub samples_per_s: f64,
    pub median_step_ms: f64,
    pub min_step_ms: f64,
    pub phase_ms: PhaseMs,
    /// The loss of the last step (a sanity check: finite, and near ln(batch) for a fresh model).
    pub last_loss: f64,
}

impl TrainStepReport {
    /// A few human-readable lines.
    pub fn to_text(&self) -> String {
        let p = &self.phase_ms;
        format!(
            "train-step {} on {} ({}): batch {}, {} params, {} threads, {} timed steps after {} warm-up\n  \
             {:.1} samples/s, step median {:.1} ms, min {:.1} ms\n  \
             phases (mean ms): forward+loss {:.1}, backward {:.1}, optimizer {:.1}; last loss {:.4}\n",
            self.model,
            self.device,
            self.simd,
            self.batch,
            self.params,
            self.threads,
            self.steps,
            self.warmup,
            self.samples_per_s,
            self.median_step_ms,
            self.min_step_ms,
            p.forward_loss,
            p.backward,
            p.optimizer,
            self.last_loss,
        )
    }

    /// One JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a TrainStepReport always serialises")
    }
}

/// Runs the benchmark the arguments describe.
pub fn train_step(args: &TrainStepArgs) -> Result<TrainStepReport> {
    let device_note = crate::device::select(&args.device)?.gpu_note;
    if args.batch == 0 || args.steps == 0 {
        return Err(Error::Invalid { op: "bench train-step", msg: "--batch and --steps must be at least 1".into() });
    }
    let cfg = ModelConfig::resolve(args.model.as_deref(), args.model_config.as_deref(), "tiny-ViT")?;
    let model_name = match (&args.model_config, &args.model) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(name)) => name.clone(),
        (None, None) => "tiny-ViT".to_string(),
    };
    // The whole run executes on a pool thread: the kernels' parallel loops then start from inside the pool, instead
    // of the calling thread handing every one of them over and sleeping until it is done (about 2000 thread wake-ups
    // per step of tiny-ViT, some 6% of the step).
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(threads) = args.threads {
        pool = pool.num_threads(threads);
    }
    let pool = pool.build().map_err(|e| Error::Invalid { op: "bench train-step", msg: format!("thread pool: {e}") })?;
    pool.install(|| run_cpu(args, &cfg, model_name, device_note))
}

/// Random inputs shaped like real ones: images N(0, 1) `[batch, 3, size, size]`, and per row SOT, 0 to context−2
/// random ids below SOT, EOT, zero padding (the tokenizer's layout; SOT/EOT are the two last ids of the vocabulary).
fn random_inputs(cfg: &ModelConfig, batch: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let mut rng = testing::rng(seed ^ 0x5eed_1a9e);
    let size = cfg.vision_cfg.image_size;
    let images = testing::normal::<f32>(&mut rng, batch * 3 * size * size, 1.0);
    let (context, vocab) = (cfg.text_cfg.context_length, cfg.text_cfg.vocab_size);
    let (sot, eot) = (vocab as i32 - 2, vocab as i32 - 1);
    let mut tokens = vec![0i32; batch * context];
    for row in tokens.chunks_mut(context) {
        let words = rng.random_range(0..=context - 2);
        row[0] = sot;
        for id in &mut row[1..=words] {
            *id = rng.random_range(0..sot);
        }
        row[words + 1] = eot;
    }
    (images, tokens)
}

fn run_cpu(args: &TrainStepArgs, cfg: &ModelConfig, model: String, note: Option<String>) -> Result<TrainStepReport> {
    let backend = CpuBackend::<f32>::new();
    let (mut clip, mut params) = Clip::build(&backend, cfg, args.seed)?;
    let (images, tokens) = random_inputs(cfg, args.batch, args.seed);
    let mut hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.1, step: 0 };

    // One step, timed phase by phase: [zero grads + forward + loss, backward, AdamW] and the loss.
    let mut step = |hp: &AdamW| -> Result<([f64; 3], f64)> {
        let t0 = Instant::now();
        params.zero_grads(&backend)?;
        let t1 = Instant::now();
        let loss = clip.forward_loss(&backend, &mut params, &images, &tokens, args.batch)?;
        let t2 = Instant::now();
        clip.backward(&backend, &mut params, &images)?;
        let t3 = Instant::now();
        params.adamw_step(&backend, hp)?;
        let t4 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok(([ms(t1, t2), ms(t2, t3), ms(t0, t1) + ms(t3, t4)], loss))
    };

    for _ in 0..args.warmup {
        hp.step += 1;
        step(&hp)?;
    }
    let mut totals = [0.0; 3];
    let mut step_ms = Vec::with_capacity(args.steps);
    let mut last_loss = f64::NAN;
    for _ in 0..args.steps {
        hp.step += 1;
        let (phases, loss) = step(&hp)?;
        totals.iter_mut().zip(phases).for_each(|(t, p)| *t += p);
        step_ms.push(phases.iter().sum::<f64>());
        last_loss = loss;
    }
    let total_ms: f64 = step_ms.iter().sum();
    step_ms.sort_by(f64::total_cmp);
    let n = args.steps as f64;
    let device = match note {
        Some(note) => format!("{} ({note})", backend_name(&backend)),
        None => backend_name(&backend),
    };
    Ok(TrainStepReport {
        device,
        model,
        params: params.num_params(),
        batch: args.batch,
        threads: rayon::current_num_threads(),
        simd: format!("{:?}", crate::backend::cpu::simd::level()),
        warmup: args.warmup,
        steps: args.steps,
        samples_per_s: (args.batch * args.steps) as f64 / (total_ms / 1e3),
        median_step_ms: median(&step_ms),
        min_step_ms: step_ms[0],
        phase_ms: PhaseMs { forward_loss: totals[0] / n, backward: totals[1] / n, optimizer: totals[2] / n },
        last_loss,
    })
}

fn backend_name(backend: &CpuBackend<f32>) -> String {
    crate::backend::Backend::name(backend)
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_look_like_the_tokenizer() {
        let cfg = ModelConfig::builtin("tiny-ViT").unwrap();
        let (images, tokens) = random_inputs(&cfg, 64, 3);
        assert_eq!(images.len(), 64 * 3 * 32 * 32);
        for row in tokens.chunks(16) {
            assert_eq!(row[0], 49406);
            let eot = row.iter().position(|&t| t == 49407).expect("one EOT per row");
            assert!(row[1..eot].iter().all(|&t| (0..49406).contains(&t)));
            assert!(row[eot + 1..].iter().all(|&t| t == 0));
        }
    }
}
