//! The fused nearest-neighbour search of `kernels/nn_queue.cu` (issue #7): tensor-core score tiles with a running
//! top-1 / top-k in the epilogue, key splits so a small batch still fills the GPU, and a deterministic merge of the
//! splits' partial lists. The B×N scores never reach global memory. [`CudaBackend::nn_search`] runs this; the
//! two-pass form (`nn_search.rs`) stays as the benchmark baseline.
//!
//! Semantics of [`Backend::nn_search`] (CPU reference `backend/cpu/nn_search.rs`): queries normalised here
//! (`F.normalize`: the kernel scales the scores by 1 / max(‖q‖, 1e-12)), keys taken as unit rows, the k best cosines
//! best first, ties to the LOWEST index, NaN cosines never selected, empty slots (−∞, `i32::MAX`). The same edge cases
//! as the CPU: `k > num_keys` is an error (whatever the batch), `k = 0` or `batch = 0` does nothing. One limit of its
//! own: `k ≤ 16` ([`MAX_K`]). The result does not depend on the plan (split count, kernel): every score is computed
//! the same way wherever it is computed, and the selection is a strict total order.
//!
//! [`Backend::nn_search`]: crate::backend::Backend::nn_search
//! [`CudaBackend::nn_search`]: crate::backend::cuda::CudaBackend

use std::mem::size_of;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::launch::{cuda_error, KernelFloat};
use super::view::{CudaMut, CudaRef};
use super::CudaDevice;
use crate::error::{check_len, check_min_len, Error, Result};

/// Every `extern "C"` kernel of kernels/nn_queue.cu.
pub const KERNELS: &[&str] = &[
    "nn_queue_inv_norm_f32",
    "nn_queue_inv_norm_bf16",
    "nn_queue_top1_f32",
    "nn_queue_top1_bf16",
    "nn_queue_topk_f32",
    "nn_queue_topk_bf16",
    "nn_queue_merge_f32",
    "nn_queue_argmax_bf16",
];

/// The largest k (NNQ_MAX_K in the .cu: the top-k lists' shared memory is sized for it).
pub const MAX_K: usize = 16;

/// Query rows × key columns of a top-1 block's tile (SimTile128x128), its threads and shared memory.
const TOP1_TILE: usize = 128;
const TOP1_THREADS: u32 = 256;
const TOP1_SMEM: u32 = 2 * (128 + 128) * 80;
/// The same for the top-k blocks (SimTile64x64 + the lists: 16 slots × 128 threads × (4 + 4) bytes).
const TOPK_TILE: usize = 64;
const TOPK_THREADS: u32 = 128;
const TOPK_SMEM: u32 = 2 * (64 + 64) * 80 + (MAX_K as u32) * TOPK_THREADS * 8;
/// Lists each top-k block writes per query row (NNQ_TOPK_LISTS_PER_ROW in the .cu).
const TOPK_LISTS_PER_ROW: usize = 2;
/// Batches up to this use the top-k kernel even for k = 1: its 64-row tiles waste less on a small batch.
const TOP1_MIN_BATCH: usize = 65;
/// Blocks per SM the split count aims for: about two waves at the blocks' occupancy (1 top-1 block of 256 threads
/// per SM at ~200 registers; 2–4 top-k blocks of 128).
const TOP1_BLOCKS_PER_SM: usize = 2;
const TOPK_BLOCKS_PER_SM: usize = 4;
/// Threads per block of the baseline's arg-max (NNQ_ARGMAX_THREADS in the .cu) and its blocks per SM.
const ARGMAX_THREADS: u32 = 256;
const ARGMAX_BLOCKS_PER_SM: usize = 8;
/// Threads per block and blocks per SM of the norm and merge kernels (a warp per query, grid-stride).
const ROW_THREADS: u32 = 256;
const ROW_BLOCKS_PER_SM: usize = 16;
/// The largest grid y dimension: the key splits go along it.
const MAX_SPLITS: usize = 65535;

/// Which search kernel a plan runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NnQueueKernel {
    /// `nn_queue_top1_*`: k = 1, 128×128 tiles, the running best in registers.
    Top1,
    /// `nn_queue_topk_*`: any k ≤ 16, 64×64 tiles, per-thread sorted lists in shared memory.
    TopK,
}

/// The launch plan of one search: the kernel, the grid (query tiles × key splits) and the partial lists the merge
/// reads (`[batch, lists, list_len]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NnQueuePlan {
    pub kernel: NnQueueKernel,
    pub query_tiles: usize,
    pub splits: usize,
    /// Keys per split, a multiple of the tile width; the last split takes the rest.
    pub keys_per_split: usize,
    /// Partial lists per query, and their length.
    pub lists: usize,
    pub list_len: usize,
}

impl NnQueuePlan {
    /// The plan `nn_queue_search` uses on a device with `multiprocessors` SMs: the top-1 kernel for k = 1 and a batch
    /// above 64, the top-k kernel otherwise, about two waves of blocks.
    pub fn new(batch: usize, num_keys: usize, k: usize, multiprocessors: u32) -> NnQueuePlan {
        let kernel = if k == 1 && batch >= TOP1_MIN_BATCH { NnQueueKernel::Top1 } else { NnQueueKernel::TopK };
        let per_sm = if kernel == NnQueueKernel::Top1 { TOP1_BLOCKS_PER_SM } else { TOPK_BLOCKS_PER_SM };
        NnQueuePlan::with(kernel, batch, num_keys, k, multiprocessors.max(1) as usize * per_sm)
    }

    /// A plan with a chosen kernel, aiming at `target_blocks` blocks: splits = ⌈target / query tiles⌉, at most one
    /// per key tile (and 65535). Any plan gives the same result; tests use this to vary the split count.
    pub fn with(kernel: NnQueueKernel, batch: usize, num_keys: usize, k: usize, target_blocks: usize) -> NnQueuePlan {
        let tile = if kernel == NnQueueKernel::Top1 { TOP1_TILE } else { TOPK_TILE };
        let query_tiles = batch.div_ceil(tile);
        let key_tiles = num_keys.div_ceil(tile).max(1);
        let want = target_blocks.div_ceil(query_tiles.max(1)).clamp(1, key_tiles).min(MAX_SPLITS);
        let keys_per_split = key_tiles.div_ceil(want) * tile;
        let splits = num_keys.div_ceil(keys_per_split).max(1);
        let (lists, list_len) = match kernel {
            NnQueueKernel::Top1 => (splits, 1),
            NnQueueKernel::TopK => (splits * TOPK_LISTS_PER_ROW, k),
        };
        NnQueuePlan { kernel, query_tiles, splits, keys_per_split, lists, list_len }
    }

    /// Entries of the partial lists for `batch` queries.
    pub fn partials(&self, batch: usize) -> usize {
        batch * self.lists * self.list_len
    }

    /// Elements of the f32 scratch this plan needs for `batch` queries: the inverse query norms `[batch]`, the
    /// partial cosines and indices `[batch, lists, list_len]` each, every region 256-byte aligned.
    pub fn scratch_len(&self, batch: usize) -> usize {
        region::<f32>(batch) + region::<f32>(self.partials(batch)) + region::<i32>(self.partials(batch))
    }
}

/// Elements of the f32 scratch [`CudaDevice::nn_queue_search`] needs on a device with `multiprocessors` SMs (0 when
/// there is nothing to do).
pub fn nn_queue_scratch_len(batch: usize, num_keys: usize, k: usize, multiprocessors: u32) -> usize {
    if batch == 0 || k == 0 || num_keys == 0 {
        return 0;
    }
    NnQueuePlan::new(batch, num_keys, k, multiprocessors).scratch_len(batch)
}

/// f32 elements a region of `len` `E`s takes in the scratch, rounded up to 256 bytes (each region 256-byte aligned).
fn region<E>(len: usize) -> usize {
    (len * size_of::<E>()).div_ceil(256) * (256 / size_of::<f32>())
}

/// A scratch region viewed as its first `len` `E`s.
fn typed<E>(region: CudaMut<'_, f32>, len: usize) -> CudaMut<'_, E> {
    debug_assert!(len * size_of::<E>() <= region.num_bytes());
    // SAFETY: the region is consumed here, so no other view reads or writes it while the result lives; it covers
    // len·size_of::<E>() bytes (sized by `region`) and starts at an f32 address, aligned enough for f32 and i32.
    unsafe { CudaMut::from_raw(region.ptr(), len) }
}

/// The grid of the warp-per-query kernels (norms, merge).
fn row_config(batch: usize, multiprocessors: u32) -> LaunchConfig {
    let warps = (ROW_THREADS / 32) as usize;
    let cap = multiprocessors.max(1) as usize * ROW_BLOCKS_PER_SM;
    let blocks = batch.div_ceil(warps).clamp(1, cap) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 }
}

impl CudaDevice {
    /// Elements of the f32 scratch [`CudaDevice::nn_queue_search`] needs on this device.
    pub fn nn_queue_scratch_len(&self, batch: usize, num_keys: usize, k: usize) -> usize {
        nn_queue_scratch_len(batch, num_keys, k, self.multiprocessors())
    }

    /// Semantics of `Backend::nn_search` (queries normalised here; keys already unit rows; ties to the lowest index),
    /// with the plan [`NnQueuePlan::new`] picks for this device. `scratch`: at least
    /// [`CudaDevice::nn_queue_scratch_len`] f32 elements.
    #[allow(clippy::too_many_arguments)]
    pub fn nn_queue_search<T: KernelFloat>(
        &self,
        queries: &CudaRef<'_, T>,
        keys: &CudaRef<'_, T>,
        index: &mut CudaMut<'_, i32>,
        sim: &mut CudaMut<'_, f32>,
        batch: usize,
        num_keys: usize,
        dim: usize,
        k: usize,
        scratch: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        let plan = NnQueuePlan::new(batch, num_keys, k, self.multiprocessors());
        self.nn_queue_search_planned(&plan, queries, keys, index, sim, batch, num_keys, dim, k, scratch)
    }

    /// [`CudaDevice::nn_queue_search`] with a given plan (made by [`NnQueuePlan::with`] for the same batch,
    /// num_keys and k); `scratch`: at least `plan.scratch_len(batch)` f32 elements.
    #[allow(clippy::too_many_arguments)]
    pub fn nn_queue_search_planned<T: KernelFloat>(
        &self,
        plan: &NnQueuePlan,
        queries: &CudaRef<'_, T>,
        keys: &CudaRef<'_, T>,
        index: &mut CudaMut<'_, i32>,
        sim: &mut CudaMut<'_, f32>,
        batch: usize,
        num_keys: usize,
        dim: usize,
        k: usize,
        scratch: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        const OP: &str = "nn_search";
        check_len(OP, "queries", queries.len(), batch * dim)?;
        check_len(OP, "keys", keys.len(), num_keys * dim)?;
        check_len(OP, "index", index.len(), batch * k)?;
        check_len(OP, "sim", sim.len(), batch * k)?;
        if k > num_keys {
            return Err(Error::Invalid { op: OP, msg: format!("k = {k} is larger than the {num_keys} keys") });
        }
        if num_keys > i32::MAX as usize {
            return Err(Error::Invalid { op: OP, msg: format!("{num_keys} keys do not fit i32 indices") });
        }
        if k > MAX_K {
            return Err(Error::Invalid {
                op: OP,
                msg: format!("k = {k} is more than the {MAX_K} neighbours the fused search keeps; ask for k ≤ {MAX_K}"),
            });
        }
        if k == 0 || batch == 0 {
            return Ok(());
        }
        if dim > i32::MAX as usize {
            return Err(Error::Invalid { op: OP, msg: format!("dim = {dim} does not fit the kernel's i32") });
        }
        let expected = NnQueuePlan::with(plan.kernel, batch, num_keys, k, 1);
        let (tile, lists_per_split) = match plan.kernel {
            NnQueueKernel::Top1 => (TOP1_TILE, 1),
            NnQueueKernel::TopK => (TOPK_TILE, TOPK_LISTS_PER_ROW),
        };
        let consistent = plan.query_tiles == expected.query_tiles
            && plan.list_len == expected.list_len
            && plan.keys_per_split > 0
            && plan.keys_per_split.is_multiple_of(tile)
            && plan.splits == num_keys.div_ceil(plan.keys_per_split)
            && plan.lists == plan.splits * lists_per_split
            && plan.splits <= MAX_SPLITS;
        if !consistent || (plan.kernel == NnQueueKernel::Top1 && k != 1) {
            return Err(Error::Invalid {
                op: OP,
                msg: format!(
                    "{plan:?} is not a plan for batch {batch}, {num_keys} keys, k = {k}; make it with NnQueuePlan"
                ),
            });
        }
        check_min_len(OP, "scratch", scratch.len(), plan.scratch_len(batch))?;

        let partials = plan.partials(batch);
        let (inv, rest) = scratch.reborrow().split_at(region::<f32>(batch));
        let (part_sim, rest) = rest.split_at(region::<f32>(partials));
        let (part_idx, _) = rest.split_at(region::<i32>(partials));
        let mut inv = typed::<f32>(inv, batch);
        let mut part_sim = typed::<f32>(part_sim, partials);
        let mut part_idx = typed::<i32>(part_idx, partials);
        let (batch_u, keys_u, dim_i, k_i) = (batch as u64, num_keys as u64, dim as i32, k as i32);
        let sms = self.multiprocessors();

        let kernel_name = format!("nn_queue_inv_norm_{}", T::SUFFIX);
        let (kernel, func) = self.kernel(&kernel_name)?;
        // SAFETY: (const T* q, float* inv_norm, u64 batch, int dim); q is batch·dim, inv_norm batch (the scratch
        // region); blockDim.x is a multiple of 32 (a warp per query).
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(queries)
                .arg(&mut inv)
                .arg(&batch_u)
                .arg(&dim_i)
                .launch(row_config(batch, sms))
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)?;

        let inv = inv.as_ref();
        let kps = plan.keys_per_split as u64;
        let grid_dim = (plan.query_tiles as u32, plan.splits as u32, 1);
        match plan.kernel {
            NnQueueKernel::Top1 => {
                let kernel_name = format!("nn_queue_top1_{}", T::SUFFIX);
                let (kernel, func) = self.kernel(&kernel_name)?;
                let cfg = LaunchConfig { grid_dim, block_dim: (TOP1_THREADS, 1, 1), shared_mem_bytes: TOP1_SMEM };
                // SAFETY: (const T* q, const T* keys, const float* inv_norm, float* part_sim, int* part_idx,
                // u64 batch, u64 num_keys, int dim, u64 keys_per_split); q batch·dim, keys num_keys·dim, inv_norm
                // batch, the partials batch·splits (list_len 1); gridDim.y·keys_per_split ≥ num_keys (checked plan),
                // 256 threads and SimTile128x128's 40 KB of dynamic shared memory (under the 48 KB default).
                unsafe {
                    self.stream()
                        .launch_builder(func)
                        .arg(queries)
                        .arg(keys)
                        .arg(&inv)
                        .arg(&mut part_sim)
                        .arg(&mut part_idx)
                        .arg(&batch_u)
                        .arg(&keys_u)
                        .arg(&dim_i)
                        .arg(&kps)
                        .launch(cfg)
                }
                .map_err(cuda_error(kernel))?;
                self.check_launch(kernel)?;
            }
            NnQueueKernel::TopK => {
                let kernel_name = format!("nn_queue_topk_{}", T::SUFFIX);
                let (kernel, func) = self.kernel(&kernel_name)?;
                let cfg = LaunchConfig { grid_dim, block_dim: (TOPK_THREADS, 1, 1), shared_mem_bytes: TOPK_SMEM };
                // SAFETY: (const T* q, const T* keys, const float* inv_norm, float* part_sim, int* part_idx,
                // u64 batch, u64 num_keys, int dim, u64 keys_per_split, int k); the partials are
                // batch·(2·splits)·k; 1 ≤ k ≤ 16 (the lists' shared memory); 128 threads and 36 KB of dynamic shared
                // memory (SimTile64x64's stages + the lists, under the 48 KB default).
                unsafe {
                    self.stream()
                        .launch_builder(func)
                        .arg(queries)
                        .arg(keys)
                        .arg(&inv)
                        .arg(&mut part_sim)
                        .arg(&mut part_idx)
                        .arg(&batch_u)
                        .arg(&keys_u)
                        .arg(&dim_i)
                        .arg(&kps)
                        .arg(&k_i)
                        .launch(cfg)
                }
                .map_err(cuda_error(kernel))?;
                self.check_launch(kernel)?;
            }
        }

        let (part_sim, part_idx) = (part_sim.as_ref(), part_idx.as_ref());
        let (lists_u, len_i) = (plan.lists as u64, plan.list_len as i32);
        let (kernel, func) = self.kernel("nn_queue_merge_f32")?;
        // SAFETY: (const float* part_sim, const int* part_idx, int* index, float* sim, u64 batch, u64 lists, int len,
        // int k); the partials are batch·lists·len, index and sim batch·k; blockDim.x a multiple of 32.
        unsafe {
            self.stream()
                .launch_builder(func)
                .arg(&part_sim)
                .arg(&part_idx)
                .arg(index)
                .arg(sim)
                .arg(&batch_u)
                .arg(&lists_u)
                .arg(&len_i)
                .arg(&k_i)
                .launch(row_config(batch, sms))
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }
}

impl CudaDevice {
    /// The arg-max pass of the two-pass baseline with bf16 scores (`cliprt bench nn-queue`): per row of
    /// `scores [batch, num_keys]`, the top-1 `(index, sim)` in the search's order (ties to the lowest index, NaN never
    /// selected, (−∞, i32::MAX) for a row of NaNs).
    pub fn nn_queue_argmax_bf16(
        &self,
        scores: &CudaRef<'_, half::bf16>,
        index: &mut CudaMut<'_, i32>,
        sim: &mut CudaMut<'_, f32>,
        batch: usize,
        num_keys: usize,
    ) -> Result<()> {
        const OP: &str = "nn_queue_argmax";
        check_len(OP, "scores", scores.len(), batch * num_keys)?;
        check_len(OP, "index", index.len(), batch)?;
        check_len(OP, "sim", sim.len(), batch)?;
        if num_keys > i32::MAX as usize {
            return Err(Error::Invalid { op: OP, msg: format!("{num_keys} keys do not fit i32 indices") });
        }
        if batch == 0 || num_keys == 0 {
            return Ok(());
        }
        let (kernel, func) = self.kernel("nn_queue_argmax_bf16")?;
        let cap = self.multiprocessors().max(1) as usize * ARGMAX_BLOCKS_PER_SM;
        let cfg = LaunchConfig {
            grid_dim: (batch.min(cap) as u32, 1, 1),
            block_dim: (ARGMAX_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (batch_u, keys_u) = (batch as u64, num_keys as u64);
        // SAFETY: (const bf16* scores, int* index, float* sim, u64 batch, u64 num_keys); scores is batch·num_keys,
        // index and sim batch; the block has the NNQ_ARGMAX_THREADS threads its shared arrays are sized for.
        unsafe {
            self.stream().launch_builder(func).arg(scores).arg(index).arg(sim).arg(&batch_u).arg(&keys_u).launch(cfg)
        }
        .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nn_queue_plans_cover_every_key_with_whole_tiles() {
        // B = 4096 on 132 SMs: 32 query tiles, 9 splits of 57 key tiles (the last one shorter).
        let p = NnQueuePlan::new(4096, 65536, 1, 132);
        assert_eq!((p.kernel, p.query_tiles, p.splits, p.keys_per_split), (NnQueueKernel::Top1, 32, 9, 57 * 128));
        // B = 1: the top-k kernel, one query tile, ~4 blocks per SM: 528 wanted → 2 key tiles a split → 512 splits.
        let p = NnQueuePlan::new(1, 65536, 1, 132);
        assert_eq!((p.kernel, p.query_tiles, p.splits, p.lists), (NnQueueKernel::TopK, 1, 512, 1024));
        for (batch, keys, k) in [(1, 1, 1), (33, 1000, 16), (4096, 65536, 5), (70, 3, 1), (100_000, 129, 1)] {
            for sms in [1, 7, 132] {
                let p = NnQueuePlan::new(batch, keys, k, sms);
                assert!(p.splits * p.keys_per_split >= keys && (p.splits - 1) * p.keys_per_split < keys, "{p:?}");
                assert!(p.splits <= MAX_SPLITS);
            }
        }
        assert_eq!(nn_queue_scratch_len(0, 10, 1, 132), 0);
        // 33 queries, k = 16 on one SM: 4 splits of 256 keys → 8 lists of 16: 33 norms (64) + 2 × 4224.
        let p = NnQueuePlan::new(33, 1000, 16, 1);
        assert_eq!((p.splits, p.lists), (4, 8));
        assert_eq!(p.scratch_len(33), 64 + 2 * 4224);
    }
}
