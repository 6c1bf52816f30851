//! Shape and hyper-parameter descriptors of the backend primitives. Every tensor is row-major and contiguous unless
//! a descriptor gives a stride; the descriptors are plain data so that a test can build one and hand it to any backend.

/// `C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b]`, for `b` in `0..batch`, all row-major.
/// `op(A)` is `[m, k]`: A is stored `[m, k]`, or `[k, m]` when `trans_a`. `op(B)` is `[k, n]`: B is stored `[k, n]`, or
/// `[n, k]` when `trans_b`. C is `[m, n]`. A `stride_a`/`stride_b` of 0 broadcasts one matrix over the batch; the
/// batch's C matrices must not overlap (`stride_c ≥ m·n`). Each operand holds exactly [`Gemm::required_lens`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f64,
    pub beta: f64,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Gemm {
    /// One (non-batched) product `C = op(A)·op(B)`, overwriting C.
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Gemm {
        Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }
    /// Adds the product into C instead of overwriting it (`beta = 1`): how parameter gradients accumulate.
    pub fn accumulate(mut self) -> Gemm {
        self.beta = 1.0;
        self
    }
    pub fn alpha(mut self, alpha: f64) -> Gemm {
        self.alpha = alpha;
        self
    }
    /// `batch` independent products; the strides default to packed matrices and can be changed afterwards.
    pub fn batched(mut self, batch: usize) -> Gemm {
        self.batch = batch;
        self
    }
    pub fn strides(mut self, a: usize, b: usize, c: usize) -> Gemm {
        self.stride_a = a;
        self.stride_b = b;
        self.stride_c = c;
        self
    }
    /// Elements each operand must hold (the last batch's last element + 1).
    pub fn required_lens(&self) -> (usize, usize, usize) {
        let last = self.batch.saturating_sub(1);
        (
            last * self.stride_a + self.m * self.k,
            last * self.stride_b + self.k * self.n,
            last * self.stride_c + self.m * self.n,
        )
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// 2-D convolution over NCHW input `[n, c_in, h, w]` with weight `[c_out, c_in, kernel_h, kernel_w]`, no bias, no
/// dilation, groups = 1 (CLIP's convolutions). Output `[n, c_out, out_h, out_w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kernel_h) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kernel_w) / self.stride + 1
    }
    pub fn input_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * self.c_in * self.kernel_h * self.kernel_w
    }
    pub fn output_len(&self) -> usize {
        self.n * self.c_out * self.out_h() * self.out_w()
    }
}

/// Average pooling over NCHW `[n, c, h, w]`, square window, zero padding counted in the average (PyTorch's
/// `count_include_pad=True`, the default that CLIP uses), floor output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Pool2d {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kernel) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kernel) / self.stride + 1
    }
    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        self.n * self.c * self.out_h() * self.out_w()
    }
}

/// Element-wise nonlinearities of the towers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// Exact GELU, `x·Φ(x) = ½x(1 + erf(x/√2))` (PyTorch's `nn.GELU()`, open_clip's newer configs).
    Gelu,
    /// `x·σ(1.702x)` (OpenAI CLIP).
    QuickGelu,
}

/// Scaled dot-product attention over heads, reference form: `O = softmax(scale·QKᵀ + mask)·V` per (batch, head).
///
/// Q, K, V (and their gradients) live in ONE buffer, in regions that do not overlap, so that the fused QKV projection
/// output `[B, S, 3, H, Dh]` is read in place: element (b, s, h, d) of Q is at `q_offset + (b·seq_q + s)·q_row_stride + h·head_dim + d`; K and V
/// likewise with `seq_k` and `kv_row_stride`. The output is `[B, seq_q, heads·head_dim]`, contiguous.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    pub batch: usize,
    pub heads: usize,
    pub seq_q: usize,
    pub seq_k: usize,
    pub head_dim: usize,
    pub q_offset: usize,
    pub k_offset: usize,
    pub v_offset: usize,
    pub q_row_stride: usize,
    pub kv_row_stride: usize,
    pub scale: f64,
    /// Query i sees keys j ≤ i + (seq_k − seq_q) (the text tower's causal mask when seq_q = seq_k).
    pub causal: bool,
}

impl Attention {
    /// Self-attention over the packed `[B, S, 3·width]` output of a fused QKV projection.
    pub fn packed_self(batch: usize, seq: usize, heads: usize, head_dim: usize, causal: bool) -> Attention {
        let width = heads * head_dim;
        Attention {
            batch,
            heads,
            seq_q: seq,
            seq_k: seq,
            head_dim,
            q_offset: 0,
            k_offset: width,
            v_offset: 2 * width,
            q_row_stride: 3 * width,
            kv_row_stride: 3 * width,
            scale: 1.0 / (head_dim as f64).sqrt(),
            causal,
        }
    }
    /// Q `[B, seq_q, width]`, then K `[B, seq_k, width]`, then V `[B, seq_k, width]`, one after the other in one
    /// buffer (separate q/k/v projections, as in the ResNet attention pool).
    pub fn separate(batch: usize, seq_q: usize, seq_k: usize, heads: usize, head_dim: usize) -> Attention {
        let width = heads * head_dim;
        Attention {
            batch,
            heads,
            seq_q,
            seq_k,
            head_dim,
            q_offset: 0,
            k_offset: batch * seq_q * width,
            v_offset: batch * seq_q * width + batch * seq_k * width,
            q_row_stride: width,
            kv_row_stride: width,
            scale: 1.0 / (head_dim as f64).sqrt(),
            causal: false,
        }
    }
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Elements the QKV buffer must hold (0 for an empty batch).
    pub fn qkv_len(&self) -> usize {
        let end = |offset: usize, rows: usize, stride: usize| {
            if rows == 0 {
                0
            } else {
                offset + (rows - 1) * stride + self.width()
            }
        };
        let q_end = end(self.q_offset, self.batch * self.seq_q, self.q_row_stride);
        let k_end = end(self.k_offset, self.batch * self.seq_k, self.kv_row_stride);
        let v_end = end(self.v_offset, self.batch * self.seq_k, self.kv_row_stride);
        q_end.max(k_end).max(v_end)
    }
    pub fn out_len(&self) -> usize {
        self.batch * self.seq_q * self.width()
    }
    /// Whether query `i` may attend to key `j` under the causal rule.
    pub fn visible(&self, i: usize, j: usize) -> bool {
        !self.causal || j + self.seq_q <= i + self.seq_k
    }
    /// The layout checks every backend makes: rows must not overlap (the gradients written into them would depend on
    /// the write order), the QKV-shaped buffer `arg` of `qkv_len` elements must hold every row
    /// ([`Attention::qkv_len`]), and a padding mask of `key_padding` elements must be `[batch, seq_k]`.
    pub fn check_layout(
        &self,
        op: &'static str,
        arg: &'static str,
        qkv_len: usize,
        key_padding: Option<usize>,
    ) -> crate::error::Result<()> {
        let width = self.width();
        let overlap = |what: &str, stride: usize, rows: &str| crate::error::Error::Invalid {
            op,
            msg: format!(
                "{what} {stride} is smaller than the width {width} (heads·head_dim): {rows} rows would overlap; use a \
                 row stride of at least the width"
            ),
        };
        if self.batch * self.seq_q > 1 && self.q_row_stride < width {
            return Err(overlap("q_row_stride", self.q_row_stride, "Q"));
        }
        if self.batch * self.seq_k > 1 && self.kv_row_stride < width {
            return Err(overlap("kv_row_stride", self.kv_row_stride, "K/V"));
        }
        crate::error::check_min_len(op, arg, qkv_len, self.qkv_len())?;
        if let Some(len) = key_padding {
            crate::error::check_len(op, "key_padding", len, self.batch * self.seq_k)?;
        }
        Ok(())
    }
}

/// The CLIP contrastive loss of SPEC §1.1, generalised to open_clip's local loss (one rank's rows against every rank's
/// columns) and to one-directional terms.
///
/// `x [rows, dim]` (the queries: images) and `y [cols, dim]` (the keys: texts) are L2-normalised
/// (`F.normalize`, floor 1e-12) and `Λ = exp(t)·x̂·ŷᵀ` (`[rows, cols]`). With smoothed targets
/// `(1−ε)·onehot + ε/classes`:
/// `L = row_weight·mean_i CE(Λ_i·, row_offset + i) + col_weight·mean_j CE(Λ_·j, j)`.
/// The column term exists only on a square spec without offset (`rows == cols`, `row_offset == 0`), where it is
/// the text → image direction of one device's symmetric loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipLoss {
    /// Rows of `x`: the images (queries); this rank's rows in open_clip's local loss.
    pub rows: usize,
    /// Rows of `y`: the texts (keys); every rank's rows in the local loss; `= rows` on one device.
    pub cols: usize,
    /// Row `i`'s positive is column `row_offset + i` (this rank's first global row in the local loss).
    pub row_offset: usize,
    pub dim: usize,
    /// ε of the smoothed targets `(1−ε)·onehot + ε/classes` (0 for plain CLIP).
    pub label_smoothing: f64,
    /// Weight of the row term `mean_i CE(Λ_i·, row_offset + i)` (classes = cols).
    pub row_weight: f64,
    /// Weight of the column term `mean_j CE(Λ_·j, j)` (classes = rows); non-zero only on a square spec without offset.
    pub col_weight: f64,
}

impl ClipLoss {
    /// SPEC §1.1 on one device: `n` pairs, `L = ½[CE_rows(Λ) + CE_rows(Λᵀ)]`.
    pub fn symmetric(n: usize, dim: usize) -> ClipLoss {
        ClipLoss { rows: n, cols: n, row_offset: 0, dim, label_smoothing: 0.0, row_weight: 0.5, col_weight: 0.5 }
    }
    /// One direction only: `mean_i CE(Λ_i·, row_offset + i)` over `rows` queries and `cols` keys (one half of
    /// open_clip's local loss, DeCLIP's NNS term).
    pub fn one_way(rows: usize, cols: usize, row_offset: usize, dim: usize) -> ClipLoss {
        ClipLoss { rows, cols, row_offset, dim, label_smoothing: 0.0, row_weight: 1.0, col_weight: 0.0 }
    }
    pub fn with_label_smoothing(mut self, label_smoothing: f64) -> ClipLoss {
        self.label_smoothing = label_smoothing;
        self
    }
    pub fn with_weights(mut self, row_weight: f64, col_weight: f64) -> ClipLoss {
        self.row_weight = row_weight;
        self.col_weight = col_weight;
        self
    }
    /// Whether the spec has a column term (`col_weight != 0`).
    pub fn has_col_term(&self) -> bool {
        self.col_weight != 0.0
    }
    /// [`crate::Error::Invalid`] (naming the field and the fix) for an empty spec, an offset that runs past the
    /// columns, a column term on a non-square or offset spec, ε outside `[0, 1)`, or weights that are not finite.
    pub fn validate(&self, op: &'static str) -> crate::error::Result<()> {
        let fail = |msg: String| Err(crate::error::Error::Invalid { op, msg });
        if self.rows == 0 || self.cols == 0 || self.dim == 0 {
            return fail(format!(
                "empty batch: rows = {}, cols = {}, dim = {}; every one must be at least 1",
                self.rows, self.cols, self.dim
            ));
        }
        if self.row_offset.checked_add(self.rows).is_none_or(|end| end > self.cols) {
            return fail(format!(
                "row_offset {} + rows {} exceeds cols {}: each row's positive column row_offset + i must exist",
                self.row_offset, self.rows, self.cols
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return fail(format!("label_smoothing {} is outside [0, 1)", self.label_smoothing));
        }
        if !self.row_weight.is_finite() || !self.col_weight.is_finite() {
            return fail(format!("row_weight {} and col_weight {} must be finite", self.row_weight, self.col_weight));
        }
        if self.has_col_term() && (self.rows != self.cols || self.row_offset != 0) {
            return fail(format!(
                "col_weight {} needs a square spec without offset (rows {}, cols {}, row_offset {}); use col_weight 0 \
                 (ClipLoss::one_way) and a second one-way term with the roles swapped",
                self.col_weight, self.rows, self.cols, self.row_offset
            ));
        }
        Ok(())
    }
}

/// AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`): `p ← p − lr·wd·p`, then the Adam step with
/// bias correction at step `step` (1-based).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
}

/// A contiguous run of the parameter buffer and whether weight decay applies to it (open_clip decays only tensors of
/// 2+ dimensions that are not norms, biases or the logit scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecaySegment {
    pub start: usize,
    pub len: usize,
    pub decay: bool,
}
