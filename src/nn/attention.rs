//! Multi-head self-attention with a fused Q/K/V projection, parameter names as PyTorch's `nn.MultiheadAttention`
//! (`in_proj_weight [3·width, width]`, `in_proj_bias`, `out_proj.{weight,bias}`), which open_clip uses.

use crate::backend::{Attention, Backend, Gemm, Mut, Ref};
use crate::error::{Error, Result};
use crate::nn::{Linear, Slot};
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

pub struct MultiHeadAttention<B: Backend> {
    pub in_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub width: usize,
    pub heads: usize,
    pub causal: bool,
    spec: Option<Attention>,
    context: Slot<B, B::Act>,
    saved: Slot<B, B::Master>,
    d_context: Slot<B, B::Act>,
    d_qkv: Slot<B, B::Act>,
    /// Pooled mode: `[Q of the pooled rows (batch·width) | K, V of every row (rows·2·width)]`.
    qkv_pooled: Slot<B, B::Act>,
}

/// Standard deviations for CLIP-style normal initialisation; `None` keeps PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionInit {
    pub in_proj_std: f64,
    pub out_proj_std: f64,
}

impl<B: Backend> MultiHeadAttention<B> {
    /// Declares `{name}.in_proj_weight`, `{name}.in_proj_bias`, `{name}.out_proj.weight`, `{name}.out_proj.bias`.
    /// Default initialisation is nn.MultiheadAttention's: Xavier-uniform in_proj, zero biases, out_proj as a Linear;
    /// `init` switches to CLIP's normal initialisation of the text tower.
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        width: usize,
        heads: usize,
        causal: bool,
        init: Option<AttentionInit>,
    ) -> Result<Self> {
        if heads == 0 || !width.is_multiple_of(heads) {
            let msg = format!("width {width} must be a positive multiple of heads {heads}");
            return Err(Error::Invalid { op: "MultiHeadAttention", msg });
        }
        let (in_w, in_b) = (format!("{name}.in_proj_weight"), format!("{name}.in_proj_bias"));
        let (out_w, out_b) = (format!("{name}.out_proj.weight"), format!("{name}.out_proj.bias"));
        let (in_init, out_init) = match init {
            // Xavier-uniform over the [3·width, width] matrix: bound √(6 / (fan_in + fan_out)).
            None => (Init::Uniform((6.0 / (4 * width) as f64).sqrt()), Init::Uniform(1.0 / (width as f64).sqrt())),
            Some(i) => (Init::Normal(i.in_proj_std), Init::Normal(i.out_proj_std)),
        };
        let in_proj = Linear::with_names(pb, &in_w, Some(&in_b), width, 3 * width, in_init, Init::Zeros)?;
        let out_proj = Linear::with_names(pb, &out_w, Some(&out_b), width, width, out_init, Init::Zeros)?;
        Ok(MultiHeadAttention {
            in_proj,
            out_proj,
            width,
            heads,
            causal,
            spec: None,
            context: Slot::default(),
            saved: Slot::default(),
            d_context: Slot::default(),
            d_qkv: Slot::default(),
            qkv_pooled: Slot::default(),
        })
    }

    /// `x [batch, seq, width]` → `out [batch, seq, width]`; `key_padding [batch, seq]`, non-zero = masked key.
    pub fn forward(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        batch: usize,
        seq: usize,
        key_padding: Option<Ref<'_, B, u8>>,
    ) -> Result<()> {
        let rows = batch * seq;
        let spec = Attention::packed_self(batch, seq, self.heads, self.width / self.heads, self.causal);
        self.in_proj.forward(backend, params, x, rows)?;
        let context = self.context.ensure(backend, rows * self.width)?;
        let saved = self.saved.ensure(backend, backend.attention_saved_len(&spec))?;
        backend.attention_forward(&spec, self.in_proj.out()?, key_padding, context, saved)?;
        self.out_proj.forward(backend, params, self.context.get()?, rows)?;
        self.spec = Some(spec);
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out_proj.out()
    }

    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        dy: Ref<'_, B, B::Act>,
        key_padding: Option<Ref<'_, B, u8>>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let spec =
            self.spec.ok_or(Error::Invalid { op: "MultiHeadAttention", msg: "backward before forward".into() })?;
        let d_context = self.d_context.ensure(backend, spec.out_len())?;
        self.out_proj.backward(backend, params, self.context.get()?, dy, Some(d_context))?;
        let d_qkv = self.d_qkv.ensure(backend, spec.qkv_len())?;
        let (qkv, out, saved) = (self.in_proj.out()?, self.context.get()?, self.saved.get()?);
        backend.attention_backward(&spec, qkv, key_padding, out, saved, self.d_context.get()?, d_qkv)?;
        self.in_proj.backward(backend, params, x, self.d_qkv.get()?, Some(dx))
    }

    /// The rows `[0, width)` (Q) and `[width, 3·width)` (K, V) of the fused in_proj weight `[3·width, width]`, and the
    /// same split of its bias.
    fn in_proj_parts(&self) -> Result<[ParamId; 4]> {
        let (w, weight) = (self.width, self.in_proj.weight);
        let bias =
            self.in_proj.bias.ok_or(Error::Invalid { op: "MultiHeadAttention", msg: "no in_proj bias".into() })?;
        let part = |id: ParamId, start: usize, len: usize| ParamId { offset: id.offset + start, len };
        Ok([part(weight, 0, w * w), part(weight, w * w, 2 * w * w), part(bias, 0, w), part(bias, w, 2 * w)])
    }

    /// Attention for one query per sequence: `x [batch, seq, width]` gives the keys and values, `x_pooled
    /// [batch, width]` (the rows of x that are pooled) the queries; `out [batch, width]` equals the pooled rows of
    /// [`MultiHeadAttention::forward`]'s output when `key_padding` hides what those queries must not see (the causal
    /// rule is the caller's to express as key padding here). Skips the queries, the output projection and everything
    /// after it for the rows nobody reads.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_pooled(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        x_pooled: Ref<'_, B, B::Act>,
        batch: usize,
        seq: usize,
        key_padding: Option<Ref<'_, B, u8>>,
    ) -> Result<()> {
        let (w, rows) = (self.width, batch * seq);
        let [w_q, w_kv, b_q, b_kv] = self.in_proj_parts()?;
        let spec = self.pooled_spec(batch, seq);
        let qkv = self.qkv_pooled.ensure(backend, batch * w + rows * 2 * w)?;
        let (mut q, mut kv) = B::split_at_mut(qkv, batch * w);
        backend.gemm(&Gemm::new(batch, w, w, false, true), x_pooled, params.weight(w_q), B::reborrow(&mut q))?;
        backend.add_row_vector(q, params.weight(b_q), batch, w)?;
        backend.gemm(&Gemm::new(rows, 2 * w, w, false, true), x, params.weight(w_kv), B::reborrow(&mut kv))?;
        backend.add_row_vector(kv, params.weight(b_kv), rows, 2 * w)?;
        let context = self.context.ensure(backend, batch * w)?;
        let saved = self.saved.ensure(backend, backend.attention_saved_len(&spec))?;
        backend.attention_forward(&spec, self.qkv_pooled.get()?, key_padding, context, saved)?;
        self.out_proj.forward(backend, params, self.context.get()?, batch)?;
        self.spec = Some(spec);
        Ok(())
    }

    /// One query per sequence (at Q's offset 0), keys and values of every row after them.
    fn pooled_spec(&self, batch: usize, seq: usize) -> Attention {
        let (w, heads) = (self.width, self.heads);
        Attention {
            batch,
            heads,
            seq_q: 1,
            seq_k: seq,
            head_dim: w / heads,
            q_offset: 0,
            k_offset: batch * w,
            v_offset: batch * w + w,
            q_row_stride: w,
            kv_row_stride: 2 * w,
            scale: 1.0 / ((w / heads) as f64).sqrt(),
            causal: false,
        }
    }

    /// Backward of [`MultiHeadAttention::forward_pooled`] given `dy [batch, width]`: writes the gradients of `x`
    /// through the keys and values (`dx [batch·seq, width]`) and of `x_pooled` through the queries (`dx_pooled
    /// [batch, width]`), both overwritten, and accumulates the parameter gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_pooled(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        x_pooled: Ref<'_, B, B::Act>,
        dy: Ref<'_, B, B::Act>,
        key_padding: Option<Ref<'_, B, u8>>,
        dx: Mut<'_, B, B::Act>,
        dx_pooled: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let spec =
            self.spec.ok_or(Error::Invalid { op: "MultiHeadAttention", msg: "backward before forward".into() })?;
        let (w, batch) = (self.width, spec.batch);
        let rows = batch * spec.seq_k;
        let [w_q, w_kv, b_q, b_kv] = self.in_proj_parts()?;
        let d_context = self.d_context.ensure(backend, batch * w)?;
        self.out_proj.backward(backend, params, self.context.get()?, dy, Some(d_context))?;
        let d_qkv = self.d_qkv.ensure(backend, spec.qkv_len())?;
        let (qkv, out, saved) = (self.qkv_pooled.get()?, self.context.get()?, self.saved.get()?);
        backend.attention_backward(&spec, qkv, key_padding, out, saved, self.d_context.get()?, d_qkv)?;
        let d_qkv = self.d_qkv.get()?;
        let (d_q, d_kv) = (B::slice(d_qkv, 0..batch * w), B::slice(d_qkv, batch * w..batch * w + rows * 2 * w));
        // Queries: dW_q += dQᵀ·x_pooled, db_q += Σ dQ, dx_pooled = dQ·W_q.
        backend.gemm(&Gemm::new(batch, w, w, false, false), d_q, params.weight(w_q), dx_pooled)?;
        let [d_w_q, d_b_q] = params.grads_mut([w_q, b_q])?;
        backend.gemm_to_master(&Gemm::new(w, w, batch, true, false).accumulate(), d_q, x_pooled, d_w_q)?;
        backend.sum_rows(d_q, d_b_q, batch, w, true)?;
        // Keys and values: dW_kv += dKVᵀ·x, db_kv += Σ dKV, dx = dKV·W_kv.
        backend.gemm(&Gemm::new(rows, w, 2 * w, false, false), d_kv, params.weight(w_kv), dx)?;
        let [d_w_kv, d_b_kv] = params.grads_mut([w_kv, b_kv])?;
        backend.gemm_to_master(&Gemm::new(2 * w, w, rows, true, false).accumulate(), d_kv, x, d_w_kv)?;
        backend.sum_rows(d_kv, d_b_kv, rows, 2 * w, true)
    }
}
