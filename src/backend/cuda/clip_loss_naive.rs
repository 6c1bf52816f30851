//! The CLIP loss in its materialised form on the GPU: cuBLASLt logits `[n, n]` in fp32 scratch, row and column
//! log-sum-exp kernels, cuBLASLt gradients. The baseline the fused kernel of issue #6 is measured against.
//!
//! Semantics of [`Backend::clip_loss_forward`] / [`Backend::clip_loss_backward`] (CPU reference in
//! `backend/cpu/loss.rs`): the saved state is the CPU's 4n (row lse, column lse, image norms, text norms), the
//! embedding gradients are OVERWRITTEN and `dlog_scale` ACCUMULATED. The log scale `t` stays on the device: every
//! kernel reads `log_scale[0]` itself, the GEMMs compute the unscaled cosines, and the scale `exp(t)` is applied in the
//! kernels (the backward's GEMM operand is `exp(t)·G`). The loss is written by a kernel. Nothing is downloaded, so a
//! training step never waits for the device here.
//!
//! Every reduction runs in an order fixed by `n` (see the header of `kernels/clip_loss_naive.cu`): the same inputs
//! give the same bits on every run.
//!
//! [`Backend::clip_loss_forward`]: crate::backend::Backend::clip_loss_forward
//! [`Backend::clip_loss_backward`]: crate::backend::Backend::clip_loss_backward

use std::mem::size_of;
use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::blas::{Blas, GemmMode};
use super::launch::{cuda_error, elementwise_config, KernelFloat};
use super::norm::row_config;
use super::view::{CudaMut, CudaRef};
use super::CudaDevice;
use crate::backend::{ClipLoss, Gemm};
use crate::error::{check_len, check_min_len, Error, Result};

/// The kernels of `kernels/clip_loss_naive.cu`.
pub const KERNELS: &[&str] = &[
    "clip_row_stats",
    "clip_col_partials",
    "clip_col_stats",
    "clip_loss_total",
    "clip_dlog_scale",
    "clip_normalize_f32",
    "clip_normalize_bf16",
    "clip_grad_logits_f32",
    "clip_grad_logits_bf16",
    "clip_normalize_backward_f32",
    "clip_normalize_backward_bf16",
];

/// Rows per chunk of the column statistics (CLIP_COL_CHUNK_ROWS in the .cu): part of the summation order, so fixed.
pub const COL_CHUNK_ROWS: usize = 128;
/// Threads of the single-block sums (loss, dlog_scale; CLIP_SUM_THREADS in the .cu): part of the summation order.
pub const SUM_THREADS: u32 = 1024;
/// Threads per block of the column-partials kernel (one per column).
const COL_THREADS: u32 = 256;
/// The largest grid y dimension: the column chunks are launched along it.
const MAX_GRID_Y: usize = 65535;

/// Elements of the saved state: row log-sum-exps, column log-sum-exps, image norms, text norms (4n, as the CPU).
pub fn clip_loss_naive_saved_len(spec: &ClipLoss) -> usize {
    2 * (spec.rows + spec.cols)
}

/// f32 elements a region of `len` `E`s takes in the scratch, rounded up to 256 bytes so that every region starts
/// 256-byte aligned (cuBLASLt's fast paths and the kernels' 16-byte packs).
fn region<E>(len: usize) -> usize {
    (len * size_of::<E>()).div_ceil(256) * (256 / size_of::<f32>())
}

/// The scratch regions, in f32 elements, in order. Forward: logits (the unscaled cosines, fp32), Î, T̂ (`T`), the
/// column partials `[3, ⌈n/128⌉, n]`, the row and column cross-entropies `[n]` each. Backward: logits, Î, T̂, then
/// `exp(t)·G` (`T`, `[n, n]`), dÎ and dT̂ (fp32, `[n, dim]`), the per-row `dt` sums `[n]`.
struct Layout {
    logits: usize,
    hat: usize,
    col_partials: usize,
    per_row: usize,
    grad: usize,
    d_hat: usize,
}

impl Layout {
    fn new<T: KernelFloat>(spec: &ClipLoss) -> Layout {
        let (n, dim) = (spec.rows, spec.dim);
        Layout {
            logits: region::<f32>(n * n),
            hat: region::<T>(n * dim),
            col_partials: region::<f32>(3 * col_chunks(n) * n),
            per_row: region::<f32>(n),
            grad: region::<T>(n * n),
            d_hat: region::<f32>(n * dim),
        }
    }
    fn forward_len(&self) -> usize {
        self.logits + 2 * self.hat + self.col_partials + 2 * self.per_row
    }
    fn backward_len(&self) -> usize {
        self.logits + 2 * self.hat + self.grad + 2 * self.d_hat + self.per_row
    }
}

fn col_chunks(n: usize) -> usize {
    n.div_ceil(COL_CHUNK_ROWS)
}

/// Elements of the fp32 scratch forward and backward need (the n×n logits and whatever else; element type `T`
/// regions are carved out of it). The n×n logits dominate: 4n² bytes, plus n²·size_of::<T>() in the backward.
pub fn clip_loss_naive_scratch_len<T: KernelFloat>(spec: &ClipLoss) -> usize {
    let layout = Layout::new::<T>(spec);
    layout.forward_len().max(layout.backward_len())
}

/// A scratch region viewed as its first `len` `E`s.
fn typed<E>(region: CudaMut<'_, f32>, len: usize) -> CudaMut<'_, E> {
    debug_assert!(len * size_of::<E>() <= region.num_bytes());
    // SAFETY: the region is consumed here, so no other view reads or writes it while the result lives; it covers
    // len·size_of::<E>() bytes (Layout sized it so) and starts at an f32 address, aligned enough for f32 and bf16.
    unsafe { CudaMut::from_raw(region.ptr(), len) }
}

/// The CPU's checks (`check_clip` in backend/cpu/loss.rs), in its order, plus the symmetric square form (the only
/// one this baseline implements) and the limit of the column grid.
fn check_clip<T>(
    op: &'static str,
    spec: &ClipLoss,
    image: &CudaRef<'_, T>,
    text: &CudaRef<'_, T>,
    log_scale: &CudaRef<'_, f32>,
) -> Result<()> {
    spec.validate(op)?;
    let symmetric = ClipLoss::symmetric(spec.rows, spec.dim).with_label_smoothing(spec.label_smoothing);
    if *spec != symmetric {
        return Err(Error::Invalid {
            op,
            msg: format!(
                "the materialised loss covers only the symmetric square form (ClipLoss::symmetric, weights ½ and ½), \
                 not {spec:?}; the fused path (CudaBackend::clip_loss_forward) covers the rest"
            ),
        });
    }
    let n = spec.rows;
    check_len(op, "image", image.len(), n * spec.dim)?;
    check_len(op, "text", text.len(), n * spec.dim)?;
    check_len(op, "log_scale", log_scale.len(), 1)?;
    if col_chunks(n) > MAX_GRID_Y {
        return Err(Error::Invalid {
            op,
            msg: format!(
                "n = {} is too large for the materialised loss (at most {} rows); use a smaller batch",
                n,
                MAX_GRID_Y * COL_CHUNK_ROWS
            ),
        });
    }
    Ok(())
}

impl CudaDevice {
    /// cuBLASLt must queue on this device's stream: the kernels here and its GEMMs are ordered by it alone.
    fn check_blas_stream(&self, op: &'static str, blas: &Blas) -> Result<()> {
        if Arc::ptr_eq(blas.stream(), self.stream()) {
            Ok(())
        } else {
            Err(Error::Invalid {
                op,
                msg: "the cuBLASLt engine queues on another stream than the device; create it with Blas::new(dev)"
                    .into(),
            })
        }
    }

    /// Semantics of `Backend::clip_loss_forward`.
    #[allow(clippy::too_many_arguments)]
    pub fn clip_loss_naive_forward<T: KernelFloat + GemmMode<f32>>(
        &self,
        blas: &Blas,
        spec: &ClipLoss,
        image: &CudaRef<'_, T>,
        text: &CudaRef<'_, T>,
        log_scale: &CudaRef<'_, f32>,
        loss: &mut CudaMut<'_, f32>,
        saved: &mut CudaMut<'_, f32>,
        scratch: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        const OP: &str = "clip_loss_forward";
        check_clip(OP, spec, image, text, log_scale)?;
        check_len(OP, "loss", loss.len(), 1)?;
        check_len(OP, "saved", saved.len(), clip_loss_naive_saved_len(spec))?;
        check_min_len(OP, "scratch", scratch.len(), clip_loss_naive_scratch_len::<T>(spec))?;
        self.check_blas_stream(OP, blas)?;
        let (n, dim) = (spec.rows, spec.dim);
        let layout = Layout::new::<T>(spec);

        let (logits, rest) = scratch.reborrow().split_at(layout.logits);
        let (image_hat, rest) = rest.split_at(layout.hat);
        let (text_hat, rest) = rest.split_at(layout.hat);
        let (partials, rest) = rest.split_at(layout.col_partials);
        let (row_ce, rest) = rest.split_at(layout.per_row);
        let (col_ce, _) = rest.split_at(layout.per_row);
        let mut logits = typed::<f32>(logits, n * n);
        let (mut image_hat, mut text_hat) = (typed::<T>(image_hat, n * dim), typed::<T>(text_hat, n * dim));
        let mut partials = typed::<f32>(partials, 3 * col_chunks(n) * n);
        let (mut row_ce, mut col_ce) = (typed::<f32>(row_ce, n), typed::<f32>(col_ce, n));

        let (mut row_lse, rest) = saved.reborrow().split_at(n);
        let (mut col_lse, rest) = rest.split_at(n);
        let (mut image_norms, mut text_norms) = rest.split_at(n);

        self.l2norm_forward(image, &mut image_hat, &mut image_norms, n, dim)?;
        self.l2norm_forward(text, &mut text_hat, &mut text_norms, n, dim)?;
        blas.gemm::<T, f32>(&Gemm::new(n, n, dim, false, true), &image_hat.as_ref(), &text_hat.as_ref(), &mut logits)?;

        let eps = spec.label_smoothing as f32;
        let inv_n = (1.0 / n as f64) as f32;
        let n_u = n as u64;
        let logits = logits.as_ref();

        let (kernel, func) = self.kernel("clip_row_stats")?;
        let (cfg, wide) = row_config(n, n, self.multiprocessors());
        // SAFETY: (const float* cos, const float* log_scale, float* row_lse, float* row_ce, u64 n, float eps,
        // float inv_n, int wide); cos is n·n, log_scale 1, row_lse and row_ce n each.
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(&logits)
                .arg(log_scale)
                .arg(&mut row_lse)
                .arg(&mut row_ce)
                .arg(&n_u)
                .arg(&eps)
                .arg(&inv_n)
                .arg(&wide)
                .launch(cfg)
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)?;

        let chunks = col_chunks(n);
        let chunks_u = chunks as u64;
        let (kernel, func) = self.kernel("clip_col_partials")?;
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(COL_THREADS as usize) as u32, chunks as u32, 1),
            block_dim: (COL_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: (const float* cos, const float* log_scale, float* partial, u64 n, u64 chunks); cos is n·n,
        // partial 3·chunks·n; the grid covers n columns × chunks (≤ 65535, checked) and threads past n return.
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(&logits)
                .arg(log_scale)
                .arg(&mut partials)
                .arg(&n_u)
                .arg(&chunks_u)
                .launch(cfg)
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)?;

        let (kernel, func) = self.kernel("clip_col_stats")?;
        let cfg = elementwise_config(n, 1, self.multiprocessors());
        // SAFETY: (const float* partial, const float* cos, const float* log_scale, float* col_lse, float* col_ce,
        // u64 n, u64 chunks, float eps, float inv_n); partial 3·chunks·n, cos n·n, col_lse and col_ce n each.
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(&partials)
                .arg(&logits)
                .arg(log_scale)
                .arg(&mut col_lse)
                .arg(&mut col_ce)
                .arg(&n_u)
                .arg(&chunks_u)
                .arg(&eps)
                .arg(&inv_n)
                .launch(cfg)
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)?;

        let (kernel, func) = self.kernel("clip_loss_total")?;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SUM_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: (const float* row_ce, const float* col_ce, float* loss, u64 n, float inv_n); row_ce and col_ce n
        // each, loss 1; one block of SUM_THREADS (a multiple of 32, ≤ 1024, as block_sum needs).
        unsafe {
            self.stream().launch_builder(func).arg(&row_ce).arg(&col_ce).arg(loss).arg(&n_u).arg(&inv_n).launch(cfg)
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }

    /// Semantics of `Backend::clip_loss_backward` (embedding gradients OVERWRITTEN, `dlog_scale` ACCUMULATED).
    #[allow(clippy::too_many_arguments)]
    pub fn clip_loss_naive_backward<T: KernelFloat + GemmMode<f32>>(
        &self,
        blas: &Blas,
        spec: &ClipLoss,
        image: &CudaRef<'_, T>,
        text: &CudaRef<'_, T>,
        log_scale: &CudaRef<'_, f32>,
        saved: &CudaRef<'_, f32>,
        dloss: f64,
        dimage: &mut CudaMut<'_, T>,
        dtext: &mut CudaMut<'_, T>,
        dlog_scale: &mut CudaMut<'_, f32>,
        scratch: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        const OP: &str = "clip_loss_backward";
        check_clip(OP, spec, image, text, log_scale)?;
        check_len(OP, "saved", saved.len(), clip_loss_naive_saved_len(spec))?;
        check_len(OP, "dimage", dimage.len(), spec.rows * spec.dim)?;
        check_len(OP, "dtext", dtext.len(), spec.cols * spec.dim)?;
        check_len(OP, "dlog_scale", dlog_scale.len(), 1)?;
        check_min_len(OP, "scratch", scratch.len(), clip_loss_naive_scratch_len::<T>(spec))?;
        self.check_blas_stream(OP, blas)?;
        let (n, dim) = (spec.rows, spec.dim);
        let layout = Layout::new::<T>(spec);

        let (logits, rest) = scratch.reborrow().split_at(layout.logits);
        let (image_hat, rest) = rest.split_at(layout.hat);
        let (text_hat, rest) = rest.split_at(layout.hat);
        let (grad, rest) = rest.split_at(layout.grad);
        let (d_image_hat, rest) = rest.split_at(layout.d_hat);
        let (d_text_hat, rest) = rest.split_at(layout.d_hat);
        let (dt_rows, _) = rest.split_at(layout.per_row);
        let mut logits = typed::<f32>(logits, n * n);
        let (mut image_hat, mut text_hat) = (typed::<T>(image_hat, n * dim), typed::<T>(text_hat, n * dim));
        let mut grad = typed::<T>(grad, n * n);
        let (mut d_image_hat, mut d_text_hat) = (typed::<f32>(d_image_hat, n * dim), typed::<f32>(d_text_hat, n * dim));
        let mut dt_rows = typed::<f32>(dt_rows, n);

        let saved = *saved;
        let (row_lse, col_lse) = (saved.slice(0..n), saved.slice(n..2 * n));
        let (image_norms, text_norms) = (saved.slice(2 * n..3 * n), saved.slice(3 * n..4 * n));

        // Î, T̂ from the saved norms, and the cosines again.
        self.clip_normalize(image, &image_norms, &mut image_hat, n, dim)?;
        self.clip_normalize(text, &text_norms, &mut text_hat, n, dim)?;
        blas.gemm::<T, f32>(&Gemm::new(n, n, dim, false, true), &image_hat.as_ref(), &text_hat.as_ref(), &mut logits)?;

        // grad = exp(t)·G and the per-row Σ G∘Λ; the CPU's constants, rounded to f32 as it rounds them.
        let scale = (dloss / (2.0 * n as f64)) as f32;
        let off = (spec.label_smoothing / n as f64) as f32;
        let on = (1.0 - spec.label_smoothing) as f32 + off;
        let n_u = n as u64;
        let (kernel, func) = self.kernel(&format!("clip_grad_logits_{}", T::SUFFIX))?;
        let (cfg, wide) = row_config(n, n, self.multiprocessors());
        // SAFETY: (const float* cos, const float* log_scale, const float* row_lse, const float* col_lse, T* grad,
        // float* dt_rows, u64 n, float on, float off, float scale, int wide); cos and grad n·n, log_scale 1,
        // row_lse, col_lse and dt_rows n each.
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(&logits)
                .arg(log_scale)
                .arg(&row_lse)
                .arg(&col_lse)
                .arg(&mut grad)
                .arg(&mut dt_rows)
                .arg(&n_u)
                .arg(&on)
                .arg(&off)
                .arg(&scale)
                .arg(&wide)
                .launch(cfg)
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)?;

        let (kernel, func) = self.kernel("clip_dlog_scale")?;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SUM_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: (const float* dt_rows, float* dlog_scale, u64 n); dt_rows n, dlog_scale 1; one block of
        // SUM_THREADS (a multiple of 32, ≤ 1024, as block_sum needs).
        unsafe { self.stream().launch_builder(func).arg(&dt_rows).arg(dlog_scale).arg(&n_u).launch(cfg) }
            .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)?;

        // dÎ = (exp(t)·G)·T̂ and dT̂ = (exp(t)·G)ᵀ·Î, fp32.
        let grad = grad.as_ref();
        blas.gemm::<T, f32>(&Gemm::new(n, dim, n, false, false), &grad, &text_hat.as_ref(), &mut d_image_hat)?;
        blas.gemm::<T, f32>(&Gemm::new(n, dim, n, true, false), &grad, &image_hat.as_ref(), &mut d_text_hat)?;

        self.clip_normalize_backward(&d_image_hat.as_ref(), image, &image_norms, dimage, n, dim)?;
        self.clip_normalize_backward(&d_text_hat.as_ref(), text, &text_norms, dtext, n, dim)
    }

    /// `y = x / max(norm, 1e-12)` per row of `x [rows, cols]`, with the given (saved) norms.
    fn clip_normalize<T: KernelFloat>(
        &self,
        x: &CudaRef<'_, T>,
        norms: &CudaRef<'_, f32>,
        y: &mut CudaMut<'_, T>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let (kernel, func) = self.kernel(&format!("clip_normalize_{}", T::SUFFIX))?;
        check_len(kernel, "x", x.len(), rows * cols)?;
        check_len(kernel, "norms", norms.len(), rows)?;
        check_len(kernel, "y", y.len(), rows * cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (cfg, wide) = row_config(rows, cols, self.multiprocessors());
        let (rows_u, cols_u) = (rows as u64, cols as u64);
        // SAFETY: (const T* x, const float* norms, T* y, u64 rows, u64 cols, int wide); lengths checked above.
        unsafe {
            self.stream().launch_builder(func).arg(x).arg(norms).arg(y).arg(&rows_u).arg(&cols_u).arg(&wide).launch(cfg)
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }

    /// `dx = (dy − x̂·⟨dy, x̂⟩)/‖x‖` per row, x̂ = x/‖x‖ (fp32); `dy/1e-12` where the norm was clamped. `dy` fp32.
    fn clip_normalize_backward<T: KernelFloat>(
        &self,
        dy: &CudaRef<'_, f32>,
        x: &CudaRef<'_, T>,
        norms: &CudaRef<'_, f32>,
        dx: &mut CudaMut<'_, T>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let (kernel, func) = self.kernel(&format!("clip_normalize_backward_{}", T::SUFFIX))?;
        check_len(kernel, "dy", dy.len(), rows * cols)?;
        check_len(kernel, "x", x.len(), rows * cols)?;
        check_len(kernel, "norms", norms.len(), rows)?;
        check_len(kernel, "dx", dx.len(), rows * cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (cfg, wide) = row_config(rows, cols, self.multiprocessors());
        let (rows_u, cols_u) = (rows as u64, cols as u64);
        // SAFETY: (const float* dy, const T* x, const float* norms, T* dx, u64 rows, u64 cols, int wide); lengths
        // checked above.
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(dy)
                .arg(x)
                .arg(norms)
                .arg(dx)
                .arg(&rows_u)
                .arg(&cols_u)
                .arg(&wide)
                .launch(cfg)
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    fn spec(n: usize, dim: usize) -> ClipLoss {
        ClipLoss::symmetric(n, dim)
    }

    #[test]
    fn regions_are_256_byte_multiples() {
        assert_eq!(region::<f32>(0), 0);
        assert_eq!(region::<f32>(1), 64);
        assert_eq!(region::<f32>(64), 64);
        assert_eq!(region::<f32>(65), 128);
        assert_eq!(region::<bf16>(128), 64);
        assert_eq!(region::<bf16>(129), 128);
    }

    #[test]
    fn scratch_covers_both_passes() {
        // n = 300, dim = 512, bf16: logits 90000 f32, Î/T̂ 153600 bf16 each, grad 90000 bf16, dÎ/dT̂ 153600 f32.
        let s = spec(300, 512);
        let l = Layout::new::<bf16>(&s);
        assert_eq!(l.logits, 90048);
        assert_eq!(l.hat, 76800);
        assert_eq!(l.col_partials, region::<f32>(3 * 3 * 300));
        assert_eq!(l.grad, 45056);
        assert_eq!(l.d_hat, 153600);
        assert_eq!(clip_loss_naive_scratch_len::<bf16>(&s), l.forward_len().max(l.backward_len()));
        assert_eq!(clip_loss_naive_scratch_len::<bf16>(&s), 90048 + 2 * 76800 + 45056 + 2 * 153600 + 320);
        // f32: the backward (two n×n regions) is the larger.
        let l = Layout::new::<f32>(&spec(4096, 512));
        assert_eq!(clip_loss_naive_scratch_len::<f32>(&spec(4096, 512)), l.backward_len());
        assert!(l.backward_len() >= 2 * 4096 * 4096 + 4 * 4096 * 512);
    }

    #[test]
    fn column_chunks_split_rows_by_128() {
        assert_eq!(col_chunks(1), 1);
        assert_eq!(col_chunks(128), 1);
        assert_eq!(col_chunks(129), 2);
        assert_eq!(col_chunks(32768), 256);
    }
}
