//! criterion group `clip_loss`: the fused CLIP loss (kernels/clip_loss.cu) and the materialised baseline
//! (kernels/clip_loss_naive.cu), forward + backward with both gradients, bf16, D = 512, N in 4k, 16k, 32k, 64k, 256k
//! (`CLIPRT_CLIP_LOSS_N=4096,32768` for fewer). Each iteration batch is timed with CUDA events (criterion's
//! `iter_custom`); the throughput shown is the 4-GEMM floor's FLOPs, so criterion's "elements/s" reads as effective
//! FLOP/s. Before the groups it prints, per N, the table row of `cliprt bench clip-loss` (median times, the floor at
//! the cuBLASLt rate measured in the same run, extra memory, the naive time where it fits).
//!
//! Without a GPU it prints one `skipped: …` line and exits 0.

use std::time::Duration;

use cliprt::backend::cuda::blas::Blas;
use cliprt::backend::cuda::CudaDevice;
use cliprt::kernel_bench::clip_loss::{floor_flops, gemm_rate, measure, Workload, DIM, SIZES};
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

fn main() {
    let dev = match CudaDevice::new() {
        Ok(dev) => dev,
        Err(e) => {
            println!("skipped: no CUDA device: {e}");
            return;
        }
    };
    let blas = match Blas::new(&dev) {
        Ok(b) => b,
        Err(e) => {
            println!("skipped: no cuBLASLt: {e}");
            return;
        }
    };
    let sizes: Vec<usize> = std::env::var("CLIPRT_CLIP_LOSS_N")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| SIZES.to_vec());
    let rate = gemm_rate(&dev, &blas, 16384, DIM, 10).expect("gemm rate");
    println!("cuBLASLt bf16 16384×16384×{DIM} (fp32 out): {:.0} TFLOP/s", rate / 1e12);
    for &n in &sizes {
        let row = measure(&dev, &blas, n, DIM, 5, true, rate).expect("measure");
        println!(
            "N {:>6}: fwd {:.3} ms, fwd+bwd {:.3} ms ({:.2}× the 4-GEMM floor {:.3} ms), extra {:.1} MB; naive {} ({:.0} MB)",
            n,
            row.forward_ms,
            row.forward_backward_ms,
            row.ratio_to_floor,
            row.floor_ms,
            row.extra_bytes as f64 / 1e6,
            row.naive_forward_backward_ms.map_or_else(|| row.naive_skipped.clone().unwrap_or_default(), |v| format!("{v:.3} ms")),
            row.naive_extra_bytes as f64 / 1e6,
        );
    }

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let free = dev.info().map(|i| i.free_memory_bytes).unwrap_or(0);
    for &n in &sizes {
        let naive_fits =
            cliprt::kernel_bench::clip_loss::naive_extra_bytes(&cliprt::backend::ClipLoss::symmetric(n, DIM))
                + (2 << 30)
                < free;
        let mut w = Workload::new(&dev, &blas, n, DIM, naive_fits).expect("workload");
        let mut group = criterion.benchmark_group(format!("clip_loss/n{n}"));
        group.throughput(Throughput::Elements(floor_flops(n, DIM) as u64));
        group.bench_function("fused forward+backward", |b| {
            b.iter_custom(|k| timed(&dev, k, || w.forward_backward().unwrap()))
        });
        if w.has_naive() {
            group.bench_function("naive forward+backward", |b| {
                b.iter_custom(|k| timed(&dev, k, || w.naive_forward_backward().unwrap()))
            });
        }
        group.finish();
    }
    criterion.final_summary();
}
