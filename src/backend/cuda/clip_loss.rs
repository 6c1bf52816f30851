//! The fused CLIP loss on the GPU (issue #6): launchers for `kernels/clip_loss.cu` and the host loop over bands of
//! rows (forward) and blocks of rows × columns (backward). The rows×cols logits are never stored: the forward keeps
//! per-tile partial statistics within a fixed budget, the backward one `[Ra, Cb]` block of `E` (in L2) that two
//! cuBLASLt GEMMs consume. See the header of the .cu for the maths, floors and launch configuration.
//!
//! Semantics of [`Backend::clip_loss_forward`] / [`Backend::clip_loss_backward`] for every [`ClipLoss`] (symmetric,
//! one-way, offset, label smoothing, `dtext = None`), CPU reference in `backend/cpu/loss.rs`: saved state
//! `[row lse, column lse, x norms, y norms]` (2·(rows + cols)), embedding gradients OVERWRITTEN, `dlog_scale`
//! ACCUMULATED, `t` read on the device. No float atomics: the same inputs and [`ClipLossPlan`] give the same bits.
//!
//! [`Backend::clip_loss_forward`]: crate::backend::Backend::clip_loss_forward
//! [`Backend::clip_loss_backward`]: crate::backend::Backend::clip_loss_backward

use std::mem::size_of;

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::blas::{Blas, GemmMode};
use super::launch::{cuda_error, elementwise_config, KernelFloat};
use super::view::{CudaMut, CudaRef};
use super::CudaDevice;
use crate::backend::{ClipLoss, Gemm};
use crate::error::{check_len, check_min_len, Error, Result};

/// Every `extern "C"` kernel of kernels/clip_loss.cu.
pub const KERNELS: &[&str] = &[
    "clip_row_merge",
    "clip_col_merge",
    "clip_col_finish",
    "clip_loss_sum",
    "clip_fold_sums",
    "clip_dt_sum",
    "clip_row_norms_f32",
    "clip_row_norms_bf16",
    "clip_fwd_tile_f32",
    "clip_fwd_tile_bf16",
    "clip_bwd_tile_f32",
    "clip_bwd_tile_bf16",
    "clip_grad_finish_f32",
    "clip_grad_finish_bf16",
];

/// Tile edge of the tile kernels (CLIP_TILE in the .cu).
pub const TILE: usize = 128;
/// Threads of the tile kernels (CLIP_THREADS).
const TILE_THREADS: u32 = 256;
/// Dynamic shared memory of the tile kernels: the 128×129 fp32 tile of dots (the staging aliases it).
pub const TILE_SMEM_BYTES: u32 = (TILE * (TILE + 1) * 4) as u32;
/// Threads of the one-block sums (loss, dt): part of their summation order.
const SUM_THREADS: u32 = 1024;
/// Bytes the forward's per-band partials may take (row and column partials together): sets the band height.
pub const PARTIAL_BUDGET_BYTES: usize = 32 << 20;
/// The backward's block of rows × columns (E is `BLOCK²` activations: 32 MB in bf16, in L2 on an H100).
pub const BLOCK: usize = 4096;
/// The largest grid y dimension (row tiles of a band or block).
const MAX_GRID_Y: usize = 65535;

/// How the rows×cols matrix is cut: forward bands of `band_rows` rows, backward blocks of `block_rows × block_cols`.
/// Each is a multiple of [`TILE`]. Part of the summation order (the result depends on it in the last bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClipLossPlan {
    pub band_rows: usize,
    pub block_rows: usize,
    pub block_cols: usize,
}

impl ClipLossPlan {
    /// The default cut: bands as tall as [`PARTIAL_BUDGET_BYTES`] allows, blocks of [`BLOCK`]² (both clamped to the
    /// matrix, rounded up to a tile).
    pub fn new(spec: &ClipLoss) -> ClipLossPlan {
        let round = |n: usize| n.div_ceil(TILE).max(1) * TILE;
        let per_row = partial_bytes_per_row(spec.cols);
        let band = (PARTIAL_BUDGET_BYTES / per_row / TILE).max(1) * TILE;
        ClipLossPlan {
            band_rows: band.min(round(spec.rows)).min(MAX_GRID_Y * TILE),
            block_rows: BLOCK.min(round(spec.rows)),
            block_cols: BLOCK.min(round(spec.cols)),
        }
    }

    /// A chosen cut (tests and the emulator force small ones); each size a positive multiple of [`TILE`].
    pub fn with_sizes(band_rows: usize, block_rows: usize, block_cols: usize) -> Result<ClipLossPlan> {
        for (name, v) in [("band_rows", band_rows), ("block_rows", block_rows), ("block_cols", block_cols)] {
            if v == 0 || v % TILE != 0 || v > MAX_GRID_Y * TILE {
                return Err(Error::Invalid {
                    op: "ClipLossPlan",
                    msg: format!("{name} = {v} must be a positive multiple of {TILE} up to {}", MAX_GRID_Y * TILE),
                });
            }
        }
        Ok(ClipLossPlan { band_rows, block_rows, block_cols })
    }
}

/// Bytes of forward partials per band row: a (max, Σexp, Σ) triple per column tile, and per 128-row tile a triple
/// per column (amortised per row).
fn partial_bytes_per_row(cols: usize) -> usize {
    let tiles = cols.div_ceil(TILE).max(1);
    12 * tiles + (12 * cols.max(1)).div_ceil(TILE)
}

/// Elements of the saved state: row lse (rows), column lse (cols), x norms (rows), y norms (cols).
pub fn clip_loss_saved_len(spec: &ClipLoss) -> usize {
    2 * (spec.rows + spec.cols)
}

/// f32 elements a region of `len` `E`s takes, rounded up to 256 bytes (aligned regions for cuBLASLt and 16-byte
/// loads).
fn region<E>(len: usize) -> usize {
    (len * size_of::<E>()).div_ceil(256) * (256 / size_of::<f32>())
}

/// The scratch regions (f32 elements). Forward: row partials, column partials, positive logits, row CE, running
/// column statistics, column CE. Backward: E (`T`), A_x, A_y (with dtext), ρ, ρ', their tile partials.
struct Layout {
    row_part: usize,
    col_part: usize,
    rows: usize,
    cols: usize,
    run: usize,
    e: usize,
    a_x: usize,
    a_y: usize,
    rho_part: usize,
    rhoc_part: usize,
}

impl Layout {
    fn new<T>(spec: &ClipLoss, plan: &ClipLossPlan, with_dtext: bool) -> Layout {
        let col_tiles = spec.cols.div_ceil(TILE);
        let (br, bc) = (plan.block_rows, plan.block_cols);
        Layout {
            row_part: region::<f32>(3 * plan.band_rows * col_tiles),
            col_part: region::<f32>(3 * (plan.band_rows / TILE) * spec.cols),
            rows: region::<f32>(spec.rows),
            cols: region::<f32>(spec.cols),
            run: region::<f32>(3 * spec.cols),
            e: region::<T>(br * bc),
            a_x: region::<f32>(br * spec.dim),
            a_y: if with_dtext { region::<f32>(spec.cols * spec.dim) } else { 0 },
            rho_part: region::<f32>((bc / TILE) * br),
            rhoc_part: region::<f32>((br / TILE) * bc),
        }
    }
    fn forward_len(&self) -> usize {
        self.row_part + self.col_part + 2 * self.rows + self.run + self.cols
    }
    fn backward_len(&self) -> usize {
        self.e + self.a_x + self.a_y + self.rows + self.cols + self.rho_part + self.rhoc_part
    }
}

/// f32 elements of scratch forward and backward need with this plan: O(rows + cols) + `cols·dim` (the fp32 A_y, only
/// with dtext) + the plan's constants (partials ≤ [`PARTIAL_BUDGET_BYTES`], E, A_x). Never rows·cols.
pub fn clip_loss_scratch_len<T: KernelFloat>(spec: &ClipLoss, plan: &ClipLossPlan, with_dtext: bool) -> usize {
    let l = Layout::new::<T>(spec, plan, with_dtext);
    l.forward_len().max(l.backward_len())
}

/// A scratch region viewed as its first `len` `E`s.
fn typed<E>(region: CudaMut<'_, f32>, len: usize) -> CudaMut<'_, E> {
    debug_assert!(len * size_of::<E>() <= region.num_bytes());
    // SAFETY: the region is consumed, so no other view aliases it while the result lives; it covers
    // len·size_of::<E>() bytes (Layout sized it so) and starts 256-byte aligned.
    unsafe { CudaMut::from_raw(region.ptr(), len) }
}

fn check_inputs<T>(
    op: &'static str,
    spec: &ClipLoss,
    image: &CudaRef<'_, T>,
    text: &CudaRef<'_, T>,
    log_scale: &CudaRef<'_, f32>,
) -> Result<()> {
    spec.validate(op)?;
    check_len(op, "image", image.len(), spec.rows * spec.dim)?;
    check_len(op, "text", text.len(), spec.cols * spec.dim)?;
    check_len(op, "log_scale", log_scale.len(), 1)
}

/// Grid of the tile kernels over `rows × cols` of one band / block.
fn tile_config(rows: usize, cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(TILE) as u32, rows.div_ceil(TILE) as u32, 1),
        block_dim: (TILE_THREADS, 1, 1),
        shared_mem_bytes: TILE_SMEM_BYTES,
    }
}

fn sum_config() -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SUM_THREADS, 1, 1), shared_mem_bytes: 0 }
}

impl CudaDevice {
    /// The tile kernels take 66 KB of dynamic shared memory: opt in above 48 KB (once per call of the loss).
    fn clip_tile_opt_in(&self, name: &str) -> Result<()> {
        let (kernel, func) = self.kernel(name)?;
        // cuFuncSetAttribute acts in the current context: bind it on this thread first, as a launch does.
        self.stream().context().bind_to_thread().map_err(cuda_error("cuCtxSetCurrent"))?;
        func.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            TILE_SMEM_BYTES as i32,
        )
        .map_err(cuda_error(kernel))
    }

    /// `norms[i] = ‖x_i‖` for `x [rows, dim]`.
    fn clip_row_norms<T: KernelFloat>(
        &self,
        x: &CudaRef<'_, T>,
        norms: &mut CudaMut<'_, f32>,
        dim: usize,
    ) -> Result<()> {
        let rows = norms.len();
        let (kernel, func) = self.kernel(&format!("clip_row_norms_{}", T::SUFFIX))?;
        check_len(kernel, "x", x.len(), rows * dim)?;
        let cfg = elementwise_config(rows * 32, 1, self.multiprocessors());
        let (rows_u, dim_u) = (rows as u64, dim as u64);
        // SAFETY: (const T* x, float* norms, u64 rows, u64 dim); x is rows·dim, norms rows (checked).
        unsafe { self.stream().launch_builder(func).arg(x).arg(norms).arg(&rows_u).arg(&dim_u).launch(cfg) }
            .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }

    /// Semantics of `Backend::clip_loss_forward`, cut by `plan`; `scratch` holds at least
    /// [`clip_loss_scratch_len`] f32 elements.
    #[allow(clippy::too_many_arguments)]
    pub fn clip_loss_forward<T: KernelFloat>(
        &self,
        spec: &ClipLoss,
        plan: &ClipLossPlan,
        image: &CudaRef<'_, T>,
        text: &CudaRef<'_, T>,
        log_scale: &CudaRef<'_, f32>,
        loss: &mut CudaMut<'_, f32>,
        saved: &mut CudaMut<'_, f32>,
        scratch: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        const OP: &str = "clip_loss_forward";
        check_inputs(OP, spec, image, text, log_scale)?;
        check_len(OP, "loss", loss.len(), 1)?;
        check_len(OP, "saved", saved.len(), clip_loss_saved_len(spec))?;
        let layout = Layout::new::<T>(spec, plan, false);
        check_min_len(OP, "scratch", scratch.len(), layout.forward_len())?;
        let (rows, cols, dim) = (spec.rows, spec.cols, spec.dim);

        let (row_part, rest) = scratch.reborrow().split_at(layout.row_part);
        let (col_part, rest) = rest.split_at(layout.col_part);
        let (pos, rest) = rest.split_at(layout.rows);
        let (row_ce, rest) = rest.split_at(layout.rows);
        let (run, rest) = rest.split_at(layout.run);
        let (col_ce, _) = rest.split_at(layout.cols);
        let mut row_part = typed::<f32>(row_part, layout.row_part);
        let mut col_part = typed::<f32>(col_part, layout.col_part);
        let (mut pos, mut row_ce) = (typed::<f32>(pos, rows), typed::<f32>(row_ce, rows));
        let (mut run, mut col_ce) = (typed::<f32>(run, 3 * cols), typed::<f32>(col_ce, cols));

        let (mut row_lse, rest) = saved.reborrow().split_at(rows);
        let (mut col_lse, rest) = rest.split_at(cols);
        let (mut x_norms, mut y_norms) = rest.split_at(rows);
        self.clip_row_norms(image, &mut x_norms, dim)?;
        self.clip_row_norms(text, &mut y_norms, dim)?;
        let (x_norms, y_norms) = (x_norms.as_ref(), y_norms.as_ref());

        let tile_name = format!("clip_fwd_tile_{}", T::SUFFIX);
        self.clip_tile_opt_in(&tile_name)?;
        let (tile_kernel, tile_func) = self.kernel(&tile_name)?;
        let (merge_kernel, merge_func) = self.kernel("clip_row_merge")?;
        let (col_kernel, col_func) = self.kernel("clip_col_merge")?;
        let col_tiles = cols.div_ceil(TILE) as u64;
        let eps = spec.label_smoothing as f32;
        let inv_cols = (1.0 / cols as f64) as f32;
        let inv_rows = (1.0 / rows as f64) as f32;
        let (cols_u, dim_u) = (cols as u64, dim as u64);
        let mut band0 = 0;
        while band0 < rows {
            let band = plan.band_rows.min(rows - band0);
            let x = image.slice(band0 * dim..(band0 + band) * dim);
            let xn = x_norms.slice(band0..band0 + band);
            let mut pos_band = pos.reborrow().slice(band0..band0 + band);
            let (band_u, pos_col0) = (band as u64, (band0 + spec.row_offset) as u64);
            // SAFETY: (const T* x, const T* y, const float* log_scale, const float* x_norm, const float* y_norm,
            // float* row_part, float* col_part, float* pos, u64 band_len, u64 cols, u64 dim, u64 pos_col0);
            // x is band·dim, y cols·dim, the norms band and cols, pos band; row_part holds 3·band·⌈cols/128⌉ and
            // col_part 3·⌈band/128⌉·cols (Layout, band ≤ plan.band_rows); the grid covers the band's tiles.
            unsafe {
                self.stream()
                    .launch_builder(tile_func)
                    .arg(&x)
                    .arg(text)
                    .arg(log_scale)
                    .arg(&xn)
                    .arg(&y_norms)
                    .arg(&mut row_part)
                    .arg(&mut col_part)
                    .arg(&mut pos_band)
                    .arg(&band_u)
                    .arg(&cols_u)
                    .arg(&dim_u)
                    .arg(&pos_col0)
                    .launch(tile_config(band, cols))
            }
            .map_err(cuda_error(tile_kernel))?;
            self.check_launch(tile_kernel)?;

            let pos_band = pos_band.as_ref();
            let mut lse_band = row_lse.reborrow().slice(band0..band0 + band);
            let mut ce_band = row_ce.reborrow().slice(band0..band0 + band);
            // SAFETY: (const float* row_part, const float* pos, float* row_lse, float* row_ce, u64 band_len,
            // u64 col_tiles, float eps, float inv_cols); row_part 3·band·col_tiles, the others band each.
            unsafe {
                self.stream()
                    .launch_builder(merge_func)
                    .arg(&row_part)
                    .arg(&pos_band)
                    .arg(&mut lse_band)
                    .arg(&mut ce_band)
                    .arg(&band_u)
                    .arg(&col_tiles)
                    .arg(&eps)
                    .arg(&inv_cols)
                    .launch(elementwise_config(band, 1, self.multiprocessors()))
            }
            .map_err(cuda_error(merge_kernel))?;
            self.check_launch(merge_kernel)?;

            let (row_tiles, first) = (band.div_ceil(TILE) as u64, i32::from(band0 == 0));
            // SAFETY: (const float* col_part, float* run, u64 cols, u64 row_tiles, int first); col_part
            // 3·row_tiles·cols, run 3·cols.
            unsafe {
                self.stream()
                    .launch_builder(col_func)
                    .arg(&col_part)
                    .arg(&mut run)
                    .arg(&cols_u)
                    .arg(&row_tiles)
                    .arg(&first)
                    .launch(elementwise_config(cols, 1, self.multiprocessors()))
            }
            .map_err(cuda_error(col_kernel))?;
            self.check_launch(col_kernel)?;
            band0 += band;
        }

        let col_term = i32::from(spec.has_col_term());
        let (kernel, func) = self.kernel("clip_col_finish")?;
        // SAFETY: (const float* run, const float* pos, float* col_lse, float* col_ce, u64 cols, float eps,
        // float inv_rows, int col_term); run 3·cols, col_lse and col_ce cols, pos rows (read at j < cols only with
        // the column term, where rows == cols).
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(&run)
                .arg(&pos)
                .arg(&mut col_lse)
                .arg(&mut col_ce)
                .arg(&cols_u)
                .arg(&eps)
                .arg(&inv_rows)
                .arg(&col_term)
                .launch(elementwise_config(cols, 1, self.multiprocessors()))
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)?;

        let (kernel, func) = self.kernel("clip_loss_sum")?;
        let row_scale = (spec.row_weight / rows as f64) as f32;
        let col_scale = (spec.col_weight / cols as f64) as f32;
        let (rows_u, cols_u) = (rows as u64, cols as u64);
        // SAFETY: (const float* row_ce, const float* col_ce, float* loss, u64 rows, u64 cols, float row_scale,
        // float col_scale, int col_term); row_ce rows, col_ce cols, loss 1; one block of 1024 threads.
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(&row_ce)
                .arg(&col_ce)
                .arg(loss)
                .arg(&rows_u)
                .arg(&cols_u)
                .arg(&row_scale)
                .arg(&col_scale)
                .arg(&col_term)
                .launch(sum_config())
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }

    /// Semantics of `Backend::clip_loss_backward` (dimage and dtext OVERWRITTEN, dtext skipped when None,
    /// dlog_scale ACCUMULATED), cut by `plan`; `scratch` holds at least [`clip_loss_scratch_len`] f32 elements for
    /// `with_dtext = dtext.is_some()`.
    #[allow(clippy::too_many_arguments)]
    pub fn clip_loss_backward<T: KernelFloat + GemmMode<f32>>(
        &self,
        blas: &Blas,
        spec: &ClipLoss,
        plan: &ClipLossPlan,
        image: &CudaRef<'_, T>,
        text: &CudaRef<'_, T>,
        log_scale: &CudaRef<'_, f32>,
        saved: &CudaRef<'_, f32>,
        dloss: f64,
        dimage: &mut CudaMut<'_, T>,
        dtext: Option<&mut CudaMut<'_, T>>,
        dlog_scale: &mut CudaMut<'_, f32>,
        scratch: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        const OP: &str = "clip_loss_backward";
        check_inputs(OP, spec, image, text, log_scale)?;
        check_len(OP, "saved", saved.len(), clip_loss_saved_len(spec))?;
        check_len(OP, "dimage", dimage.len(), spec.rows * spec.dim)?;
        if let Some(dtext) = &dtext {
            check_len(OP, "dtext", dtext.len(), spec.cols * spec.dim)?;
        }
        check_len(OP, "dlog_scale", dlog_scale.len(), 1)?;
        let layout = Layout::new::<T>(spec, plan, dtext.is_some());
        check_min_len(OP, "scratch", scratch.len(), layout.backward_len())?;
        if !std::sync::Arc::ptr_eq(blas.stream(), self.stream()) {
            return Err(Error::Invalid {
                op: OP,
                msg: "the cuBLASLt engine queues on another stream than the device; create it with Blas::new(dev)"
                    .into(),
            });
        }
        let (rows, cols, dim) = (spec.rows, spec.cols, spec.dim);
        let (br, bc) = (plan.block_rows, plan.block_cols);

        let (e, rest) = scratch.reborrow().split_at(layout.e);
        let (a_x, rest) = rest.split_at(layout.a_x);
        let (a_y, rest) = rest.split_at(layout.a_y);
        let (rho, rest) = rest.split_at(layout.rows);
        let (rhoc, rest) = rest.split_at(layout.cols);
        let (rho_part, rest) = rest.split_at(layout.rho_part);
        let (rhoc_part, _) = rest.split_at(layout.rhoc_part);
        let mut e = typed::<T>(e, br * bc);
        let mut a_x = typed::<f32>(a_x, br * dim);
        let mut a_y = typed::<f32>(a_y, if dtext.is_some() { cols * dim } else { 0 });
        let (mut rho, mut rhoc) = (typed::<f32>(rho, rows), typed::<f32>(rhoc, cols));
        let mut rho_part = typed::<f32>(rho_part, layout.rho_part);
        let mut rhoc_part = typed::<f32>(rhoc_part, layout.rhoc_part);

        let saved = *saved;
        let (row_lse, col_lse) = (saved.slice(0..rows), saved.slice(rows..rows + cols));
        let (x_norms, y_norms) = (saved.slice(rows + cols..2 * rows + cols), saved.slice(2 * rows + cols..));

        let tile_name = format!("clip_bwd_tile_{}", T::SUFFIX);
        self.clip_tile_opt_in(&tile_name)?;
        let (tile_kernel, tile_func) = self.kernel(&tile_name)?;
        let eps = spec.label_smoothing;
        let a = (dloss * spec.row_weight / rows as f64) as f32;
        let b = (dloss * spec.col_weight / cols as f64) as f32;
        let off_r = (eps / cols as f64) as f32;
        let off_c = (eps / rows as f64) as f32;
        let on = (1.0 - eps) as f32 + off_r;
        let (dim_u, offset_u) = (dim as u64, spec.row_offset as u64);

        let mut rb0 = 0;
        while rb0 < rows {
            let nr = br.min(rows - rb0);
            let x = image.slice(rb0 * dim..(rb0 + nr) * dim);
            let mut cb0 = 0;
            while cb0 < cols {
                let nc = bc.min(cols - cb0);
                let y = text.slice(cb0 * dim..(cb0 + nc) * dim);
                let mut e_blk = e.reborrow().slice(0..nr * nc);
                let (nr_u, nc_u, rb0_u, cb0_u) = (nr as u64, nc as u64, rb0 as u64, cb0 as u64);
                // SAFETY: (const T* x, const T* y, const float* log_scale, const float* x_norm, const float* y_norm,
                // const float* row_lse, const float* col_lse, T* e_out, float* rho_part, float* rhoc_part,
                // u64 blk_rows, u64 blk_cols, u64 dim, u64 rb0, u64 cb0, u64 row_offset, float a, float b, float on,
                // float off_r, float off_c); x is nr·dim and y nc·dim, the norms / lse at the block's
                // first row / column with nr / nc left, e_out nr·nc, rho_part ⌈nc/128⌉·nr ≤ layout, rhoc_part
                // ⌈nr/128⌉·nc ≤ layout; the grid covers the block's tiles.
                unsafe {
                    self.stream()
                        .launch_builder(tile_func)
                        .arg(&x)
                        .arg(&y)
                        .arg(log_scale)
                        .arg(&x_norms.slice(rb0..rb0 + nr))
                        .arg(&y_norms.slice(cb0..cb0 + nc))
                        .arg(&row_lse.slice(rb0..rb0 + nr))
                        .arg(&col_lse.slice(cb0..cb0 + nc))
                        .arg(&mut e_blk)
                        .arg(&mut rho_part)
                        .arg(&mut rhoc_part)
                        .arg(&nr_u)
                        .arg(&nc_u)
                        .arg(&dim_u)
                        .arg(&rb0_u)
                        .arg(&cb0_u)
                        .arg(&offset_u)
                        .arg(&a)
                        .arg(&b)
                        .arg(&on)
                        .arg(&off_r)
                        .arg(&off_c)
                        .launch(tile_config(nr, nc))
                }
                .map_err(cuda_error(tile_kernel))?;
                self.check_launch(tile_kernel)?;

                self.clip_fold(
                    &rho_part.as_ref(),
                    &mut rho.reborrow().slice(rb0..rb0 + nr),
                    nc.div_ceil(TILE),
                    cb0 > 0,
                )?;
                let e_blk = e_blk.as_ref();
                let mut a_x_blk = a_x.reborrow().slice(0..nr * dim);
                let gemm = Gemm::new(nr, dim, nc, false, false);
                let gemm = if cb0 > 0 { gemm.accumulate() } else { gemm };
                blas.gemm::<T, f32>(&gemm, &e_blk, &y, &mut a_x_blk)?;
                if dtext.is_some() {
                    self.clip_fold(
                        &rhoc_part.as_ref(),
                        &mut rhoc.reborrow().slice(cb0..cb0 + nc),
                        nr.div_ceil(TILE),
                        rb0 > 0,
                    )?;
                    let mut a_y_blk = a_y.reborrow().slice(cb0 * dim..(cb0 + nc) * dim);
                    let gemm = Gemm::new(nc, dim, nr, true, false);
                    let gemm = if rb0 > 0 { gemm.accumulate() } else { gemm };
                    blas.gemm::<T, f32>(&gemm, &e_blk, &x, &mut a_y_blk)?;
                }
                cb0 += nc;
            }
            let mut dx = dimage.reborrow().slice(rb0 * dim..(rb0 + nr) * dim);
            self.clip_grad_finish(
                &a_x.as_ref().slice(0..nr * dim),
                &x,
                &x_norms.slice(rb0..rb0 + nr),
                &rho.as_ref().slice(rb0..rb0 + nr),
                &mut dx,
                dim,
            )?;
            rb0 += nr;
        }
        if let Some(dtext) = dtext {
            self.clip_grad_finish(&a_y.as_ref(), text, &y_norms, &rhoc.as_ref(), dtext, dim)?;
        }

        let (kernel, func) = self.kernel("clip_dt_sum")?;
        let rows_u = rows as u64;
        // SAFETY: (const float* rho, float* dlog_scale, u64 rows); rho rows, dlog_scale 1; one block of 1024 threads.
        unsafe { self.stream().launch_builder(func).arg(&rho).arg(dlog_scale).arg(&rows_u).launch(sum_config()) }
            .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }

    /// `out (+)= Σ_t part[t·len ..][..len]` over `tiles` tiles in order (`accumulate`: added to out).
    fn clip_fold(
        &self,
        part: &CudaRef<'_, f32>,
        out: &mut CudaMut<'_, f32>,
        tiles: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (kernel, func) = self.kernel("clip_fold_sums")?;
        let len = out.len();
        check_min_len(kernel, "part", part.len(), tiles * len)?;
        let (len_u, tiles_u, acc) = (len as u64, tiles as u64, i32::from(accumulate));
        // SAFETY: (const float* part, float* out, u64 len, u64 tiles, int accumulate); part ≥ tiles·len (checked),
        // out len.
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(part)
                .arg(out)
                .arg(&len_u)
                .arg(&tiles_u)
                .arg(&acc)
                .launch(elementwise_config(len, 1, self.multiprocessors()))
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }

    /// `dx = acc − r²·ρ·x` per row (acc alone where the norm was clamped).
    fn clip_grad_finish<T: KernelFloat>(
        &self,
        acc: &CudaRef<'_, f32>,
        x: &CudaRef<'_, T>,
        norms: &CudaRef<'_, f32>,
        rho: &CudaRef<'_, f32>,
        dx: &mut CudaMut<'_, T>,
        dim: usize,
    ) -> Result<()> {
        let (kernel, func) = self.kernel(&format!("clip_grad_finish_{}", T::SUFFIX))?;
        let rows = norms.len();
        check_len(kernel, "acc", acc.len(), rows * dim)?;
        check_len(kernel, "x", x.len(), rows * dim)?;
        check_len(kernel, "rho", rho.len(), rows)?;
        check_len(kernel, "dx", dx.len(), rows * dim)?;
        let (rows_u, dim_u) = (rows as u64, dim as u64);
        // SAFETY: (const float* acc, const T* x, const float* norms, const float* rho, T* dx, u64 rows, u64 dim);
        // lengths checked above.
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(acc)
                .arg(x)
                .arg(norms)
                .arg(rho)
                .arg(dx)
                .arg(&rows_u)
                .arg(&dim_u)
                .launch(elementwise_config(rows * dim, 1, self.multiprocessors()))
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    #[test]
    fn plan_bands_fit_the_budget() {
        for n in [1usize, 7, 1000, 32768, 262144] {
            let spec = ClipLoss::symmetric(n, 512);
            let plan = ClipLossPlan::new(&spec);
            assert_eq!(plan.band_rows % TILE, 0);
            assert!(plan.band_rows >= TILE);
            assert!(
                plan.band_rows * partial_bytes_per_row(n) <= PARTIAL_BUDGET_BYTES.max(TILE * partial_bytes_per_row(n))
            );
        }
        assert!(ClipLossPlan::with_sizes(100, 128, 128).is_err());
        assert!(ClipLossPlan::with_sizes(128, 256, 384).is_ok());
    }

    #[test]
    fn scratch_is_linear_in_n() {
        // N = 256k, D = 512, bf16: far below N² (the naive form's logits alone are 4·N² = 256 GB).
        let n = 262_144;
        let spec = ClipLoss::symmetric(n, 512);
        let len = clip_loss_scratch_len::<bf16>(&spec, &ClipLossPlan::new(&spec), true);
        assert!(len * 4 < 700 << 20, "{} MB", (len * 4) >> 20);
        assert!((len as f64) < (n as f64) * (n as f64) / 100.0);
    }
}
