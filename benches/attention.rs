//! criterion group `attention`: the fused attention kernel (kernels/attention.cu) and the naive baseline
//! (kernels/attention_naive.cu), forward and backward, bf16, at ViT-B/32 (S = 50, H = 12), the text tower (S = 77,
//! causal, H = 8) and ViT-B/16 (S = 197, H = 12), Dh = 64, batch 256, 512 and 1024 (`CLIPRT_ATTENTION_BATCHES=256`
//! for fewer). Each iteration batch is timed with CUDA events (criterion's `iter_custom`); the throughput shown is
//! the pass's byte floor, so criterion's "GiB/s" reads as effective bandwidth. Before the groups it prints the
//! device-to-device copy bandwidth measured in the same run and, per shape, the floor time at that bandwidth and
//! the median kernel times (`cliprt bench attention` prints the same as a table).
//!
//! Without a GPU it prints one `skipped: …` line and exits 0.

use std::time::Duration;

use cliprt::backend::cuda::CudaDevice;
use cliprt::kernel_bench::attention::{
    backward_floor_bytes, copy_bandwidth, forward_floor_bytes, measure, Workload, BATCHES, SHAPES,
};
use criterion::{Criterion, Throughput};
use cudarc::driver::sys::CUevent_flags;

/// `n` launches of `f` between two CUDA events.
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
    let batches: Vec<usize> = std::env::var("CLIPRT_ATTENTION_BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| BATCHES.to_vec());
    let bandwidth = copy_bandwidth(&dev, 10).expect("copy bandwidth");
    println!("copy bandwidth (device-to-device, read + write): {:.0} GB/s", bandwidth / 1e9);
    for shape in &SHAPES {
        for &batch in &batches {
            let row = measure(&dev, shape, batch, 20, true, bandwidth).expect("measure");
            println!(
                "{:<8} batch {:>4}: fwd {:.4} ms ({:.1}% of floor {:.4} ms, naive {:.4} ms), bwd {:.4} ms ({:.1}% of \
                 floor {:.4} ms, naive {:.4} ms)",
                row.shape,
                batch,
                row.forward_ms,
                row.forward_pct_of_floor,
                row.forward_floor_ms,
                row.naive_forward_ms.unwrap_or(f64::NAN),
                row.backward_ms,
                row.backward_pct_of_floor,
                row.backward_floor_ms,
                row.naive_backward_ms.unwrap_or(f64::NAN),
            );
        }
    }

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for shape in &SHAPES {
        for &batch in &batches {
            let spec = shape.spec(batch);
            let mut w = Workload::new(&dev, spec, true).expect("workload");
            let mut group = criterion.benchmark_group(format!("attention/{}/b{batch}", shape.name));
            group.throughput(Throughput::Bytes(forward_floor_bytes(&spec) as u64));
            group.bench_function("fused forward", |b| b.iter_custom(|n| timed(&dev, n, || w.forward().unwrap())));
            group.bench_function("naive forward", |b| b.iter_custom(|n| timed(&dev, n, || w.naive_forward().unwrap())));
            group.throughput(Throughput::Bytes(backward_floor_bytes(&spec) as u64));
            group.bench_function("fused backward", |b| b.iter_custom(|n| timed(&dev, n, || w.backward().unwrap())));
            group.bench_function("naive backward", |b| {
                b.iter_custom(|n| timed(&dev, n, || w.naive_backward().unwrap()))
            });
            group.finish();
        }
    }
    criterion.final_summary();
}
