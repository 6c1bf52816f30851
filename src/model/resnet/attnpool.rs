//! open_clip's `AttentionPool2d`: the ResNet's last feature map becomes `HW` tokens, their mean is prepended, a
//! learned positional embedding is added, and one multi-head attention with the mean token as its only query (keys
//! and values: all `HW + 1` tokens; separate q/k/v projections with biases) gives the image feature, projected by
//! `c_proj`. open_clip runs all `HW + 1` queries and keeps output 0; only that one is computed here.

use crate::backend::{Attention, Backend, Elem, Gemm, Mut, Ref};
use crate::error::{check_len, Error, Result};
use crate::nn::{Linear, Slot};
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

pub struct AttentionPool2d<B: Backend> {
    /// `[spacial_dim² + 1, embed_dim]`.
    pub positional_embedding: ParamId,
    pub k_proj: Linear<B>,
    pub q_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub c_proj: Linear<B>,
    /// Side of the feature map (`image_size / 32`).
    pub spacial_dim: usize,
    /// Channels of the feature map = width of the tokens (32·width).
    pub embed_dim: usize,
    pub heads: usize,
    pub output_dim: usize,
    spec: Option<Attention>,
    /// `HW` ones: the mean token is `(1/HW)·1ᵀ·tokens`, and its backward spreads with the same vector.
    ones: Slot<B, B::Act>,
    /// `[batch, HW, C]`: the feature map transposed to tokens.
    spatial: Slot<B, B::Act>,
    /// `[batch, C]`: the mean of the spatial tokens.
    mean: Slot<B, B::Act>,
    /// `[batch, HW + 1, C]`: mean token, spatial tokens, plus the positional embedding.
    tokens: Slot<B, B::Act>,
    /// `[batch, C]`: token 0 of each image (the only query), contiguous for `q_proj`.
    query: Slot<B, B::Act>,
    /// Q `[batch, 1, C]`, K `[batch, HW + 1, C]`, V `[batch, HW + 1, C]` in one buffer ([`Attention::separate`]).
    qkv: Slot<B, B::Act>,
    /// `[batch, C]`: the attention output of the query token.
    context: Slot<B, B::Act>,
    saved: Slot<B, B::Master>,
    d_context: Slot<B, B::Act>,
    d_qkv: Slot<B, B::Act>,
    d_query: Slot<B, B::Act>,
    d_tokens: Slot<B, B::Act>,
    d_tokens_v: Slot<B, B::Act>,
    d_mean: Slot<B, B::Act>,
    d_spatial: Slot<B, B::Act>,
}

impl<B: Backend> AttentionPool2d<B> {
    /// Declares `{name}.positional_embedding` (randn/√embed_dim) and `{name}.{k,q,v,c}_proj.{weight,bias}` in
    /// open_clip's order; the projection weights are N(0, embed_dim^-½) as in `ModifiedResNet.init_parameters`, the
    /// biases PyTorch's Linear default U(±1/√embed_dim).
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        spacial_dim: usize,
        embed_dim: usize,
        heads: usize,
        output_dim: usize,
    ) -> Result<Self> {
        if heads == 0 || !embed_dim.is_multiple_of(heads) {
            let msg = format!("embed_dim {embed_dim} must be a positive multiple of heads {heads}");
            return Err(Error::Invalid { op: "AttentionPool2d", msg });
        }
        // randn/√C, N(0, in_features^-½) and U(±1/√in_features) share one number: every in_features is C.
        let std = (embed_dim as f64).powf(-0.5);
        let bound = std;
        let positional_embedding = pb.param(
            &format!("{name}.positional_embedding"),
            &[spacial_dim * spacial_dim + 1, embed_dim],
            Init::Normal(std),
        )?;
        let mut proj = |part: &str, out: usize| {
            let (w, b) = (format!("{name}.{part}.weight"), format!("{name}.{part}.bias"));
            Linear::with_names(pb, &w, Some(&b), embed_dim, out, Init::Normal(std), Init::Uniform(bound))
        };
        let k_proj = proj("k_proj", embed_dim)?;
        let q_proj = proj("q_proj", embed_dim)?;
        let v_proj = proj("v_proj", embed_dim)?;
        let c_proj = proj("c_proj", output_dim)?;
        Ok(AttentionPool2d {
            positional_embedding,
            k_proj,
            q_proj,
            v_proj,
            c_proj,
            spacial_dim,
            embed_dim,
            heads,
            output_dim,
            spec: None,
            ones: Slot::default(),
            spatial: Slot::default(),
            mean: Slot::default(),
            tokens: Slot::default(),
            query: Slot::default(),
            qkv: Slot::default(),
            context: Slot::default(),
            saved: Slot::default(),
            d_context: Slot::default(),
            d_qkv: Slot::default(),
            d_query: Slot::default(),
            d_tokens: Slot::default(),
            d_tokens_v: Slot::default(),
            d_mean: Slot::default(),
            d_spatial: Slot::default(),
        })
    }

    /// `x [batch, C, H, W]` (H = W = spacial_dim) → `out [batch, output_dim]`.
    pub fn forward(&mut self, backend: &B, params: &ParamStore<B>, x: Ref<'_, B, B::Act>, batch: usize) -> Result<()> {
        let (n, c, hw) = (batch, self.embed_dim, self.spacial_dim * self.spacial_dim);
        let seq = hw + 1;
        check_len("AttentionPool2d", "x", B::len(x), n * c * hw)?;

        // spatial [n, HW, C] = xᵀ per image (NCHW → tokens)
        backend.transpose(x, self.spatial.ensure(backend, n * hw * c)?, n, c, hw)?;
        // mean [n, C] = (1/HW)·1ᵀ·spatial[b]
        backend.fill(self.ones.ensure(backend, hw)?, B::Act::from_real(1.0))?;
        let mean = Gemm::new(1, c, hw, false, false).alpha(1.0 / hw as f64).batched(n).strides(0, hw * c, c);
        backend.gemm(&mean, self.ones.get()?, self.spatial.get()?, self.mean.ensure(backend, n * c)?)?;
        // tokens [n, HW+1, C] = [mean; spatial] + positional_embedding
        let mut tokens = self.tokens.ensure(backend, n * seq * c)?;
        backend.copy_rows(self.mean.get()?, c, B::reborrow(&mut tokens), seq * c, n, c)?;
        let after_mean = B::slice_mut(B::reborrow(&mut tokens), c..n * seq * c);
        backend.copy_rows(self.spatial.get()?, hw * c, after_mean, seq * c, n, hw * c)?;
        backend.add_row_vector(tokens, params.weight(self.positional_embedding), n, seq * c)?;
        // query [n, C] = tokens[:, 0]
        backend.copy_rows(self.tokens.get()?, seq * c, self.query.ensure(backend, n * c)?, c, n, c)?;

        // Q = q_proj(query), K = k_proj(tokens), V = v_proj(tokens), written where the attention reads them
        let spec = Attention::separate(n, 1, seq, self.heads, c / self.heads);
        let qkv = self.qkv.ensure(backend, spec.qkv_len())?;
        let (q, kv) = B::split_at_mut(qkv, spec.k_offset);
        let (k, v) = B::split_at_mut(kv, spec.v_offset - spec.k_offset);
        self.q_proj.forward_into(backend, params, self.query.get()?, n, q)?;
        self.k_proj.forward_into(backend, params, self.tokens.get()?, n * seq, k)?;
        self.v_proj.forward_into(backend, params, self.tokens.get()?, n * seq, v)?;
        // context [n, C] = softmax(q·kᵀ/√d)·v per head
        let saved = self.saved.ensure(backend, backend.attention_saved_len(&spec))?;
        let context = self.context.ensure(backend, n * c)?;
        backend.attention_forward(&spec, self.qkv.get()?, None, context, saved)?;
        // out [n, output_dim] = c_proj(context)
        self.c_proj.forward(backend, params, self.context.get()?, n)?;
        self.spec = Some(spec);
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.c_proj.out()
    }

    /// `d_out [batch, output_dim]` → `dx [batch, C, H, W]` (overwritten); parameter gradients accumulated.
    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        d_out: Ref<'_, B, B::Act>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let spec = self.spec.ok_or(Error::Invalid { op: "AttentionPool2d", msg: "backward before forward".into() })?;
        let (n, c, seq) = (spec.batch, self.embed_dim, spec.seq_k);
        let hw = seq - 1;

        // out = c_proj(context)
        let d_context = self.d_context.ensure(backend, n * c)?;
        self.c_proj.backward(backend, params, self.context.get()?, d_out, Some(d_context))?;
        // context = attention(Q, K, V)
        let (qkv, context, saved) = (self.qkv.get()?, self.context.get()?, self.saved.get()?);
        let d_qkv = self.d_qkv.ensure(backend, spec.qkv_len())?;
        backend.attention_backward(&spec, qkv, None, context, saved, self.d_context.get()?, d_qkv)?;
        let d_qkv = self.d_qkv.get()?;
        let d_q = B::slice(d_qkv, spec.q_offset..spec.k_offset);
        let d_k = B::slice(d_qkv, spec.k_offset..spec.v_offset);
        let d_v = B::slice(d_qkv, spec.v_offset..spec.qkv_len());
        // Q = q_proj(query), K = k_proj(tokens), V = v_proj(tokens)
        let d_query = self.d_query.ensure(backend, n * c)?;
        self.q_proj.backward(backend, params, self.query.get()?, d_q, Some(d_query))?;
        let d_tokens = self.d_tokens.ensure(backend, n * seq * c)?;
        self.k_proj.backward(backend, params, self.tokens.get()?, d_k, Some(d_tokens))?;
        let d_tokens_v = self.d_tokens_v.ensure(backend, n * seq * c)?;
        self.v_proj.backward(backend, params, self.tokens.get()?, d_v, Some(d_tokens_v))?;
        backend.axpy(1.0, self.d_tokens_v.get()?, self.d_tokens.get_mut()?)?;
        // query = tokens[:, 0]: d_query joins token 0's gradient below (the positional embedding's row 0 and the mean)

        // tokens = [mean; spatial] + positional_embedding
        let [mut d_pos] = params.grads_mut([self.positional_embedding])?;
        backend.sum_rows(self.d_tokens.get()?, B::reborrow(&mut d_pos), n, seq * c, true)?;
        backend.sum_rows(self.d_query.get()?, B::slice_mut(d_pos, 0..c), n, c, true)?;
        let d_mean = self.d_mean.ensure(backend, n * c)?;
        backend.copy_rows(self.d_tokens.get()?, seq * c, d_mean, c, n, c)?;
        backend.axpy(1.0, self.d_query.get()?, self.d_mean.get_mut()?)?;
        let d_after_mean = B::slice(self.d_tokens.get()?, c..n * seq * c);
        backend.copy_rows(d_after_mean, seq * c, self.d_spatial.ensure(backend, n * hw * c)?, hw * c, n, hw * c)?;
        // mean = (1/HW)·1ᵀ·spatial[b]: d_spatial[b] += (1/HW)·1·d_mean[b]
        let spread =
            Gemm::new(hw, c, 1, false, false).alpha(1.0 / hw as f64).accumulate().batched(n).strides(0, c, hw * c);
        backend.gemm(&spread, self.ones.get()?, self.d_mean.get()?, self.d_spatial.get_mut()?)?;
        // spatial = xᵀ
        backend.transpose(self.d_spatial.get()?, dx, n, hw, c)
    }
}
