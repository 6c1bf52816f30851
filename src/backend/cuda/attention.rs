//! Launchers for `kernels/attention.cu`: fused (flash-style) multi-head attention on tensor cores, bf16 and f16
//! storage, head dims 32, 64 and 128. Semantics are those of `Backend::attention_forward` and
//! `Backend::attention_backward` (see [`Attention`] for the layout; CPU reference in `backend/cpu/attention.rs`),
//! except for the saved state: the forward saves only the row log-sum-exp `lse [batch, heads, seq_q]` (fp32; −∞ for
//! a query that sees no key) and the backward recomputes the probabilities from it.
//!
//! Deterministic: no atomics; each output row is summed by one warp in an order fixed by the shape. The backward
//! needs a caller-provided fp32 scratch of [`attention_scratch_len`] elements (`D = rowsum(dO∘O)`), so a training
//! step allocates nothing.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use half::{bf16, f16};

use super::launch::cuda_error;
use super::view::{CudaMut, CudaRef};
use super::CudaDevice;
use crate::backend::Attention;
use crate::error::{check_len, check_min_len, Error, Result};

/// Every `extern "C"` kernel of kernels/attention.cu.
pub const KERNELS: &[&str] = &[
    "attention_fwd_d32_bf16",
    "attention_fwd_d64_bf16",
    "attention_fwd_d128_bf16",
    "attention_bwd_dq_d32_bf16",
    "attention_bwd_dq_d64_bf16",
    "attention_bwd_dq_d128_bf16",
    "attention_bwd_dkv_d32_bf16",
    "attention_bwd_dkv_d64_bf16",
    "attention_bwd_dkv_d128_bf16",
    "attention_fwd_d32_f16",
    "attention_fwd_d64_f16",
    "attention_fwd_d128_f16",
    "attention_bwd_dq_d32_f16",
    "attention_bwd_dq_d64_f16",
    "attention_bwd_dq_d128_f16",
    "attention_bwd_dkv_d32_f16",
    "attention_bwd_dkv_d64_f16",
    "attention_bwd_dkv_d128_f16",
];

/// The head dims the fused kernels are compiled for.
pub const ATTENTION_HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// Whether the fused kernels take this shape (the head dim is a template parameter of the kernels).
pub fn attention_supported(spec: &Attention) -> bool {
    ATTENTION_HEAD_DIMS.contains(&spec.head_dim)
}

/// A 16-bit storage type of the fused kernels; `SUFFIX` ends the kernel's name.
pub trait FlashFloat: DeviceRepr + ValidAsZeroBits + Copy + 'static {
    const SUFFIX: &'static str;
}
impl FlashFloat for bf16 {
    const SUFFIX: &'static str = "bf16";
}
impl FlashFloat for f16 {
    const SUFFIX: &'static str = "f16";
}

/// Queries per block of the forward and dQ kernels (FWD_BQ, DQ_BQ in the .cu file: 4 warps × 16 rows).
pub const ATTENTION_QUERY_TILE: usize = 64;
/// Threads per block of the forward and dQ kernels.
const QUERY_THREADS: u32 = 128;

/// Warps per block of the dK/dV kernel (KV_WARPS): each warp owns 16 keys.
fn key_warps(head_dim: usize) -> usize {
    if head_dim == 128 {
        2
    } else {
        4
    }
}

/// Elements of the saved state: the row log-sum-exps `[batch, heads, seq_q]` (fp32).
pub fn attention_saved_len(spec: &Attention) -> usize {
    spec.batch * spec.heads * spec.seq_q
}

/// Elements of the fp32 scratch of the backward: `D [batch, heads, seq_q]`.
pub fn attention_scratch_len(spec: &Attention) -> usize {
    attention_saved_len(spec)
}

/// The shape as the kernels take it (layout shared with `struct FlashArgs` in kernels/attention.cu; the head dim is
/// the kernel's template parameter).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct FlashArgs {
    batch: u64,
    heads: u64,
    seq_q: u64,
    seq_k: u64,
    q_offset: u64,
    k_offset: u64,
    v_offset: u64,
    q_row_stride: u64,
    kv_row_stride: u64,
    scale: f32,
    causal: i32,
}

// SAFETY: `#[repr(C)]`, nine u64 then an f32 and an i32 (80 bytes, no padding): the layout of the kernel's struct.
unsafe impl DeviceRepr for FlashArgs {}

impl FlashArgs {
    fn new(spec: &Attention) -> FlashArgs {
        FlashArgs {
            batch: spec.batch as u64,
            heads: spec.heads as u64,
            seq_q: spec.seq_q as u64,
            seq_k: spec.seq_k as u64,
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

/// The fused kernels' own check (a supported head dim), then [`Attention::check_layout`], every backend's.
fn check_layout(
    op: &'static str,
    arg: &'static str,
    spec: &Attention,
    qkv_len: usize,
    key_padding: Option<usize>,
) -> Result<()> {
    if !attention_supported(spec) {
        let msg = format!(
            "head_dim {} is not one of the fused kernel's head dims {ATTENTION_HEAD_DIMS:?}: use the naive kernel \
             (attention_naive_*) for other head dims",
            spec.head_dim
        );
        return Err(Error::Invalid { op, msg });
    }
    spec.check_layout(op, arg, qkv_len, key_padding)
}

/// A grid of `blocks` blocks of `threads` threads (one block per (batch, head, tile)), or an error past the
/// driver's 2³¹ − 1 blocks.
fn grid(op: &'static str, blocks: usize, threads: u32) -> Result<LaunchConfig> {
    let blocks = u32::try_from(blocks).ok().filter(|&b| b < (1 << 31)).ok_or_else(|| Error::Invalid {
        op,
        msg: format!("{blocks} blocks (batch·heads·tiles) exceed the grid limit 2^31 − 1: split the batch"),
    })?;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

/// The forward and dQ kernels' grid: ⌈seq_q / 64⌉ blocks per (batch, head).
fn query_grid(op: &'static str, spec: &Attention) -> Result<LaunchConfig> {
    grid(op, spec.batch * spec.heads * spec.seq_q.div_ceil(ATTENTION_QUERY_TILE), QUERY_THREADS)
}

/// The dK/dV kernel's grid: ⌈seq_k / (16·warps)⌉ blocks per (batch, head).
fn key_grid(op: &'static str, spec: &Attention) -> Result<LaunchConfig> {
    let warps = key_warps(spec.head_dim);
    grid(op, spec.batch * spec.heads * spec.seq_k.div_ceil(16 * warps), 32 * warps as u32)
}

impl CudaDevice {
    /// Semantics of `Backend::attention_forward` on the fused kernel: `out = softmax(scale·QKᵀ + masks)·V` per
    /// (batch, head), `out [batch, seq_q, heads·head_dim]`; `key_padding [batch, seq_k]`, non-zero = masked; `lse`
    /// receives the row log-sum-exps `[batch, heads, seq_q]` (−∞ for a query that sees no key; its output row is
    /// zero). Head dims 32, 64, 128 only ([`attention_supported`]).
    pub fn attention_forward<T: FlashFloat>(
        &self,
        spec: &Attention,
        qkv: &CudaRef<'_, T>,
        key_padding: Option<&CudaRef<'_, u8>>,
        out: &mut CudaMut<'_, T>,
        lse: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        let name = format!("attention_fwd_d{}_{}", spec.head_dim, T::SUFFIX);
        let op = "attention_forward (fused)";
        check_layout(op, "qkv", spec, qkv.len(), key_padding.map(|m| m.len()))?;
        let (kernel, func) = self.kernel(&name)?;
        check_len(kernel, "out", out.len(), spec.out_len())?;
        check_len(kernel, "lse", lse.len(), attention_saved_len(spec))?;
        if spec.out_len() == 0 {
            return Ok(());
        }
        let cfg = query_grid(kernel, spec)?;
        let args = FlashArgs::new(spec);
        // A null mask pointer means "no padding mask".
        let mask = key_padding.map_or(0, |m| m.ptr());
        // SAFETY: (const T* qkv, const unsigned char* key_padding, T* out, float* lse, FlashArgs args); qkv holds
        // every Q/K/V row of the layout, key_padding is null or batch·seq_k bytes, out and lse have their exact
        // lengths (all checked above); the kernel reads and writes nothing else.
        unsafe { self.stream().launch_builder(func).arg(qkv).arg(&mask).arg(out).arg(lse).arg(&args).launch(cfg) }
            .map_err(cuda_error(kernel))?;
        self.check_launch(kernel)
    }

    /// Semantics of `Backend::attention_backward` on the fused kernels: dQ, dK, dV written into `dqkv` at the
    /// offsets and strides of Q, K, V (the elements between untouched), from the `out` and `lse` of
    /// [`CudaDevice::attention_forward`]. `scratch` holds at least [`attention_scratch_len`] fp32 elements (its
    /// contents on entry do not matter; on return it holds D = rowsum(dO∘O)).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward<T: FlashFloat>(
        &self,
        spec: &Attention,
        qkv: &CudaRef<'_, T>,
        key_padding: Option<&CudaRef<'_, u8>>,
        out: &CudaRef<'_, T>,
        lse: &CudaRef<'_, f32>,
        dout: &CudaRef<'_, T>,
        dqkv: &mut CudaMut<'_, T>,
        scratch: &mut CudaMut<'_, f32>,
    ) -> Result<()> {
        let op = "attention_backward (fused)";
        check_layout(op, "qkv", spec, qkv.len(), key_padding.map(|m| m.len()))?;
        let (dq_name, dq_func) = self.kernel(&format!("attention_bwd_dq_d{}_{}", spec.head_dim, T::SUFFIX))?;
        let (dkv_name, dkv_func) = self.kernel(&format!("attention_bwd_dkv_d{}_{}", spec.head_dim, T::SUFFIX))?;
        check_len(op, "out", out.len(), spec.out_len())?;
        check_len(op, "lse", lse.len(), attention_saved_len(spec))?;
        check_len(op, "dout", dout.len(), spec.out_len())?;
        check_layout(op, "dqkv", spec, dqkv.len(), None)?;
        check_min_len(op, "scratch", scratch.len(), attention_scratch_len(spec))?;
        if spec.batch == 0 || spec.heads == 0 {
            return Ok(());
        }
        let args = FlashArgs::new(spec);
        let mask = key_padding.map_or(0, |m| m.ptr());
        // dQ and D (zeros for dQ when seq_k = 0). Skipped when there are no queries.
        if spec.seq_q > 0 {
            let cfg = query_grid(dq_name, spec)?;
            // SAFETY: (const T* qkv, const unsigned char* key_padding, const T* out, const float* lse,
            // const T* dout, float* dsum, T* dqkv, FlashArgs args); qkv and dqkv hold every Q/K/V row of the
            // layout, key_padding is null or batch·seq_k bytes, out/dout/lse have their exact lengths, dsum at least
            // batch·heads·seq_q floats (checked above). Only the Q rows of dqkv and the first batch·heads·seq_q
            // floats of dsum are written.
            unsafe {
                self.stream()
                    .launch_builder(dq_func)
                    .arg(qkv)
                    .arg(&mask)
                    .arg(out)
                    .arg(lse)
                    .arg(dout)
                    .arg(&mut *scratch)
                    .arg(&mut *dqkv)
                    .arg(&args)
                    .launch(cfg)
            }
            .map_err(cuda_error(dq_name))?;
            self.check_launch(dq_name)?;
        }
        // dK and dV from D (same stream, so after the above); zeros when seq_q = 0.
        if spec.seq_k > 0 {
            let cfg = key_grid(dkv_name, spec)?;
            // SAFETY: (const T* qkv, const unsigned char* key_padding, const float* lse, const float* dsum,
            // const T* dout, T* dqkv, FlashArgs args); lengths as above. Only the K and V rows of dqkv are written.
            unsafe {
                self.stream()
                    .launch_builder(dkv_func)
                    .arg(qkv)
                    .arg(&mask)
                    .arg(lse)
                    .arg(&*scratch)
                    .arg(dout)
                    .arg(&mut *dqkv)
                    .arg(&args)
                    .launch(cfg)
            }
            .map_err(cuda_error(dkv_name))?;
            self.check_launch(dkv_name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_args_match_the_kernel_struct_layout() {
        // nine u64, an f32, an i32: 80 bytes, no padding (the .cu struct has the same members in the same order).
        assert_eq!(std::mem::size_of::<FlashArgs>(), 80);
        assert_eq!(std::mem::align_of::<FlashArgs>(), 8);
    }

    #[test]
    fn attention_kernel_names_cover_every_dtype_and_head_dim() {
        for dtype in ["bf16", "f16"] {
            for dh in ATTENTION_HEAD_DIMS {
                for kind in ["fwd", "bwd_dq", "bwd_dkv"] {
                    let name = format!("attention_{kind}_d{dh}_{dtype}");
                    assert!(KERNELS.contains(&name.as_str()), "{name}");
                }
            }
        }
        assert_eq!(KERNELS.len(), 18);
    }

    #[test]
    fn attention_grids_follow_the_tiles() {
        let spec = Attention::packed_self(256, 50, 12, 64, false);
        let q = query_grid("op", &spec).unwrap();
        assert_eq!((q.grid_dim.0, q.block_dim.0), (256 * 12, 128));
        let k = key_grid("op", &spec).unwrap();
        assert_eq!((k.grid_dim.0, k.block_dim.0), (256 * 12, 128));
        let spec = Attention::packed_self(2, 197, 3, 128, false);
        assert_eq!(query_grid("op", &spec).unwrap().grid_dim.0, 2 * 3 * 4);
        let k = key_grid("op", &spec).unwrap();
        assert_eq!((k.grid_dim.0, k.block_dim.0), (2 * 3 * 7, 64));
        assert!(grid("op", 1 << 31, 128).is_err());
    }

    #[test]
    fn attention_layout_checks_name_the_problem() {
        let mut spec = Attention::packed_self(2, 5, 2, 64, false);
        let len = spec.qkv_len();
        assert!(check_layout("op", "qkv", &spec, len, Some(10)).is_ok());
        assert!(matches!(check_layout("op", "qkv", &spec, len - 1, None), Err(Error::Shape { arg: "qkv", .. })));
        assert!(matches!(check_layout("op", "qkv", &spec, len, Some(9)), Err(Error::Shape { arg: "key_padding", .. })));
        spec.q_row_stride = 100;
        assert!(matches!(check_layout("op", "qkv", &spec, 1 << 20, None), Err(Error::Invalid { .. })));
        let odd = Attention::packed_self(2, 5, 2, 48, false);
        match check_layout("op", "qkv", &odd, odd.qkv_len(), None) {
            Err(Error::Invalid { msg, .. }) => assert!(msg.contains("head_dim 48"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(attention_saved_len(&Attention::separate(3, 1, 50, 4, 32)), 12);
    }
}
