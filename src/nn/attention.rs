//! Multi-head self-attention with a fused Q/K/V projection, parameter names as PyTorch's `nn.MultiheadAttention`
//! (`in_proj_weight [3·width, width]`, `in_proj_bias`, `out_proj.{weight,bias}`), which open_clip uses.

use crate::backend::{Attention, Backend, Mut, Ref};
use crate::error::{Error, Result};
use crate::nn::{Linear, Slot};
use crate::params::{Init, ParamBuilder, ParamStore};

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
}
