//! THE contract between the model code and the hardware: `trait Backend`.
//!
//! Every primitive a tower or an objective needs, forward and backward as separate methods, with the shapes in the
//! doc comments. No graph, no tape: a layer calls `*_forward`, keeps what the backward needs, and later calls
//! `*_backward` itself. The CPU backend (f32/f64 loops, the executable spec) and the CUDA backend implement the same
//! trait, so one test can run an op on both and compare.
//!
//! Conventions that hold for every method:
//! - Tensors are row-major and contiguous; a shape descriptor (module [`spec`]) or explicit `rows`/`cols` give their
//!   shapes, and a method returns [`Error::Shape`](crate::Error::Shape) when a buffer's length does not match.
//! - `Self::Act` is the compute dtype of activations and of the weights the layers read (f32 on the CPU, bf16 or f32 on
//!   a GPU); `Self::Master` is the dtype of master weights, gradients, optimiser state, norms and losses (f32; f64 in
//!   CPU gradient checks).
//! - Input gradients (`dx`) are OVERWRITTEN; parameter gradients (`dgamma`, `dw`, `dtable`, …, all `Master`) are
//!   ACCUMULATED (`+=`), so that a parameter used twice, or several micro-batches, sum naturally.
//! - Outputs never alias inputs (the borrow checker enforces it), except where a method says "in place".
//!
//! ```
//! use cliprt::backend::{cpu::CpuBackend, Activation, Backend, Gemm};
//!
//! // y = ReLU(x·Wᵀ) for x [2, 3] and W [2, 3], on the CPU reference backend.
//! type Cpu = CpuBackend<f32>;
//! let b = Cpu::new();
//! let x = b.upload(&[1.0f32, 0.0, -1.0, 2.0, 1.0, 0.5])?;
//! let w = b.upload(&[0.5f32, -0.5, 1.0, 1.0, 1.0, 1.0])?;
//! let mut h = b.zeros::<f32>(4)?;
//! b.gemm(&Gemm::new(2, 2, 3, false, true), Cpu::view(&x), Cpu::view(&w), Cpu::view_mut(&mut h))?;
//! assert_eq!(h, [-0.5, 0.0, 1.0, 3.5]);
//! let mut y = b.zeros::<f32>(4)?;
//! b.activation_forward(Activation::Relu, &h, &mut y)?;
//! assert_eq!(y, [0.0, 0.0, 1.0, 3.5]);
//! # Ok::<(), cliprt::Error>(())
//! ```

pub mod cpu;
pub mod cuda;
pub mod elem;
pub mod spec;

use std::ops::Range;

use half::{bf16, f16};

pub use elem::{DType, Elem, Float};
pub use spec::{Activation, AdamW, Attention, ClipLoss, Conv2d, DecaySegment, Gemm, Pool2d};

use crate::error::Result;

/// Read-only view of `T`s on backend `B`.
pub type Ref<'a, B, T> = <B as Backend>::Ref<'a, T>;
/// Writable view of `T`s on backend `B`.
pub type Mut<'a, B, T> = <B as Backend>::Mut<'a, T>;

/// BatchNorm over `[n, channels, spatial]` (spatial = H·W; 1 for BatchNorm1d over `[n, channels]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    pub n: usize,
    pub channels: usize,
    pub spatial: usize,
    pub eps: f64,
    /// PyTorch's momentum: `running = (1 − momentum)·running + momentum·batch_stat`, variance unbiased.
    pub momentum: f64,
}

impl BatchNorm {
    pub fn len(&self) -> usize {
        self.n * self.channels * self.spatial
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub trait Backend: Sized + Send + Sync + 'static {
    /// Compute dtype of activations and of the weight copy the layers read.
    type Act: Elem;
    /// Dtype of master weights, gradients, optimiser moments, statistics and losses.
    type Master: Elem;
    /// An owned allocation of `T`s.
    type Buf<T: Elem>: Send + Sync;
    /// A read-only view (cheap to copy, like `&[T]`).
    type Ref<'a, T: Elem>: Copy + Send + Sync;
    /// A writable view (like `&mut [T]`); [`Backend::reborrow`] lends it out without giving it up.
    type Mut<'a, T: Elem>: Send;

    /// Short name for logs ("cpu-f32", "cuda").
    fn name(&self) -> String;

    // ----------------------------------------------------------------------------------------------- memory --------
    /// A new buffer of `len` zeros.
    fn zeros<T: Elem>(&self, len: usize) -> Result<Self::Buf<T>>;
    /// A new buffer holding a copy of `host`.
    fn upload<T: Elem>(&self, host: &[T]) -> Result<Self::Buf<T>>;
    /// A host copy of a view (waits for pending work).
    fn download<T: Elem>(&self, x: Self::Ref<'_, T>) -> Result<Vec<T>>;
    /// Overwrites a view with a host slice of the same length.
    fn write<T: Elem>(&self, host: &[T], dst: Self::Mut<'_, T>) -> Result<()>;
    fn fill<T: Elem>(&self, dst: Self::Mut<'_, T>, value: T) -> Result<()>;
    fn copy<T: Elem>(&self, src: Self::Ref<'_, T>, dst: Self::Mut<'_, T>) -> Result<()>;
    /// Waits until all queued work is done.
    fn synchronize(&self) -> Result<()>;

    fn view<T: Elem>(buf: &Self::Buf<T>) -> Self::Ref<'_, T>;
    fn view_mut<T: Elem>(buf: &mut Self::Buf<T>) -> Self::Mut<'_, T>;
    /// A read-only view of what a writable view covers.
    fn as_ref<'a, T: Elem>(x: &'a Self::Mut<'_, T>) -> Self::Ref<'a, T>;
    /// Lends a writable view out for one call and keeps it usable afterwards.
    fn reborrow<'a, T: Elem>(x: &'a mut Self::Mut<'_, T>) -> Self::Mut<'a, T>;
    fn slice<'a, T>(x: Self::Ref<'a, T>, range: Range<usize>) -> Self::Ref<'a, T>
    where
        T: Elem + 'a;
    fn slice_mut<'a, T>(x: Self::Mut<'a, T>, range: Range<usize>) -> Self::Mut<'a, T>
    where
        T: Elem + 'a;
    fn split_at_mut<'a, T>(x: Self::Mut<'a, T>, mid: usize) -> (Self::Mut<'a, T>, Self::Mut<'a, T>)
    where
        T: Elem + 'a;
    fn len<T: Elem>(x: Self::Ref<'_, T>) -> usize;
    fn len_mut<T: Elem>(x: &Self::Mut<'_, T>) -> usize;
    fn buf_len<T: Elem>(buf: &Self::Buf<T>) -> usize {
        Self::len(Self::view(buf))
    }

    // ----------------------------------------------------------------------------------------------- casts ---------
    fn master_to_act(&self, x: Ref<'_, Self, Self::Master>, y: Mut<'_, Self, Self::Act>) -> Result<()>;
    fn act_to_master(&self, x: Ref<'_, Self, Self::Act>, y: Mut<'_, Self, Self::Master>) -> Result<()>;
    /// Round to nearest even, as `half::bf16::from_f32`.
    fn cast_to_bf16(&self, x: Ref<'_, Self, Self::Master>, y: Mut<'_, Self, bf16>) -> Result<()>;
    fn cast_from_bf16(&self, x: Ref<'_, Self, bf16>, y: Mut<'_, Self, Self::Master>) -> Result<()>;
    fn cast_to_f16(&self, x: Ref<'_, Self, Self::Master>, y: Mut<'_, Self, f16>) -> Result<()>;
    fn cast_from_f16(&self, x: Ref<'_, Self, f16>, y: Mut<'_, Self, Self::Master>) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- GEMM ----------
    /// `C = alpha·op(A)·op(B) + beta·C` (see [`Gemm`]); A, B, C in the compute dtype.
    fn gemm(
        &self,
        spec: &Gemm,
        a: Ref<'_, Self, Self::Act>,
        b: Ref<'_, Self, Self::Act>,
        c: Mut<'_, Self, Self::Act>,
    ) -> Result<()>;
    /// The same product written to a master-dtype C: weight gradients, `dW += dYᵀ·X` with `spec.beta = 1`.
    fn gemm_to_master(
        &self,
        spec: &Gemm,
        a: Ref<'_, Self, Self::Act>,
        b: Ref<'_, Self, Self::Act>,
        c: Mut<'_, Self, Self::Master>,
    ) -> Result<()>;
    /// [`Backend::gemm`] then `C[b][r, :] += bias` on every row of every C (`bias [n]`): a linear layer's forward.
    /// The default runs the two primitives; the CUDA backend adds the bias in the GEMM's epilogue (one pass over C
    /// fewer).
    fn gemm_bias(
        &self,
        spec: &Gemm,
        a: Ref<'_, Self, Self::Act>,
        b: Ref<'_, Self, Self::Act>,
        bias: Ref<'_, Self, Self::Act>,
        mut c: Mut<'_, Self, Self::Act>,
    ) -> Result<()> {
        self.gemm(spec, a, b, Self::reborrow(&mut c))?;
        if spec.stride_c == spec.m * spec.n {
            let rows = spec.batch * spec.m;
            return self.add_row_vector(Self::slice_mut(c, 0..rows * spec.n), bias, rows, spec.n);
        }
        for batch in 0..spec.batch {
            let start = batch * spec.stride_c;
            let rows = Self::slice_mut(Self::reborrow(&mut c), start..start + spec.m * spec.n);
            self.add_row_vector(rows, bias, spec.m, spec.n)?;
        }
        Ok(())
    }
    /// `y[r, :] += v` for every row of `y [rows, cols]`: a bias, or a positional embedding (`cols = S·C`).
    /// Its backward is [`Backend::sum_rows`].
    fn add_row_vector(
        &self,
        y: Mut<'_, Self, Self::Act>,
        v: Ref<'_, Self, Self::Act>,
        rows: usize,
        cols: usize,
    ) -> Result<()>;
    /// `out[c] (+)= Σ_r x[r, c]` over `x [rows, cols]`, accumulated when `accumulate` (bias gradients).
    fn sum_rows(
        &self,
        x: Ref<'_, Self, Self::Act>,
        out: Mut<'_, Self, Self::Master>,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- element-wise --
    /// `out = a + b`.
    fn add(
        &self,
        a: Ref<'_, Self, Self::Act>,
        b: Ref<'_, Self, Self::Act>,
        out: Mut<'_, Self, Self::Act>,
    ) -> Result<()>;
    /// `y += alpha·x`, in place (residual connections, gradient sums).
    fn axpy(&self, alpha: f64, x: Ref<'_, Self, Self::Act>, y: Mut<'_, Self, Self::Act>) -> Result<()>;
    /// `y *= alpha`, in place.
    fn scale(&self, alpha: f64, y: Mut<'_, Self, Self::Act>) -> Result<()>;
    /// `y *= alpha` on a master buffer, in place (gradient clipping).
    fn scale_master(&self, alpha: f64, y: Mut<'_, Self, Self::Master>) -> Result<()>;
    /// `y = f(x)`.
    fn activation_forward(
        &self,
        kind: Activation,
        x: Ref<'_, Self, Self::Act>,
        y: Mut<'_, Self, Self::Act>,
    ) -> Result<()>;
    /// `dx = f'(x)·dy`.
    fn activation_backward(
        &self,
        kind: Activation,
        x: Ref<'_, Self, Self::Act>,
        dy: Ref<'_, Self, Self::Act>,
        dx: Mut<'_, Self, Self::Act>,
    ) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- layout --------
    /// `y[b] = x[b]ᵀ`: `x [batch, rows, cols]` → `y [batch, cols, rows]` (NCHW ↔ tokens). Its own backward.
    fn transpose(
        &self,
        x: Ref<'_, Self, Self::Act>,
        y: Mut<'_, Self, Self::Act>,
        batch: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()>;
    /// Copies `rows` rows of `cols` elements: row r of `src` starts at `r·src_stride`, of `dst` at `r·dst_stride`.
    /// Other elements of `dst` are left as they are (concatenating the class token and the patch tokens).
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        src: Ref<'_, Self, Self::Act>,
        src_stride: usize,
        dst: Mut<'_, Self, Self::Act>,
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()>;
    /// `y[b, :] = x[b, index[b], :]` for `x [batch, seq, dim]`, `index [batch]` (class or EOT token pooling).
    fn gather_tokens(
        &self,
        x: Ref<'_, Self, Self::Act>,
        index: Ref<'_, Self, i32>,
        y: Mut<'_, Self, Self::Act>,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()>;
    /// `dx = 0` except `dx[b, index[b], :] = dy[b, :]`.
    fn gather_tokens_backward(
        &self,
        dy: Ref<'_, Self, Self::Act>,
        index: Ref<'_, Self, i32>,
        dx: Mut<'_, Self, Self::Act>,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- embedding -----
    /// `out[i, :] = table[ids[i], :]`, `table [vocab, dim]`, `out [ids.len(), dim]`; an id outside `0..vocab` is an
    /// error naming it.
    fn embedding_forward(
        &self,
        ids: Ref<'_, Self, i32>,
        table: Ref<'_, Self, Self::Act>,
        out: Mut<'_, Self, Self::Act>,
        vocab: usize,
        dim: usize,
    ) -> Result<()>;
    /// `dtable[ids[i], :] += dout[i, :]` (scatter-add, in a fixed order).
    fn embedding_backward(
        &self,
        ids: Ref<'_, Self, i32>,
        dout: Ref<'_, Self, Self::Act>,
        dtable: Mut<'_, Self, Self::Master>,
        vocab: usize,
        dim: usize,
    ) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- norms ---------
    /// LayerNorm over the last axis of `x [rows, cols]`; saves `mean [rows]` and `rstd [rows]` (statistics in the
    /// master dtype whatever the compute dtype).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        x: Ref<'_, Self, Self::Act>,
        gamma: Ref<'_, Self, Self::Act>,
        beta: Ref<'_, Self, Self::Act>,
        y: Mut<'_, Self, Self::Act>,
        mean: Mut<'_, Self, Self::Master>,
        rstd: Mut<'_, Self, Self::Master>,
        rows: usize,
        cols: usize,
        eps: f64,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dy: Ref<'_, Self, Self::Act>,
        x: Ref<'_, Self, Self::Act>,
        gamma: Ref<'_, Self, Self::Act>,
        mean: Ref<'_, Self, Self::Master>,
        rstd: Ref<'_, Self, Self::Master>,
        dx: Mut<'_, Self, Self::Act>,
        dgamma: Mut<'_, Self, Self::Master>,
        dbeta: Mut<'_, Self, Self::Master>,
        rows: usize,
        cols: usize,
    ) -> Result<()>;
    /// BatchNorm in training mode: normalises with the batch statistics (biased variance), saves them, and updates
    /// the running statistics (unbiased variance). `gamma`/`beta` are `None` for `affine=False`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_train(
        &self,
        spec: &BatchNorm,
        x: Ref<'_, Self, Self::Act>,
        gamma: Option<Ref<'_, Self, Self::Act>>,
        beta: Option<Ref<'_, Self, Self::Act>>,
        y: Mut<'_, Self, Self::Act>,
        save_mean: Mut<'_, Self, Self::Master>,
        save_rstd: Mut<'_, Self, Self::Master>,
        running_mean: Mut<'_, Self, Self::Master>,
        running_var: Mut<'_, Self, Self::Master>,
    ) -> Result<()>;
    /// BatchNorm in evaluation mode: normalises with the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_eval(
        &self,
        spec: &BatchNorm,
        x: Ref<'_, Self, Self::Act>,
        gamma: Option<Ref<'_, Self, Self::Act>>,
        beta: Option<Ref<'_, Self, Self::Act>>,
        running_mean: Ref<'_, Self, Self::Master>,
        running_var: Ref<'_, Self, Self::Master>,
        y: Mut<'_, Self, Self::Act>,
    ) -> Result<()>;
    /// Backward of the training-mode forward (the batch statistics depend on x).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(
        &self,
        spec: &BatchNorm,
        dy: Ref<'_, Self, Self::Act>,
        x: Ref<'_, Self, Self::Act>,
        gamma: Option<Ref<'_, Self, Self::Act>>,
        save_mean: Ref<'_, Self, Self::Master>,
        save_rstd: Ref<'_, Self, Self::Master>,
        dx: Mut<'_, Self, Self::Act>,
        dgamma: Option<Mut<'_, Self, Self::Master>>,
        dbeta: Option<Mut<'_, Self, Self::Master>>,
    ) -> Result<()>;
    /// `y = x / max(‖x‖, 1e-12)` per row of `x [rows, cols]` (`F.normalize`); saves the unclamped norms ‖x‖.
    fn l2norm_forward(
        &self,
        x: Ref<'_, Self, Self::Act>,
        y: Mut<'_, Self, Self::Act>,
        norms: Mut<'_, Self, Self::Master>,
        rows: usize,
        cols: usize,
    ) -> Result<()>;
    /// `dx = (dy − y·⟨dy, y⟩) / ‖x‖` (plain `dy/eps` where the norm was clamped).
    #[allow(clippy::too_many_arguments)]
    fn l2norm_backward(
        &self,
        dy: Ref<'_, Self, Self::Act>,
        y: Ref<'_, Self, Self::Act>,
        norms: Ref<'_, Self, Self::Master>,
        dx: Mut<'_, Self, Self::Act>,
        rows: usize,
        cols: usize,
    ) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- convolution ---
    fn conv2d_forward(
        &self,
        spec: &Conv2d,
        x: Ref<'_, Self, Self::Act>,
        w: Ref<'_, Self, Self::Act>,
        y: Mut<'_, Self, Self::Act>,
    ) -> Result<()>;
    fn conv2d_backward_data(
        &self,
        spec: &Conv2d,
        dy: Ref<'_, Self, Self::Act>,
        w: Ref<'_, Self, Self::Act>,
        dx: Mut<'_, Self, Self::Act>,
    ) -> Result<()>;
    /// `dw += ∂L/∂w`.
    fn conv2d_backward_filter(
        &self,
        spec: &Conv2d,
        dy: Ref<'_, Self, Self::Act>,
        x: Ref<'_, Self, Self::Act>,
        dw: Mut<'_, Self, Self::Master>,
    ) -> Result<()>;
    fn avgpool2d_forward(&self, spec: &Pool2d, x: Ref<'_, Self, Self::Act>, y: Mut<'_, Self, Self::Act>) -> Result<()>;
    fn avgpool2d_backward(
        &self,
        spec: &Pool2d,
        dy: Ref<'_, Self, Self::Act>,
        dx: Mut<'_, Self, Self::Act>,
    ) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- attention -----
    /// Softmax over the last axis of `x [rows, cols]` (a row of only −∞ gives NaN, as in PyTorch; attention masks
    /// are handled inside the attention primitives).
    fn softmax_forward(
        &self,
        x: Ref<'_, Self, Self::Act>,
        y: Mut<'_, Self, Self::Act>,
        rows: usize,
        cols: usize,
    ) -> Result<()>;
    /// `dx = y ∘ (dy − ⟨dy, y⟩_row)`.
    fn softmax_backward(
        &self,
        y: Ref<'_, Self, Self::Act>,
        dy: Ref<'_, Self, Self::Act>,
        dx: Mut<'_, Self, Self::Act>,
        rows: usize,
        cols: usize,
    ) -> Result<()>;
    /// Elements of the state [`Backend::attention_forward`] saves for the backward (the CPU keeps the
    /// probabilities, a flash kernel only the row log-sum-exps).
    fn attention_saved_len(&self, spec: &Attention) -> usize;
    /// `out = softmax(scale·QKᵀ + masks)·V` per (batch, head) — see [`Attention`] for the layout. `key_padding`
    /// `[batch, seq_k]`, non-zero = masked. A query row with every key masked outputs zeros.
    fn attention_forward(
        &self,
        spec: &Attention,
        qkv: Ref<'_, Self, Self::Act>,
        key_padding: Option<Ref<'_, Self, u8>>,
        out: Mut<'_, Self, Self::Act>,
        saved: Mut<'_, Self, Self::Master>,
    ) -> Result<()>;
    /// Writes dQ, dK, dV into `dqkv` (same layout as `qkv`; the elements between, if any, are left as they are).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        spec: &Attention,
        qkv: Ref<'_, Self, Self::Act>,
        key_padding: Option<Ref<'_, Self, u8>>,
        out: Ref<'_, Self, Self::Act>,
        saved: Ref<'_, Self, Self::Master>,
        dout: Ref<'_, Self, Self::Act>,
        dqkv: Mut<'_, Self, Self::Act>,
    ) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- losses --------
    /// Per-row cross-entropy of `logits [rows, classes]` against `targets [rows]`, with PyTorch's label smoothing:
    /// `loss = (1−ε)·(lse − x_t) + ε·(lse − mean_j x_j)`; rows whose target is `ignore_index` get loss 0.
    /// Saves the row log-sum-exp.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_forward(
        &self,
        logits: Ref<'_, Self, Self::Act>,
        targets: Ref<'_, Self, i32>,
        losses: Mut<'_, Self, Self::Master>,
        lse: Mut<'_, Self, Self::Master>,
        rows: usize,
        classes: usize,
        ignore_index: i32,
        label_smoothing: f64,
    ) -> Result<()>;
    /// `dlogits = grad_scale·(softmax − ((1−ε)·onehot + ε/classes))`, zero on ignored rows (`grad_scale` = 1/count
    /// for a mean).
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_backward(
        &self,
        logits: Ref<'_, Self, Self::Act>,
        targets: Ref<'_, Self, i32>,
        lse: Ref<'_, Self, Self::Master>,
        dlogits: Mut<'_, Self, Self::Act>,
        rows: usize,
        classes: usize,
        ignore_index: i32,
        label_smoothing: f64,
        grad_scale: f64,
    ) -> Result<()>;
    /// Elements of the state [`Backend::clip_loss_forward`] saves: O(rows + cols), never rows·cols (the CPU keeps
    /// `2·(rows + cols)`: row log-sum-exps, column log-sum-exps, image norms, text norms).
    fn clip_loss_saved_len(&self, spec: &ClipLoss) -> usize;
    /// The CLIP loss of [`ClipLoss`] (SPEC §1.1, and open_clip's local loss / one-way terms) on un-normalised
    /// `image [rows, dim]` (queries), `text [cols, dim]` (keys) and the log scale `t` (`[1]`, read on the device):
    /// L2 normalisation (floor 1e-12), logits `Λ = exp(t)·Î·T̂ᵀ`, `L = w_r·mean_i CE(Λ_i·, row_offset + i) +
    /// w_c·mean_j CE(Λ_·j, j)` with targets `(1−ε)·onehot + ε/classes`. Writes `loss [1]` and `saved`
    /// ([`Backend::clip_loss_saved_len`]). Errors: [`crate::Error::Invalid`] from [`ClipLoss::validate`], shapes.
    #[allow(clippy::too_many_arguments)]
    fn clip_loss_forward(
        &self,
        spec: &ClipLoss,
        image: Ref<'_, Self, Self::Act>,
        text: Ref<'_, Self, Self::Act>,
        log_scale: Ref<'_, Self, Self::Master>,
        loss: Mut<'_, Self, Self::Master>,
        saved: Mut<'_, Self, Self::Master>,
    ) -> Result<()>;
    /// Gradients of `dloss·L`: `dimage [rows, dim]` OVERWRITTEN; `dtext [cols, dim]` OVERWRITTEN when given (None:
    /// the keys carry no gradient — gathers without gradient, detached targets — and no work is spent on them);
    /// `dlog_scale` ACCUMULATED. `saved` is the forward's.
    #[allow(clippy::too_many_arguments)]
    fn clip_loss_backward(
        &self,
        spec: &ClipLoss,
        image: Ref<'_, Self, Self::Act>,
        text: Ref<'_, Self, Self::Act>,
        log_scale: Ref<'_, Self, Self::Master>,
        saved: Ref<'_, Self, Self::Master>,
        dloss: f64,
        dimage: Mut<'_, Self, Self::Act>,
        dtext: Option<Mut<'_, Self, Self::Act>>,
        dlog_scale: Mut<'_, Self, Self::Master>,
    ) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- search --------
    /// For each query of `queries [batch, dim]` (normalised here) the `k` keys of `keys [num_keys, dim]` (already
    /// unit rows) with the largest cosine, best first, ties to the lowest index: `index [batch, k]`, `sim [batch, k]`.
    /// A NaN cosine is never selected; slots left empty by NaN keys hold index `i32::MAX` and cosine −∞.
    #[allow(clippy::too_many_arguments)]
    fn nn_search(
        &self,
        queries: Ref<'_, Self, Self::Act>,
        keys: Ref<'_, Self, Self::Act>,
        index: Mut<'_, Self, i32>,
        sim: Mut<'_, Self, Self::Master>,
        batch: usize,
        num_keys: usize,
        dim: usize,
        k: usize,
    ) -> Result<()>;

    // ----------------------------------------------------------------------------------------------- optimiser -----
    /// One AdamW step over the whole parameter buffer; `segments` cover it and say where weight decay applies.
    /// `shadow`, when given, receives the updated weights in the compute dtype in the same pass.
    #[allow(clippy::too_many_arguments)]
    fn adamw_update(
        &self,
        hp: &AdamW,
        segments: &[DecaySegment],
        params: Mut<'_, Self, Self::Master>,
        grads: Ref<'_, Self, Self::Master>,
        m: Mut<'_, Self, Self::Master>,
        v: Mut<'_, Self, Self::Master>,
        shadow: Option<Mut<'_, Self, Self::Act>>,
    ) -> Result<()>;
    /// `Σ x²` in f64 (global gradient norm).
    fn sum_squares(&self, x: Ref<'_, Self, Self::Master>) -> Result<f64>;
    /// `Σ x` in f64 (loss reductions).
    fn sum(&self, x: Ref<'_, Self, Self::Master>) -> Result<f64>;
}
