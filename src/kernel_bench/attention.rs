//! `cliprt bench attention`: the fused attention kernel (kernels/attention.cu) against its byte floor and the naive
//! baseline (kernels/attention_naive.cu), bf16, in one run on the GPU.
//!
//! Shapes: ViT-B/32 (S = 50, H = 12, Dh = 64), ViT-B/16 (S = 197, H = 12, Dh = 64) and the text tower (S = 77,
//! causal, H = 8, Dh = 64), packed `[B, S, 3·width]` QKV read in place, at batch 256, 512 and 1024 (`--batch`).
//! Each kernel is timed with a CUDA event pair around every launch (after warm-up launches); the median is
//! reported. The floor is the minimum bytes each pass must move (forward: Q, K, V read, O and lse written;
//! backward: Q, K, V, O, dO, lse read, dQ, dK, dV written) at the device-to-device copy bandwidth measured in the
//! same run (a copy of a 1 GiB buffer: read + write bytes over the median time).
//!
//! Without a GPU it returns `Error::CudaUnavailable` (one line saying why). `benches/attention.rs` is the criterion
//! face of the same workloads ([`Workload`]).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use crate::backend::cuda::attention::{attention_saved_len, attention_scratch_len};
use crate::backend::cuda::attention_naive::{attention_naive_saved_len, attention_naive_scratch_len};
use crate::backend::cuda::{CudaDevice, DeviceViews};
use crate::backend::Attention;
use crate::error::{Error, Result};

/// The arguments of `cliprt bench attention`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![256usize, 512, 1024])]
    pub batch: Vec<usize>,
    /// Timed launches per kernel (the median is reported).
    #[arg(long, default_value_t = 30)]
    pub iters: usize,
    /// Skip the naive baseline (it allocates B·H·S² fp32 probabilities twice: 3.8 GB at ViT-B/16, batch 1024).
    #[arg(long)]
    pub no_naive: bool,
}

/// One benchmark shape (per-sequence; the batch comes from the command line).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub name: &'static str,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

/// ViT-B/32, the text tower, ViT-B/16.
pub const SHAPES: [Shape; 3] = [
    Shape { name: "vit-b32", seq: 50, heads: 12, head_dim: 64, causal: false },
    Shape { name: "text", seq: 77, heads: 8, head_dim: 64, causal: true },
    Shape { name: "vit-b16", seq: 197, heads: 12, head_dim: 64, causal: false },
];

/// The batch sizes of the issue.
pub const BATCHES: [usize; 3] = [256, 512, 1024];

impl Shape {
    pub fn spec(&self, batch: usize) -> Attention {
        Attention::packed_self(batch, self.seq, self.heads, self.head_dim, self.causal)
    }
}

/// Minimum bytes of the forward: Q, K, V read, O written (bf16), lse written (fp32).
pub fn forward_floor_bytes(spec: &Attention) -> f64 {
    let rows = (spec.batch * spec.seq_q * spec.width()) as f64;
    let kv_rows = (spec.batch * spec.seq_k * spec.width()) as f64;
    2.0 * (2.0 * rows + 2.0 * kv_rows) + 4.0 * attention_saved_len(spec) as f64
}

/// Minimum bytes of the backward: Q, K, V, O, dO and lse read, dQ, dK, dV written.
pub fn backward_floor_bytes(spec: &Attention) -> f64 {
    let rows = (spec.batch * spec.seq_q * spec.width()) as f64;
    let kv_rows = (spec.batch * spec.seq_k * spec.width()) as f64;
    2.0 * (3.0 * rows + 2.0 * kv_rows) + 2.0 * (rows + 2.0 * kv_rows) + 4.0 * attention_saved_len(spec) as f64
}

/// FLOPs of the forward (4·B·H·Sq·Sk·Dh, no causal discount); the backward's five products are 2.5× that.
pub fn forward_flops(spec: &Attention) -> f64 {
    4.0 * (spec.batch * spec.heads * spec.seq_q * spec.seq_k * spec.head_dim) as f64
}

/// Non-zero bf16 data without a slow host-side draw: a small pseudo-random pattern in [−1, 1] repeated.
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

/// The buffers of one (shape, batch): inputs, outputs, saved state and scratch of both kernels.
pub struct Workload<'d> {
    dev: &'d CudaDevice,
    pub spec: Attention,
    qkv: CudaSlice<bf16>,
    out: CudaSlice<bf16>,
    dout: CudaSlice<bf16>,
    dqkv: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
    dsum: CudaSlice<f32>,
    /// Probabilities and dS of the naive kernel (None with `naive = false`).
    naive: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
}

impl<'d> Workload<'d> {
    pub fn new(dev: &'d CudaDevice, spec: Attention, naive: bool) -> Result<Workload<'d>> {
        let naive = if naive {
            Some((dev.zeros::<f32>(attention_naive_saved_len(&spec))?, dev.zeros(attention_naive_scratch_len(&spec))?))
        } else {
            None
        };
        Ok(Workload {
            dev,
            spec,
            qkv: pattern(dev, spec.qkv_len(), 1)?,
            out: dev.zeros(spec.out_len())?,
            dout: pattern(dev, spec.out_len(), 2)?,
            dqkv: dev.zeros(spec.qkv_len())?,
            lse: dev.zeros(attention_saved_len(&spec))?,
            dsum: dev.zeros(attention_scratch_len(&spec))?,
            naive,
        })
    }
    pub fn has_naive(&self) -> bool {
        self.naive.is_some()
    }
    pub fn forward(&mut self) -> Result<()> {
        self.dev.attention_forward(&self.spec, &self.qkv.dref(), None, &mut self.out.dmut(), &mut self.lse.dmut())
    }
    pub fn backward(&mut self) -> Result<()> {
        self.dev.attention_backward(
            &self.spec,
            &self.qkv.dref(),
            None,
            &self.out.dref(),
            &self.lse.dref(),
            &self.dout.dref(),
            &mut self.dqkv.dmut(),
            &mut self.dsum.dmut(),
        )
    }
    pub fn naive_forward(&mut self) -> Result<()> {
        let (probs, _) = self.naive.as_mut().ok_or_else(no_naive)?;
        self.dev.attention_naive_forward(&self.spec, &self.qkv.dref(), None, &mut self.out.dmut(), &mut probs.dmut())
    }
    pub fn naive_backward(&mut self) -> Result<()> {
        let (probs, scratch) = self.naive.as_mut().ok_or_else(no_naive)?;
        self.dev.attention_naive_backward(
            &self.spec,
            &self.qkv.dref(),
            None,
            &probs.dref(),
            &self.dout.dref(),
            &mut self.dqkv.dmut(),
            &mut scratch.dmut(),
        )
    }
}

fn no_naive() -> Error {
    Error::Invalid { op: "bench attention", msg: "the workload was built without the naive buffers".into() }
}

fn event_error(e: cudarc::driver::DriverError) -> Error {
    Error::Cuda { op: "bench attention (CUDA events)", msg: e.to_string() }
}

/// Median milliseconds per launch of `f`: `warmup` untimed launches, then `iters` launches each between a pair of
/// CUDA events on `stream`.
pub fn median_ms(
    stream: &Arc<CudaStream>,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut pairs = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let start = stream.record_event(timing).map_err(event_error)?;
        f()?;
        let end = stream.record_event(timing).map_err(event_error)?;
        pairs.push((start, end));
    }
    stream.synchronize().map_err(event_error)?;
    let mut ms = pairs
        .iter()
        .map(|(s, e)| s.elapsed_ms(e).map(f64::from))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(event_error)?;
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// Device-to-device copy bandwidth in bytes/s (read + write) over a 1 GiB buffer, median of `iters` copies.
pub fn copy_bandwidth(dev: &CudaDevice, iters: usize) -> Result<f64> {
    const BYTES: usize = 1 << 30;
    let src = dev.zeros::<u8>(BYTES)?;
    let mut dst = dev.zeros::<u8>(BYTES)?;
    let stream = dev.stream().clone();
    let ms = median_ms(&stream, 2, iters, || {
        stream.memcpy_dtod(&src, &mut dst).map_err(|e| Error::Cuda { op: "bench attention (copy)", msg: e.to_string() })
    })?;
    Ok(2.0 * BYTES as f64 / (ms * 1e-3))
}

/// One row of the report.
#[derive(serde::Serialize, Debug, Clone)]
pub struct Row {
    pub shape: &'static str,
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub forward_floor_ms: f64,
    pub backward_floor_ms: f64,
    /// Floor time over measured time, in percent.
    pub forward_pct_of_floor: f64,
    pub backward_pct_of_floor: f64,
    pub naive_forward_ms: Option<f64>,
    pub naive_backward_ms: Option<f64>,
}

/// The whole report.
#[derive(serde::Serialize, Debug, Clone)]
pub struct Report {
    pub device: String,
    pub copy_bandwidth_gb_s: f64,
    pub iters: usize,
    pub rows: Vec<Row>,
}

/// Times one (shape, batch).
pub fn measure(
    dev: &CudaDevice,
    shape: &Shape,
    batch: usize,
    iters: usize,
    naive: bool,
    bandwidth: f64,
) -> Result<Row> {
    let spec = shape.spec(batch);
    let mut w = Workload::new(dev, spec, naive)?;
    let stream = dev.stream().clone();
    let forward_ms = median_ms(&stream, 3, iters, || w.forward())?;
    let backward_ms = median_ms(&stream, 3, iters, || w.backward())?;
    let (naive_forward_ms, naive_backward_ms) = if naive {
        (
            Some(median_ms(&stream, 2, iters, || w.naive_forward())?),
            Some(median_ms(&stream, 2, iters, || w.naive_backward())?),
        )
    } else {
        (None, None)
    };
    let forward_floor_ms = forward_floor_bytes(&spec) / bandwidth * 1e3;
    let backward_floor_ms = backward_floor_bytes(&spec) / bandwidth * 1e3;
    Ok(Row {
        shape: shape.name,
        batch,
        seq: shape.seq,
        heads: shape.heads,
        head_dim: shape.head_dim,
        causal: shape.causal,
        forward_ms,
        backward_ms,
        forward_floor_ms,
        backward_floor_ms,
        forward_pct_of_floor: 100.0 * forward_floor_ms / forward_ms,
        backward_pct_of_floor: 100.0 * backward_floor_ms / backward_ms,
        naive_forward_ms,
        naive_backward_ms,
    })
}

fn table(report: &Report) -> String {
    let mut s = format!(
        "attention (bf16, packed QKV) on {}; copy bandwidth {:.0} GB/s; median of {} launches\n",
        report.device, report.copy_bandwidth_gb_s, report.iters
    );
    s += &format!(
        "{:<8} {:>5} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7} {:>11} {:>11}\n",
        "shape", "batch", "fwd ms", "fwd floor", "fwd %", "bwd ms", "bwd floor", "bwd %", "naive fwd", "naive bwd"
    );
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    for r in &report.rows {
        s += &format!(
            "{:<8} {:>5} {:>10.4} {:>10.4} {:>6.1}% {:>10.4} {:>10.4} {:>6.1}% {:>11} {:>11}\n",
            r.shape,
            r.batch,
            r.forward_ms,
            r.forward_floor_ms,
            r.forward_pct_of_floor,
            r.backward_ms,
            r.backward_floor_ms,
            r.backward_pct_of_floor,
            opt(r.naive_forward_ms),
            opt(r.naive_backward_ms)
        );
    }
    s
}

/// Runs the benchmark and returns its report (text, or JSON with `--json`).
pub fn run(args: &Args) -> Result<String> {
    let dev = CudaDevice::new()?;
    let bandwidth = copy_bandwidth(&dev, args.iters.max(5))?;
    let mut rows = Vec::new();
    for shape in &SHAPES {
        for &batch in &args.batch {
            rows.push(measure(&dev, shape, batch, args.iters, !args.no_naive, bandwidth)?);
        }
    }
    let device = dev.info().map(|i| i.name).unwrap_or_else(|_| "unknown device".into());
    let report = Report { device, copy_bandwidth_gb_s: bandwidth / 1e9, iters: args.iters, rows };
    if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid { op: "bench attention", msg: e.to_string() })
    } else {
        Ok(table(&report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_bench_floors_match_the_kernel_header() {
        // kernels/attention.cu: ViT-B/32 at batch 256 moves 79 MB forward, 159 MB backward.
        let spec = SHAPES[0].spec(256);
        assert!((forward_floor_bytes(&spec) / 1e6 - 79.3).abs() < 0.5, "{}", forward_floor_bytes(&spec));
        assert!((backward_floor_bytes(&spec) / 1e6 - 157.9).abs() < 0.5, "{}", backward_floor_bytes(&spec));
        assert!((forward_flops(&spec) / 1e9 - 1.97).abs() < 0.01);
        let text = SHAPES[1].spec(256);
        assert!((forward_floor_bytes(&text) / 1e6 - 81.4).abs() < 0.5, "{}", forward_floor_bytes(&text));
    }
}
