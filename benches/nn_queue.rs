//! criterion group `nn_queue`: the fused nearest-neighbour search (kernels/nn_queue.cu, top-1, bf16) against the
//! B×K×D cuBLASLt GEMM (the floor, measured in the same run) and the two-pass baselines (cuBLASLt scores in fp32 or
//! bf16, then an arg-max), for B in {256, 4096, 16384} × K in {65536, 262144} × D in {256, 512, 1024}
//! (`CLIPRT_NN_QUEUE_BATCHES`, `CLIPRT_NN_QUEUE_KEYS`, `CLIPRT_NN_QUEUE_DIMS` = comma lists for fewer). Each iteration
//! batch is timed with CUDA events (criterion's `iter_custom`); the throughput is the product's FLOPs, so criterion's
//! "elem/s" reads as FLOP/s. Before the groups it prints, per shape, the median times, fused / floor, and which of the
//! fused search and the better baseline is faster, by how much (`cliprt bench nn-queue` prints the same as a table).
//!
//! Without a GPU it prints one `skipped: …` line and exits 0.

use std::time::Duration;

use cliprt::backend::cuda::CudaDevice;
use cliprt::kernel_bench::nn_queue::{measure, shapes, verdict, Workload, BATCHES, DIMS, KEYS};
use criterion::{Criterion, Throughput};
use cudarc::driver::sys::CUevent_flags;

/// `n` calls of `f` between two CUDA events.
fn timed(dev: &CudaDevice, n: u64, mut f: impl FnMut()) -> Duration {
    let stream = dev.stream();
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(flags).expect("event");
    for _ in 0..n {
        f();
    }
    let end = stream.record_event(flags).expect("event");
    let ms = start.elapsed_ms(&end).expect("elapsed");
    Duration::from_secs_f64(f64::from(ms) * 1e-3)
}

fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    let dev = match CudaDevice::new() {
        Ok(dev) => dev,
        Err(cliprt::Error::CudaUnavailable(reason)) => {
            println!("skipped: no CUDA device: {reason}");
            return;
        }
        Err(e) => {
            println!("skipped: no CUDA device: {e}");
            return;
        }
    };
    let shapes = shapes(
        &list("CLIPRT_NN_QUEUE_BATCHES", &BATCHES),
        &list("CLIPRT_NN_QUEUE_KEYS", &KEYS),
        &list("CLIPRT_NN_QUEUE_DIMS", &DIMS),
    );
    for &shape in &shapes {
        let r = measure(&dev, shape, 10, true).expect("measure");
        println!(
            "B {:>5} K {:>6} D {:>4}: fused {:.4} ms, gemm floor {:.4} ms ({:.0} TFLOP/s, fused/floor {:.2}×), two-pass \
             f32 {:.4} ms, bf16 {:.4} ms: {}",
            shape.batch,
            shape.num_keys,
            shape.dim,
            r.fused_ms,
            r.gemm_floor_ms,
            r.gemm_tflops,
            r.fused_over_floor,
            r.two_pass_f32_ms.unwrap_or(f64::NAN),
            r.two_pass_bf16_ms.unwrap_or(f64::NAN),
            verdict(&r),
        );
    }

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for &shape in &shapes {
        let mut w = Workload::new(&dev, shape, true).expect("workload");
        let mut group =
            criterion.benchmark_group(format!("nn_queue/b{}_k{}_d{}", shape.batch, shape.num_keys, shape.dim));
        group.throughput(Throughput::Elements(shape.flops() as u64));
        group.bench_function("fused", |b| b.iter_custom(|n| timed(&dev, n, || w.fused().unwrap())));
        group.bench_function("gemm floor", |b| b.iter_custom(|n| timed(&dev, n, || w.gemm().unwrap())));
        group.bench_function("two-pass f32", |b| b.iter_custom(|n| timed(&dev, n, || w.two_pass_f32().unwrap())));
        group.bench_function("two-pass bf16", |b| b.iter_custom(|n| timed(&dev, n, || w.two_pass_bf16().unwrap())));
        group.finish();
    }
    criterion.final_summary();
}
