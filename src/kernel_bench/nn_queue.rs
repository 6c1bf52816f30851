//! `cliprt bench nn-queue`: the fused nearest-neighbour search (kernels/nn_queue.cu, top-1) against the GEMM floor and
//! the two-pass baselines, bf16, in one run on the GPU.
//!
//! Shapes (issue #7): B queries in {256, 4096, 16384} × K keys in {65536, 262144} × D in {256, 512, 1024}
//! (`--batch`, `--keys`, `--dim` for fewer). Per shape:
//! - `fused`: `CudaDevice::nn_queue_search::<bf16>`, k = 1 (norms, tiles + running arg-max, merge);
//! - `gemm`: the floor, one cuBLASLt B×K×D product `Q·Kᵀ` (bf16 in, bf16 out, fp32 accumulation) timed in the same run
//!   (its rate in TFLOP/s is printed: 2·B·K·D over its time);
//! - `two-pass f32`: `nn_search_naive` (queries normalised, cuBLASLt fp32 scores [B, K], kernels/nn_topk.cu);
//! - `two-pass bf16`: queries normalised, cuBLASLt bf16 scores, `nn_queue_argmax_bf16`.
//!
//! Each is timed with a CUDA event pair around every call after warm-up calls; the median is reported, with
//! fused / floor and best-baseline / fused. The targets (B = 4096, K = 65536, D = 512): fused ≤ 1.5× the
//! floor and ≥ 1.3× faster than the better baseline. The baselines allocate the B×K scores (17 GB in fp32 at
//! B = 16384, K = 262144); `--no-baseline` skips them.
//!
//! Without a GPU it returns `Error::CudaUnavailable` (one line saying why). `benches/nn_queue.rs` is the criterion
//! face of the same workloads ([`Workload`]).

use cudarc::driver::CudaSlice;
use half::bf16;

use crate::backend::cuda::blas::Blas;
use crate::backend::cuda::nn_search::nn_search_naive_scratch_len;
use crate::backend::cuda::{CudaDevice, DeviceViews};
use crate::backend::Gemm;
use crate::error::{Error, Result};
use crate::kernel_bench::attention::median_ms;

/// The arguments of `cliprt bench nn-queue`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Query batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = BATCHES.to_vec())]
    pub batch: Vec<usize>,
    /// Queue sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = KEYS.to_vec())]
    pub keys: Vec<usize>,
    /// Embedding widths (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = DIMS.to_vec())]
    pub dim: Vec<usize>,
    /// Timed calls per variant (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Skip the two-pass baselines (they allocate the B×K scores).
    #[arg(long)]
    pub no_baseline: bool,
}

/// The sizes of the issue.
pub const BATCHES: [usize; 3] = [256, 4096, 16384];
pub const KEYS: [usize; 2] = [65536, 262144];
pub const DIMS: [usize; 3] = [256, 512, 1024];

/// One benchmark shape.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Shape {
    pub batch: usize,
    pub num_keys: usize,
    pub dim: usize,
}

impl Shape {
    /// 2·B·K·D: the product every variant computes.
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.num_keys) as f64 * self.dim as f64
    }
    /// Minimum bytes of the fused search: queries and keys read once (bf16), index and cosine written.
    pub fn floor_bytes(&self) -> f64 {
        2.0 * ((self.batch + self.num_keys) * self.dim) as f64 + 8.0 * self.batch as f64
    }
}

/// Every shape of the issue, in table order.
pub fn shapes(batches: &[usize], keys: &[usize], dims: &[usize]) -> Vec<Shape> {
    let mut out = Vec::new();
    for &num_keys in keys {
        for &dim in dims {
            for &batch in batches {
                out.push(Shape { batch, num_keys, dim });
            }
        }
    }
    out
}

/// Non-zero bf16 data without a slow host-side draw: a small pseudo-random pattern in [−1, 1] repeated (the keys are
/// not unit rows; the search does not care, and every variant sees the same values).
fn pattern(dev: &CudaDevice, len: usize, salt: u32) -> Result<CudaSlice<bf16>> {
    let pattern: Vec<bf16> = (0..4099u32)
        .map(|i| {
            let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) >> 8;
            bf16::from_f32((h % 2001) as f32 / 1000.0 - 1.0)
        })
        .collect();
    let host: Vec<bf16> = pattern.iter().copied().cycle().take(len).collect();
    dev.upload(&host)
}

/// The buffers of one shape: inputs, outputs, the fused search's scratch and (with `baseline`) the B×K scores.
pub struct Workload<'d> {
    dev: &'d CudaDevice,
    blas: Blas,
    pub shape: Shape,
    queries: CudaSlice<bf16>,
    keys: CudaSlice<bf16>,
    index: CudaSlice<i32>,
    sim: CudaSlice<f32>,
    scratch: CudaSlice<f32>,
    /// The GEMM floor's output and the bf16 baseline's scores `[B, K]` bf16.
    scores_bf16: CudaSlice<bf16>,
    /// The fp32 baseline's scratch (scores `[B, K]` fp32 and normalised queries), with `baseline`.
    naive: Option<CudaSlice<f32>>,
    q_hat: CudaSlice<bf16>,
    q_norms: CudaSlice<f32>,
}

impl<'d> Workload<'d> {
    pub fn new(dev: &'d CudaDevice, shape: Shape, baseline: bool) -> Result<Workload<'d>> {
        let Shape { batch, num_keys, dim } = shape;
        let naive = if baseline {
            Some(dev.zeros::<f32>(nn_search_naive_scratch_len::<bf16>(batch, num_keys, dim))?)
        } else {
            None
        };
        Ok(Workload {
            dev,
            blas: Blas::new(dev)?,
            shape,
            queries: pattern(dev, batch * dim, 1)?,
            keys: pattern(dev, num_keys * dim, 2)?,
            index: dev.zeros(batch)?,
            sim: dev.zeros(batch)?,
            scratch: dev.zeros(dev.nn_queue_scratch_len(batch, num_keys, 1).max(1))?,
            scores_bf16: dev.zeros(batch * num_keys)?,
            naive,
            q_hat: dev.zeros(batch * dim)?,
            q_norms: dev.zeros(batch)?,
        })
    }
    pub fn has_baseline(&self) -> bool {
        self.naive.is_some()
    }
    /// The fused search, top-1.
    pub fn fused(&mut self) -> Result<()> {
        let Shape { batch, num_keys, dim } = self.shape;
        self.dev.nn_queue_search::<bf16>(
            &self.queries.dref(),
            &self.keys.dref(),
            &mut self.index.dmut(),
            &mut self.sim.dmut(),
            batch,
            num_keys,
            dim,
            1,
            &mut self.scratch.dmut(),
        )
    }
    /// The floor: the B×K×D product alone (bf16 out).
    pub fn gemm(&mut self) -> Result<()> {
        let Shape { batch, num_keys, dim } = self.shape;
        self.blas.gemm::<bf16, bf16>(
            &Gemm::new(batch, num_keys, dim, false, true),
            &self.queries.dref(),
            &self.keys.dref(),
            &mut self.scores_bf16.dmut(),
        )
    }
    /// Two-pass with fp32 scores: `nn_search_naive` (the path `CudaBackend::nn_search` ran before the fused kernel).
    pub fn two_pass_f32(&mut self) -> Result<()> {
        let Shape { batch, num_keys, dim } = self.shape;
        let scratch = self.naive.as_mut().ok_or_else(no_baseline)?;
        self.dev.nn_search_naive::<bf16>(
            &self.blas,
            &self.queries.dref(),
            &self.keys.dref(),
            &mut self.index.dmut(),
            &mut self.sim.dmut(),
            batch,
            num_keys,
            dim,
            1,
            &mut scratch.dmut(),
        )
    }
    /// Two-pass with bf16 scores: normalise, cuBLASLt bf16 scores, the bf16 arg-max.
    pub fn two_pass_bf16(&mut self) -> Result<()> {
        let Shape { batch, num_keys, dim } = self.shape;
        if self.naive.is_none() {
            return Err(no_baseline());
        }
        self.dev.l2norm_forward(&self.queries.dref(), &mut self.q_hat.dmut(), &mut self.q_norms.dmut(), batch, dim)?;
        self.blas.gemm::<bf16, bf16>(
            &Gemm::new(batch, num_keys, dim, false, true),
            &self.q_hat.dref(),
            &self.keys.dref(),
            &mut self.scores_bf16.dmut(),
        )?;
        self.dev.nn_queue_argmax_bf16(
            &self.scores_bf16.dref(),
            &mut self.index.dmut(),
            &mut self.sim.dmut(),
            batch,
            num_keys,
        )
    }
}

fn no_baseline() -> Error {
    Error::Invalid { op: "bench nn-queue", msg: "the workload was built without the baseline buffers".into() }
}

/// One row of the report.
#[derive(serde::Serialize, Debug, Clone)]
pub struct Row {
    pub shape: Shape,
    pub fused_ms: f64,
    /// The B×K×D cuBLASLt GEMM (bf16 out) measured in this run, and its rate.
    pub gemm_floor_ms: f64,
    pub gemm_tflops: f64,
    /// fused / floor (the target at B = 4096, K = 65536, D = 512: ≤ 1.5).
    pub fused_over_floor: f64,
    pub two_pass_f32_ms: Option<f64>,
    pub two_pass_bf16_ms: Option<f64>,
    /// The better baseline / fused (target ≥ 1.3); > 1 means the fused search is faster.
    pub speedup_over_best_baseline: Option<f64>,
}

/// The whole report.
#[derive(serde::Serialize, Debug, Clone)]
pub struct Report {
    pub device: String,
    pub iters: usize,
    pub rows: Vec<Row>,
}

/// Times one shape.
pub fn measure(dev: &CudaDevice, shape: Shape, iters: usize, baseline: bool) -> Result<Row> {
    let mut w = Workload::new(dev, shape, baseline)?;
    let stream = dev.stream().clone();
    let fused_ms = median_ms(&stream, 3, iters, || w.fused())?;
    let gemm_floor_ms = median_ms(&stream, 3, iters, || w.gemm())?;
    let (two_pass_f32_ms, two_pass_bf16_ms) = if baseline {
        (
            Some(median_ms(&stream, 2, iters, || w.two_pass_f32())?),
            Some(median_ms(&stream, 2, iters, || w.two_pass_bf16())?),
        )
    } else {
        (None, None)
    };
    let best = match (two_pass_f32_ms, two_pass_bf16_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => None,
    };
    Ok(Row {
        shape,
        fused_ms,
        gemm_floor_ms,
        gemm_tflops: shape.flops() / (gemm_floor_ms * 1e-3) / 1e12,
        fused_over_floor: fused_ms / gemm_floor_ms,
        two_pass_f32_ms,
        two_pass_bf16_ms,
        speedup_over_best_baseline: best.map(|b| b / fused_ms),
    })
}

/// One line saying which is faster, for a row.
pub fn verdict(r: &Row) -> String {
    match r.speedup_over_best_baseline {
        Some(s) if s >= 1.0 => format!("fused {s:.2}× faster than the best two-pass"),
        Some(s) => format!("two-pass {:.2}× faster than fused", 1.0 / s),
        None => "no baseline".into(),
    }
}

fn table(report: &Report) -> String {
    let mut s = format!(
        "nn-queue search (bf16, top-1) on {}; median of {} calls (ms); floor = the B×K×D cuBLASLt GEMM in this run\n",
        report.device, report.iters
    );
    s += &format!(
        "{:>6} {:>7} {:>5} {:>9} {:>9} {:>7} {:>8} {:>11} {:>11}  {}\n",
        "B", "K", "D", "fused", "gemm", "TFLOP/s", "fused/fl", "2pass f32", "2pass bf16", "verdict"
    );
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    for r in &report.rows {
        s += &format!(
            "{:>6} {:>7} {:>5} {:>9.4} {:>9.4} {:>7.0} {:>7.2}× {:>11} {:>11}  {}\n",
            r.shape.batch,
            r.shape.num_keys,
            r.shape.dim,
            r.fused_ms,
            r.gemm_floor_ms,
            r.gemm_tflops,
            r.fused_over_floor,
            opt(r.two_pass_f32_ms),
            opt(r.two_pass_bf16_ms),
            verdict(r)
        );
    }
    s
}

/// Runs the benchmark and returns its report (text, or JSON with `--json`).
pub fn run(args: &Args) -> Result<String> {
    let dev = CudaDevice::new()?;
    let mut rows = Vec::new();
    for shape in shapes(&args.batch, &args.keys, &args.dim) {
        rows.push(measure(&dev, shape, args.iters, !args.no_baseline)?);
    }
    let device = dev.info().map(|i| i.name).unwrap_or_else(|_| "unknown device".into());
    let report = Report { device, iters: args.iters, rows };
    if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid { op: "bench nn-queue", msg: e.to_string() })
    } else {
        Ok(table(&report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nn_queue_bench_floors_match_the_kernel_header() {
        // kernels/nn_queue.cu: B = 4096, K = 65536, D = 512 is 275 GFLOP and ≈ 71 MB of unavoidable traffic.
        let s = Shape { batch: 4096, num_keys: 65536, dim: 512 };
        assert!((s.flops() / 1e9 - 274.9).abs() < 0.1, "{}", s.flops());
        assert!((s.floor_bytes() / 1e6 - 71.3).abs() < 0.1, "{}", s.floor_bytes());
        assert_eq!(shapes(&BATCHES, &KEYS, &DIMS).len(), 18);
    }
}
