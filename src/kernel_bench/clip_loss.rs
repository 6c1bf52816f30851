//! `cliprt bench clip-loss`: the fused CLIP loss (kernels/clip_loss.cu) against its 4-GEMM floor and the
//! materialised baseline (kernels/clip_loss_naive.cu), bf16, D = 512, in one run on the GPU.
//!
//! For each N (`--n`, default 4k, 16k, 32k, 64k, 256k): the median time of forward + backward of the fused path
//! (symmetric loss, both embedding gradients), the forward alone, the floor = 4 GEMM-equivalents (4·2·N²·D FLOPs) at
//! the bf16 cuBLASLt rate measured in the same run (an N×N×D bf16 GEMM with fp32 output; for N above
//! `--gemm-max-n`, default 16k, whose N×N output would not fit or would only cost time, the rate measured at that
//! size), the fused path's extra memory (scratch + saved state; inputs and gradients excluded) and the same for the
//! naive path, which runs where its memory fits (otherwise one line says how much it would need). Each measurement is
//! a median over `--iters` launches between CUDA events after warm-up launches.
//!
//! Without a GPU it returns `Error::CudaUnavailable` (one line saying why). `benches/clip_loss.rs` is the criterion
//! face of the same workloads ([`Workload`]).

use cudarc::driver::CudaSlice;
use half::bf16;

use super::attention::median_ms;
use crate::backend::cuda::blas::Blas;
use crate::backend::cuda::clip_loss::{clip_loss_saved_len, clip_loss_scratch_len, ClipLossPlan};
use crate::backend::cuda::clip_loss_naive::{clip_loss_naive_saved_len, clip_loss_naive_scratch_len};
use crate::backend::cuda::{CudaDevice, DeviceViews};
use crate::backend::{ClipLoss, Gemm};
use crate::error::{Error, Result};

/// The sizes of the issue.
pub const SIZES: [usize; 5] = [4096, 16384, 32768, 65536, 262144];
/// The embedding width of the issue.
pub const DIM: usize = 512;

/// The arguments of `cliprt bench clip-loss`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Batch sizes N (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = SIZES.to_vec())]
    pub n: Vec<usize>,
    /// Embedding width D.
    #[arg(long, default_value_t = DIM)]
    pub dim: usize,
    /// Timed launches per measurement (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Largest N at which the floor's GEMM is timed (larger N use that rate).
    #[arg(long, default_value_t = 16384)]
    pub gemm_max_n: usize,
    /// Skip the naive baseline.
    #[arg(long)]
    pub no_naive: bool,
}

/// FLOPs of one fused forward + backward with both gradients: 4 GEMM-equivalents of 2·N²·D.
pub fn floor_flops(n: usize, dim: usize) -> f64 {
    4.0 * 2.0 * (n as f64) * (n as f64) * dim as f64
}

/// Bytes of device memory the fused path needs beyond its inputs and gradients: scratch and saved state.
pub fn fused_extra_bytes(spec: &ClipLoss) -> usize {
    4 * (clip_loss_scratch_len::<bf16>(spec, &ClipLossPlan::new(spec), true) + clip_loss_saved_len(spec))
}

/// The same for the materialised baseline (dominated by the N×N fp32 logits and the N×N bf16 gradient).
pub fn naive_extra_bytes(spec: &ClipLoss) -> usize {
    4 * (clip_loss_naive_scratch_len::<bf16>(spec) + clip_loss_naive_saved_len(spec))
}

/// Non-zero bf16 data without a slow host-side draw: a pseudo-random pattern in [−1, 1] repeated.
fn pattern(dev: &CudaDevice, len: usize, salt: u32) -> Result<CudaSlice<bf16>> {
    let pattern: Vec<bf16> = (0..4099u32)
        .map(|i| {
            let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) >> 8;
            bf16::from_f32((h % 2001) as f32 / 1000.0 - 1.0)
        })
        .collect();
    dev.upload(&pattern.iter().copied().cycle().take(len).collect::<Vec<_>>())
}

/// The buffers of one N: embeddings, gradients, the fused path's saved state and scratch, and (when `naive`) the
/// naive path's.
pub struct Workload<'d> {
    dev: &'d CudaDevice,
    blas: &'d Blas,
    pub spec: ClipLoss,
    plan: ClipLossPlan,
    x: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
    t: CudaSlice<f32>,
    loss: CudaSlice<f32>,
    dx: CudaSlice<bf16>,
    dy: CudaSlice<bf16>,
    dt: CudaSlice<f32>,
    saved: CudaSlice<f32>,
    scratch: CudaSlice<f32>,
    naive: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
}

impl<'d> Workload<'d> {
    pub fn new(dev: &'d CudaDevice, blas: &'d Blas, n: usize, dim: usize, naive: bool) -> Result<Workload<'d>> {
        let spec = ClipLoss::symmetric(n, dim);
        let plan = ClipLossPlan::new(&spec);
        let naive = if naive {
            Some((
                dev.zeros::<f32>(clip_loss_naive_saved_len(&spec))?,
                dev.zeros(clip_loss_naive_scratch_len::<bf16>(&spec))?,
            ))
        } else {
            None
        };
        Ok(Workload {
            dev,
            blas,
            spec,
            plan,
            x: pattern(dev, n * dim, 1)?,
            y: pattern(dev, n * dim, 2)?,
            t: dev.upload(&[2.659_26f32])?,
            loss: dev.zeros(1)?,
            dx: dev.zeros(n * dim)?,
            dy: dev.zeros(n * dim)?,
            dt: dev.zeros(1)?,
            saved: dev.zeros(clip_loss_saved_len(&spec))?,
            scratch: dev.zeros(clip_loss_scratch_len::<bf16>(&spec, &plan, true))?,
            naive,
        })
    }

    pub fn has_naive(&self) -> bool {
        self.naive.is_some()
    }

    pub fn forward(&mut self) -> Result<()> {
        self.dev.clip_loss_forward::<bf16>(
            &self.spec,
            &self.plan,
            &self.x.dref(),
            &self.y.dref(),
            &self.t.dref(),
            &mut self.loss.dmut(),
            &mut self.saved.dmut(),
            &mut self.scratch.dmut(),
        )
    }

    pub fn backward(&mut self) -> Result<()> {
        let mut dy = self.dy.dmut();
        self.dev.clip_loss_backward::<bf16>(
            self.blas,
            &self.spec,
            &self.plan,
            &self.x.dref(),
            &self.y.dref(),
            &self.t.dref(),
            &self.saved.dref(),
            1.0,
            &mut self.dx.dmut(),
            Some(&mut dy),
            &mut self.dt.dmut(),
            &mut self.scratch.dmut(),
        )
    }

    pub fn forward_backward(&mut self) -> Result<()> {
        self.forward()?;
        self.backward()
    }

    pub fn naive_forward_backward(&mut self) -> Result<()> {
        let (saved, scratch) = self.naive.as_mut().ok_or_else(no_naive)?;
        self.dev.clip_loss_naive_forward::<bf16>(
            self.blas,
            &self.spec,
            &self.x.dref(),
            &self.y.dref(),
            &self.t.dref(),
            &mut self.loss.dmut(),
            &mut saved.dmut(),
            &mut scratch.dmut(),
        )?;
        self.dev.clip_loss_naive_backward::<bf16>(
            self.blas,
            &self.spec,
            &self.x.dref(),
            &self.y.dref(),
            &self.t.dref(),
            &saved.dref(),
            1.0,
            &mut self.dx.dmut(),
            &mut self.dy.dmut(),
            &mut self.dt.dmut(),
            &mut scratch.dmut(),
        )
    }
}

fn no_naive() -> Error {
    Error::Invalid { op: "bench clip-loss", msg: "the naive baseline was not allocated for this workload".into() }
}

/// bf16 cuBLASLt rate (FLOP/s) of an `n×n×dim` product with fp32 output, median of `iters`.
pub fn gemm_rate(dev: &CudaDevice, blas: &Blas, n: usize, dim: usize, iters: usize) -> Result<f64> {
    let a = pattern(dev, n * dim, 3)?;
    let b = pattern(dev, n * dim, 4)?;
    let mut c = dev.zeros::<f32>(n * n)?;
    let gemm = Gemm::new(n, n, dim, false, true);
    let stream = dev.stream().clone();
    let ms = median_ms(&stream, 2, iters, || blas.gemm::<bf16, f32>(&gemm, &a.dref(), &b.dref(), &mut c.dmut()))?;
    Ok(gemm.flops() / (ms * 1e-3))
}

/// One row of the report.
#[derive(serde::Serialize, Debug, Clone)]
pub struct Row {
    pub n: usize,
    pub dim: usize,
    pub forward_ms: f64,
    pub forward_backward_ms: f64,
    /// 4·2·N²·D at the measured GEMM rate.
    pub floor_ms: f64,
    /// Measured over floor.
    pub ratio_to_floor: f64,
    pub gemm_tflops: f64,
    pub extra_bytes: usize,
    pub naive_forward_backward_ms: Option<f64>,
    pub naive_extra_bytes: usize,
    /// Why the naive path did not run, when it did not.
    pub naive_skipped: Option<String>,
}

/// The whole report.
#[derive(serde::Serialize, Debug, Clone)]
pub struct Report {
    pub device: String,
    pub iters: usize,
    pub rows: Vec<Row>,
}

/// Measures one N (the GEMM rate given).
pub fn measure(
    dev: &CudaDevice,
    blas: &Blas,
    n: usize,
    dim: usize,
    iters: usize,
    naive: bool,
    rate: f64,
) -> Result<Row> {
    let spec = ClipLoss::symmetric(n, dim);
    let naive_bytes = naive_extra_bytes(&spec);
    let free = dev.info().map(|i| i.free_memory_bytes).unwrap_or(0);
    // Inputs, gradients and the fused buffers stay allocated beside the naive ones; keep 1 GiB of headroom.
    let fits = naive_bytes + fused_extra_bytes(&spec) + 8 * n * dim + (1 << 30) < free;
    let naive_skipped = if !naive {
        Some("--no-naive".to_string())
    } else if !fits {
        Some(format!(
            "needs {:.1} GB of scratch (the N×N logits and gradient), {:.1} GB free",
            naive_bytes as f64 / 1e9,
            free as f64 / 1e9
        ))
    } else {
        None
    };
    let mut w = Workload::new(dev, blas, n, dim, naive_skipped.is_none())?;
    let stream = dev.stream().clone();
    let forward_ms = median_ms(&stream, 2, iters, || w.forward())?;
    let forward_backward_ms = median_ms(&stream, 2, iters, || w.forward_backward())?;
    let naive_ms =
        if w.has_naive() { Some(median_ms(&stream, 2, iters, || w.naive_forward_backward())?) } else { None };
    let floor_ms = floor_flops(n, dim) / rate * 1e3;
    Ok(Row {
        n,
        dim,
        forward_ms,
        forward_backward_ms,
        floor_ms,
        ratio_to_floor: forward_backward_ms / floor_ms,
        gemm_tflops: rate / 1e12,
        extra_bytes: fused_extra_bytes(&spec),
        naive_forward_backward_ms: naive_ms,
        naive_extra_bytes: naive_bytes,
        naive_skipped,
    })
}

fn table(report: &Report) -> String {
    let mut s = format!(
        "clip_loss (bf16, symmetric, fwd+bwd with both gradients) on {}; median of {} launches\n",
        report.device, report.iters
    );
    s += &format!(
        "{:>7} {:>5} {:>10} {:>12} {:>10} {:>8} {:>9} {:>10} {:>12} {:>11}\n",
        "N", "D", "fwd ms", "fwd+bwd ms", "floor ms", "× floor", "GEMM TF", "extra MB", "naive ms", "naive MB"
    );
    for r in &report.rows {
        let naive = r.naive_forward_backward_ms.map_or("-".to_string(), |v| format!("{v:.3}"));
        s += &format!(
            "{:>7} {:>5} {:>10.3} {:>12.3} {:>10.3} {:>8.2} {:>9.0} {:>10.1} {:>12} {:>11.0}\n",
            r.n,
            r.dim,
            r.forward_ms,
            r.forward_backward_ms,
            r.floor_ms,
            r.ratio_to_floor,
            r.gemm_tflops,
            r.extra_bytes as f64 / 1e6,
            naive,
            r.naive_extra_bytes as f64 / 1e6
        );
        if let Some(why) = &r.naive_skipped {
            s += &format!("        naive skipped at N = {}: {why}\n", r.n);
        }
    }
    s
}

/// Runs the benchmark and returns its report (text, or JSON with `--json`).
pub fn run(args: &Args) -> Result<String> {
    let dev = CudaDevice::new()?;
    let blas = Blas::new(&dev)?;
    let mut rows = Vec::new();
    let mut rates: Vec<(usize, f64)> = Vec::new();
    for &n in &args.n {
        let gemm_n = n.min(args.gemm_max_n);
        let rate = match rates.iter().find(|(m, _)| *m == gemm_n) {
            Some(&(_, r)) => r,
            None => {
                let r = gemm_rate(&dev, &blas, gemm_n, args.dim, args.iters)?;
                rates.push((gemm_n, r));
                r
            }
        };
        rows.push(measure(&dev, &blas, n, args.dim, args.iters, !args.no_naive, rate)?);
    }
    let device = dev.info().map(|i| i.name).unwrap_or_else(|_| "unknown device".into());
    let report = Report { device, iters: args.iters, rows };
    if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid { op: "bench clip-loss", msg: e.to_string() })
    } else {
        Ok(table(&report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_loss_bench_memory_is_far_below_the_naive_form() {
        let spec = ClipLoss::symmetric(32768, DIM);
        let (fused, naive) = (fused_extra_bytes(&spec), naive_extra_bytes(&spec));
        // The naive form holds 4N² + 2N² bytes of logits and gradient: 6.4 GB at 32k.
        assert!(naive > 6_000_000_000, "{naive}");
        assert!(fused * 50 < naive, "fused {fused} vs naive {naive}");
        let spec = ClipLoss::symmetric(262_144, DIM);
        assert!(fused_extra_bytes(&spec) < 1 << 30, "{}", fused_extra_bytes(&spec));
        assert!((floor_flops(32768, 512) / 1e12 - 4.398).abs() < 0.01);
    }
}
