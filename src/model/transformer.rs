//! The pre-LN Transformer shared by the ViT and the text tower (open_clip's `Transformer` of
//! `ResidualAttentionBlock`s): `x += attn(ln_1(x)); x += mlp(ln_2(x))`, names `resblocks.{i}.{ln_1,attn,ln_2,mlp}`.

use crate::backend::{Activation, Backend, Mut, Ref};
use crate::error::{Error, Result};
use crate::nn::{AttentionInit, LayerNorm, Mlp, MultiHeadAttention, Slot};
use crate::params::{ParamBuilder, ParamStore};

/// How the blocks' weights are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TransformerInit {
    /// PyTorch's defaults (the ViT in open_clip).
    PyTorch,
    /// openai/CLIP `initialize_parameters` for the text tower (SPEC §1.5).
    Clip,
}

pub struct ResidualAttentionBlock<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: MultiHeadAttention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    width: usize,
    rows: usize,
    /// `x + attn(ln_1(x))`, the input of the second half.
    mid: Slot<B, B::Act>,
    /// The block's output, `mid + mlp(ln_2(mid))`.
    out: Slot<B, B::Act>,
    d_mid: Slot<B, B::Act>,
    d_ln: Slot<B, B::Act>,
}

impl<B: Backend> ResidualAttentionBlock<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pb: &mut ParamBuilder,
        width: usize,
        heads: usize,
        mlp_width: usize,
        act: Activation,
        causal: bool,
        init: TransformerInit,
        layers: usize,
    ) -> Result<Self> {
        let ln_1 = LayerNorm::new(pb, "ln_1", width)?;
        let w = width as f64;
        let proj_std = w.powf(-0.5) * ((2 * layers) as f64).powf(-0.5);
        let attn_init = match init {
            TransformerInit::PyTorch => None,
            TransformerInit::Clip => Some(AttentionInit { in_proj_std: w.powf(-0.5), out_proj_std: proj_std }),
        };
        let attn = MultiHeadAttention::new(pb, "attn", width, heads, causal, attn_init)?;
        let ln_2 = LayerNorm::new(pb, "ln_2", width)?;
        let mlp = match init {
            TransformerInit::PyTorch => Mlp::new(pb, "mlp", width, mlp_width, act)?,
            TransformerInit::Clip => Mlp::with_std(pb, "mlp", width, mlp_width, act, (2.0 * w).powf(-0.5), proj_std)?,
        };
        Ok(ResidualAttentionBlock {
            ln_1,
            attn,
            ln_2,
            mlp,
            width,
            rows: 0,
            mid: Slot::default(),
            out: Slot::default(),
            d_mid: Slot::default(),
            d_ln: Slot::default(),
        })
    }

    /// `x [batch·seq, width]` → `out`, same shape.
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
        self.ln_1.forward(backend, params, x, rows)?;
        self.attn.forward(backend, params, self.ln_1.out()?, batch, seq, key_padding)?;
        let mid = self.mid.ensure(backend, rows * self.width)?;
        backend.add(x, self.attn.out()?, mid)?;
        self.ln_2.forward(backend, params, self.mid.get()?, rows)?;
        self.mlp.forward(backend, params, self.ln_2.out()?, rows)?;
        let out = self.out.ensure(backend, rows * self.width)?;
        backend.add(self.mid.get()?, self.mlp.out()?, out)?;
        self.rows = rows;
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out.get()
    }

    /// Given the block's input `x` and `d_out`, writes `dx` and accumulates every parameter gradient.
    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        d_out: Ref<'_, B, B::Act>,
        key_padding: Option<Ref<'_, B, u8>>,
        mut dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let len = self.rows * self.width;
        // Second half: out = mid + mlp(ln_2(mid)).
        let d_ln = self.d_ln.ensure(backend, len)?;
        self.mlp.backward(backend, params, self.ln_2.out()?, d_out, d_ln)?;
        let d_mid = self.d_mid.ensure(backend, len)?;
        self.ln_2.backward(backend, params, self.mid.get()?, self.d_ln.get()?, d_mid)?;
        backend.axpy(1.0, d_out, self.d_mid.get_mut()?)?;
        // First half: mid = x + attn(ln_1(x)).
        let d_ln = self.d_ln.get_mut()?;
        self.attn.backward(backend, params, self.ln_1.out()?, self.d_mid.get()?, key_padding, d_ln)?;
        self.ln_1.backward(backend, params, x, self.d_ln.get()?, B::reborrow(&mut dx))?;
        backend.axpy(1.0, self.d_mid.get()?, dx)
    }
}

/// `layers` residual attention blocks, declared as `resblocks.{i}.…` under the caller's scope.
pub struct Transformer<B: Backend> {
    pub blocks: Vec<ResidualAttentionBlock<B>>,
    pub width: usize,
    /// Gradient between two blocks, ping-ponged (block i writes its input gradient where block i−1 reads it).
    d_between: [Slot<B, B::Act>; 2],
}

impl<B: Backend> Transformer<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pb: &mut ParamBuilder,
        width: usize,
        layers: usize,
        heads: usize,
        mlp_ratio: f64,
        act: Activation,
        causal: bool,
        init: TransformerInit,
    ) -> Result<Self> {
        if layers == 0 {
            return Err(Error::Invalid { op: "Transformer", msg: "needs at least one layer".into() });
        }
        let mlp_width = (width as f64 * mlp_ratio) as usize;
        let blocks = pb.scope("resblocks", |pb| {
            (0..layers)
                .map(|i| {
                    pb.scope(&i.to_string(), |pb| {
                        ResidualAttentionBlock::new(pb, width, heads, mlp_width, act, causal, init, layers)
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(Transformer { blocks, width, d_between: [Slot::default(), Slot::default()] })
    }

    pub fn forward(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        batch: usize,
        seq: usize,
        key_padding: Option<Ref<'_, B, u8>>,
    ) -> Result<()> {
        self.blocks[0].forward(backend, params, x, batch, seq, key_padding)?;
        for i in 1..self.blocks.len() {
            let (done, rest) = self.blocks.split_at_mut(i);
            rest[0].forward(backend, params, done[i - 1].out()?, batch, seq, key_padding)?;
        }
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.blocks.last().expect("at least one block").out()
    }

    /// Backward through every block in reverse; `x` is the first block's input, `dx` receives its gradient.
    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        d_out: Ref<'_, B, B::Act>,
        key_padding: Option<Ref<'_, B, u8>>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let layers = self.blocks.len();
        if layers == 1 {
            return self.blocks[0].backward(backend, params, x, d_out, key_padding, dx);
        }
        let len = B::len(x);
        let [d_even, d_odd] = &mut self.d_between;
        d_even.ensure(backend, len)?;
        d_odd.ensure(backend, len)?;
        // Block i (i ≥ 1) reads the gradient of its output from slot (i+1)%2 (d_out for the last block) and writes
        // its input gradient into slot i%2; block 0 then writes into dx.
        for i in (1..layers).rev() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let (d_in, d_next) = if i % 2 == 0 { (&mut *d_even, &*d_odd) } else { (&mut *d_odd, &*d_even) };
            let (block, x_i) = (&mut rest[0], before[i - 1].out()?);
            if i == layers - 1 {
                block.backward(backend, params, x_i, d_out, key_padding, d_in.get_mut()?)?;
            } else {
                block.backward(backend, params, x_i, d_next.get()?, key_padding, d_in.get_mut()?)?;
            }
        }
        self.blocks[0].backward(backend, params, x, d_odd.get()?, key_padding, dx)
    }
}
