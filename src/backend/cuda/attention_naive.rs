//! Launchers for `kernels/attention_naive.cu`: multi-head attention in its materialised form (probabilities saved,
//! fp32), forward and backward, f32 and bf16 activations. Semantics are those of `Backend::attention_forward` and
//! `Backend::attention_backward` (see [`Attention`] for the layout), with the CPU reference in
//! `backend/cpu/attention.rs`: the forward saves `P [batch, heads, seq_q, seq_k]` (zeros at masked keys), a query
//! with every key masked outputs zeros and gets zero gradients, and the backward overwrites dQ, dK and dV in `dqkv`
//! at the offsets and strides of Q, K and V, leaving the elements between untouched.
//!
//! Deterministic: no atomics, every sum in an order fixed by the shape. The backward goes through a caller-provided
//! fp32 scratch of [`attention_naive_scratch_len`] elements (`dS`), so a training step allocates nothing.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::launch::{cuda_error, KernelFloat};
use super::view::{CudaMut, CudaRef};
use super::CudaDevice;
use crate::backend::Attention;
use crate::error::{check_len, check_min_len, Result};

/// The kernels of `kernels/attention_naive.cu`.
pub const KERNELS: &[&str] = &[
    "attention_naive_forward_f32",
    "attention_naive_forward_bf16",
    "attention_naive_backward_query_f32",
    "attention_naive_backward_query_bf16",
    "attention_naive_backward_key_f32",
    "attention_naive_backward_key_bf16",
];

/// Threads per block (4 warps; ATT_THREADS in the .cu file).
pub const ATTENTION_THREADS: u32 = 128;
/// Query (or key) rows one block handles per work item (ATT_ROWS in the .cu file: 4 warps × 4 rows).
pub const ATTENTION_ROWS_PER_BLOCK: usize = 16;
/// Blocks per SM the grid is capped at (the kernels stride over work items).
const BLOCKS_PER_SM: u32 = 32;

/// Elements of the saved probabilities `[batch, heads, seq_q, seq_k]` (fp32), as on the CPU.
pub fn attention_naive_saved_len(spec: &Attention) -> usize {
    spec.batch * spec.heads * spec.seq_q * spec.seq_k
}

/// Elements of the fp32 scratch the backward needs: `dS [batch, heads, seq_q, seq_k]` (the same size as the saved
/// probabilities; 30.7 MB at ViT-B/32 shapes with batch 256).
pub fn attention_naive_scratch_len(spec: &Attention) -> usize {
    attention_naive_saved_len(spec)
}

/// The shape as the kernels take it (layout shared with `struct AttentionArgs` in kernels/attention_naive.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct AttentionArgs {
    batch: u64,
    heads: u64,
    seq_q: u64,
    seq_k: u64,
    head_dim: u64,
    q_offset: u64,
    k_offset: u64,
    v_offset: u64,
    q_row_stride: u64,
    kv_row_stride: u64,
    scale: f32,
    causal: i32,
}

// SAFETY: `#[repr(C)]`, ten u64 then an f32 and an i32 (88 bytes, no padding): the layout of the kernel's struct.
unsafe impl DeviceRepr for AttentionArgs {}

impl AttentionArgs {
    fn new(spec: &Attention) -> AttentionArgs {
        AttentionArgs {
            batch: spec.batch as u64,
            heads: spec.heads as u64,
            seq_q: spec.seq_q as u64,
            seq_k: spec.seq_k as u64,
            head_dim: spec.head_dim as u64,
            q_offset: spec.q_offset as u64,
            k_offset: spec.k_offset as u64,
            v_offset: spec.v_offset as u64,
            q_row_stride: spec.q_row_stride as u64,
            kv_row_stride: spec.kv_row_stride as u64,
            scale: spec.scale as f32,
            causal: i32::from(spec.causal),
        }
    }
}

/// Grid over `items` work items (blocks of 16 rows of one (batch, head)), capped at 32 blocks per SM: the kernels
/// stride over items, so any count works and the summation order does not depend on the grid.
fn item_config(items: usize, multiprocessors: u32) -> LaunchConfig {
    let cap = (multiprocessors.max(1) * BLOCKS_PER_SM) as usize;
    let blocks = items.clamp(1, cap) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ATTENTION_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Work items of a kernel whose blocks take 16 of `rows` rows of each (batch, head).
fn items(spec: &Attention, rows: usize) -> usize {
    spec.batch * spec.heads * rows.div_ceil(ATTENTION_ROWS_PER_BLOCK)
}

impl CudaDevice {
    /// Semantics of `Backend::attention_forward`; `probs` receives the probabilities (zeros at masked keys).
    ///
    /// `out = softmax(scale·QKᵀ + masks)·V` per (batch, head), `out [batch, seq_q, heads·head_dim]`; `key_padding`
    /// `[batch, seq_k]`, non-zero = masked. With no key at all (`seq_k = 0`) every output row is zero; with no
    /// output (`out_len() = 0`) nothing is written, `probs` included, as on the CPU.
    pub fn attention_naive_forward<T: KernelFloat>(
        &self,
        spec: &Attention,
        qkv: &CudaRef<'_, T>,
        key_padding: Option<&CudaRef<'_, u8>>,
        out: &mut CudaMut<'_, T>,
        probs: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        let (kernel, func) = self.kernel(&format!("attention_naive_forward_{}", T::SUFFIX))?;
        spec.check_layout(kernel, "qkv", qkv.len(), key_padding.map(|m| m.len()))?;
        check_len(kernel, "out", out.len(), spec.out_len())?;
        check_len(kernel, "probs", probs.len(), attention_naive_saved_len(spec))?;
        if spec.out_len() == 0 {
            return Ok(());
        }
        let cfg = item_config(items(spec, spec.seq_q), self.multiprocessors());
        let args = AttentionArgs::new(spec);
        // A null mask pointer means "no padding mask".
        let mask = key_padding.map_or(0, |m| m.ptr());
        // SAFETY: (const T* qkv, const unsigned char* key_padding, T* out, float* probs, AttentionArgs args);
        // qkv holds every Q/K/V row of the layout, key_padding is null or batch·seq_k bytes, out and probs have their
        // exact lengths (all checked above); the kernel reads and writes nothing else.
        unsafe { self.stream().launch_builder(func).arg(qkv).arg(&mask).arg(out).arg(probs).arg(&args).launch(cfg) }
            .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }

    /// Semantics of `Backend::attention_backward` (dQ, dK, dV written into `dqkv`, the elements between untouched).
    ///
    /// `probs` are the probabilities the forward saved; `scratch` holds at least [`attention_naive_scratch_len`]
    /// fp32 elements (its contents on entry do not matter; on return it holds dS). `key_padding` is only checked:
    /// masked keys have zero probability, so their gradients vanish without it.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_naive_backward<T: KernelFloat>(
        &self,
        spec: &Attention,
        qkv: &CudaRef<'_, T>,
        key_padding: Option<&CudaRef<'_, u8>>,
        probs: &CudaRef<'_, f32>,
        dout: &CudaRef<'_, T>,
        dqkv: &mut CudaMut<'_, T>,
        scratch: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        let (query_name, query) = self.kernel(&format!("attention_naive_backward_query_{}", T::SUFFIX))?;
        let (key_name, key) = self.kernel(&format!("attention_naive_backward_key_{}", T::SUFFIX))?;
        let op = query_name;
        spec.check_layout(op, "qkv", qkv.len(), key_padding.map(|m| m.len()))?;
        check_len(op, "probs", probs.len(), attention_naive_saved_len(spec))?;
        check_len(op, "dout", dout.len(), spec.out_len())?;
        spec.check_layout(op, "dqkv", dqkv.len(), None)?;
        check_min_len(op, "scratch", scratch.len(), attention_naive_scratch_len(spec))?;
        if spec.batch == 0 || spec.width() == 0 {
            return Ok(());
        }
        let args = AttentionArgs::new(spec);
        // Query rows: dS into the scratch, dQ (zeros when seq_k = 0). Skipped when there are no queries.
        let query_items = items(spec, spec.seq_q);
        if query_items > 0 {
            let cfg = item_config(query_items, self.multiprocessors());
            // SAFETY: (const T* qkv, const float* probs, const T* dout, T* dqkv, float* dscores, AttentionArgs args);
            // qkv and dqkv hold every Q/K/V row of the layout, probs and dout their exact lengths, dscores at least
            // batch·heads·seq_q·seq_k floats (checked above). Only the Q rows of dqkv are written.
            unsafe {
                self.stream()
                    .launch_builder(query)
                    .arg(qkv)
                    .arg(probs)
                    .arg(dout)
                    .arg(&mut *dqkv)
                    .arg(&mut *scratch)
                    .arg(&args)
                    .launch(cfg)
            }
            .map_err(cuda_error(query_name))?;
            self.check_launch(query_name)?;
        }
        // Key rows: dK and dV from the columns of dS and P (zeros when seq_q = 0). Same stream, so after the above.
        let key_items = items(spec, spec.seq_k);
        if key_items > 0 {
            let cfg = item_config(key_items, self.multiprocessors());
            // SAFETY: (const T* qkv, const float* probs, const T* dout, const float* dscores, T* dqkv,
            // AttentionArgs args); lengths as above. Only the K and V rows of dqkv are written.
            unsafe {
                self.stream()
                    .launch_builder(key)
                    .arg(qkv)
                    .arg(probs)
                    .arg(dout)
                    .arg(&mut *scratch)
                    .arg(&mut *dqkv)
                    .arg(&args)
                    .launch(cfg)
            }
            .map_err(cuda_error(key_name))?;
            self.check_launch(key_name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn args_match_the_kernel_struct_layout() {
        // ten u64, an f32, an i32: 88 bytes, no padding (the .cu struct has the same members in the same order).
        assert_eq!(std::mem::size_of::<AttentionArgs>(), 88);
        assert_eq!(std::mem::align_of::<AttentionArgs>(), 8);
    }

    #[test]
    fn grid_covers_items_and_is_capped() {
        let spec = Attention::packed_self(256, 50, 12, 64, false);
        assert_eq!(items(&spec, 50), 256 * 12 * 4);
        let cfg = item_config(items(&spec, 50), 132);
        assert_eq!((cfg.grid_dim.0, cfg.block_dim.0), (132 * BLOCKS_PER_SM, ATTENTION_THREADS));
        assert_eq!(item_config(3, 132).grid_dim.0, 3);
        assert_eq!(items(&spec, 0), 0);
    }

    #[test]
    fn layout_checks_name_the_problem() {
        let mut spec = Attention::packed_self(2, 5, 2, 4, false);
        let len = spec.qkv_len();
        assert!(spec.check_layout("op", "qkv", len, Some(10)).is_ok());
        assert!(matches!(spec.check_layout("op", "qkv", len - 1, None), Err(Error::Shape { arg: "qkv", .. })));
        assert!(matches!(spec.check_layout("op", "qkv", len, Some(9)), Err(Error::Shape { arg: "key_padding", .. })));
        spec.q_row_stride = 7;
        assert!(matches!(spec.check_layout("op", "qkv", 1 << 20, None), Err(Error::Invalid { .. })));
    }
}
