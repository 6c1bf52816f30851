//! The pre-LN Transformer shared by the ViT and the text tower (open_clip's `Transformer` of
//! `ResidualAttentionBlock`s): `x += attn(ln_1(x)); x += mlp(ln_2(x))`, names `resblocks.{i}.{ln_1,attn,ln_2,mlp}`.
//!
//! Both towers read one token per sequence of the output (the class token, the EOT token), so they run it in pooled
//! mode ([`Transformer::forward_pooled`]): the last block computes keys and values for every token but everything
//! else only for the pooled one — the same numbers, about a fifth less work for four layers.

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
    /// `(batch, seq)` of the last [`ResidualAttentionBlock::forward_pooled`].
    pooled: Option<(usize, usize)>,
    /// `x + attn(ln_1(x))`, the input of the second half.
    mid: Slot<B, B::Act>,
    /// The block's output, `mid + mlp(ln_2(mid))`.
    out: Slot<B, B::Act>,
    d_mid: Slot<B, B::Act>,
    d_ln: Slot<B, B::Act>,
    /// Pooled mode ([`ResidualAttentionBlock::forward_pooled`]): the pooled rows of x and of ln_1(x) `[batch, width]`,
    /// the gradient of ln_1(x) `[rows, width]`, and scratch for scattering pooled-row gradients back.
    x_pooled: Slot<B, B::Act>,
    ln_1_pooled: Slot<B, B::Act>,
    d_ln_1: Slot<B, B::Act>,
    scatter: Slot<B, B::Act>,
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
            pooled: None,
            mid: Slot::default(),
            out: Slot::default(),
            d_mid: Slot::default(),
            d_ln: Slot::default(),
            x_pooled: Slot::default(),
            ln_1_pooled: Slot::default(),
            d_ln_1: Slot::default(),
            scatter: Slot::default(),
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

    /// The block for the pooled rows only (`index [batch]`, one row per sequence): `out [batch, width]` equals the
    /// pooled rows of [`ResidualAttentionBlock::forward`]'s output. Every row still gives its key and value; the
    /// queries, the output projection, the residuals, ln_2 and the MLP run on the pooled rows alone. `key_padding`
    /// must hide the keys the pooled queries may not see (the causal rule included).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_pooled(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        batch: usize,
        seq: usize,
        index: Ref<'_, B, i32>,
        key_padding: Option<Ref<'_, B, u8>>,
    ) -> Result<()> {
        let (rows, w) = (batch * seq, self.width);
        self.ln_1.forward(backend, params, x, rows)?;
        backend.gather_tokens(x, index, self.x_pooled.ensure(backend, batch * w)?, batch, seq, w)?;
        let ln_1_pooled = self.ln_1_pooled.ensure(backend, batch * w)?;
        backend.gather_tokens(self.ln_1.out()?, index, ln_1_pooled, batch, seq, w)?;
        let (ln_1, ln_1_pooled) = (self.ln_1.out()?, self.ln_1_pooled.get()?);
        self.attn.forward_pooled(backend, params, ln_1, ln_1_pooled, batch, seq, key_padding)?;
        backend.add(self.x_pooled.get()?, self.attn.out()?, self.mid.ensure(backend, batch * w)?)?;
        self.ln_2.forward(backend, params, self.mid.get()?, batch)?;
        self.mlp.forward(backend, params, self.ln_2.out()?, batch)?;
        backend.add(self.mid.get()?, self.mlp.out()?, self.out.ensure(backend, batch * w)?)?;
        (self.rows, self.pooled) = (rows, Some((batch, seq)));
        Ok(())
    }

    /// Backward of [`ResidualAttentionBlock::forward_pooled`] given `d_out [batch, width]`: writes `dx [rows, width]`
    /// and accumulates every parameter gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_pooled(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        d_out: Ref<'_, B, B::Act>,
        index: Ref<'_, B, i32>,
        key_padding: Option<Ref<'_, B, u8>>,
        mut dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let (rows, w) = (self.rows, self.width);
        let (batch, seq) = self.pooled.ok_or(Error::Invalid {
            op: "ResidualAttentionBlock",
            msg: "pooled backward before pooled forward".into(),
        })?;
        // Second half, pooled rows only: out = mid + mlp(ln_2(mid)).
        self.mlp.backward(backend, params, self.ln_2.out()?, d_out, self.d_ln.ensure(backend, batch * w)?)?;
        let d_mid = self.d_mid.ensure(backend, batch * w)?;
        self.ln_2.backward(backend, params, self.mid.get()?, self.d_ln.get()?, d_mid)?;
        backend.axpy(1.0, d_out, self.d_mid.get_mut()?)?;
        // Attention: keys and values from every row of ln_1(x), queries from the pooled ones.
        let (ln_1, ln_1_pooled, d_mid) = (self.ln_1.out()?, self.ln_1_pooled.get()?, self.d_mid.get()?);
        let (d_ln_1, d_ln_1_pooled) = (self.d_ln_1.ensure(backend, rows * w)?, self.d_ln.get_mut()?);
        self.attn.backward_pooled(backend, params, ln_1, ln_1_pooled, d_mid, key_padding, d_ln_1, d_ln_1_pooled)?;
        let scatter = self.scatter.ensure(backend, rows * w)?;
        backend.gather_tokens_backward(self.d_ln.get()?, index, scatter, batch, seq, w)?;
        backend.axpy(1.0, self.scatter.get()?, self.d_ln_1.get_mut()?)?;
        // First half: mid = x + attn(ln_1(x)) on the pooled rows, whose residual gradient is scattered back.
        self.ln_1.backward(backend, params, x, self.d_ln_1.get()?, B::reborrow(&mut dx))?;
        backend.gather_tokens_backward(self.d_mid.get()?, index, self.scatter.get_mut()?, batch, seq, w)?;
        backend.axpy(1.0, self.scatter.get()?, dx)
    }
}

/// `layers` residual attention blocks, declared as `resblocks.{i}.…` under the caller's scope.
pub struct Transformer<B: Backend> {
    pub blocks: Vec<ResidualAttentionBlock<B>>,
    pub width: usize,
    /// Gradient between two blocks, ping-ponged (block i writes its input gradient where block i−1 reads it).
    d_between: [Slot<B, B::Act>; 2],
    /// Pooled mode ([`Transformer::forward_pooled`]): the pooled row of each sequence, and the key mask that keeps a
    /// causal Transformer's pooled query from seeing past its own position.
    pool_index: Slot<B, i32>,
    pool_mask: Slot<B, u8>,
    causal: bool,
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
        Ok(Transformer {
            blocks,
            width,
            d_between: [Slot::default(), Slot::default()],
            pool_index: Slot::default(),
            pool_mask: Slot::default(),
            causal,
        })
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
        Self::forward_blocks(&mut self.blocks, backend, params, x, batch, seq, key_padding)
    }

    /// The Transformer when only one token per sequence is read afterwards (the class token of a ViT, the EOT token
    /// of the text tower): the blocks before the last run in full, the last one only for the pooled rows
    /// `index [batch]` (host values), so that [`Transformer::out`] then holds `[batch, width]`, the rows at `index`
    /// of the full output. Exact, not an approximation: nothing computed for the other rows of the last block is read.
    pub fn forward_pooled(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        batch: usize,
        seq: usize,
        index: &[i32],
    ) -> Result<()> {
        crate::error::check_len("Transformer::forward_pooled", "index", index.len(), batch)?;
        backend.write(index, self.pool_index.ensure(backend, batch)?)?;
        if self.causal {
            // The pooled query at position p sees the keys 0..=p.
            let mask: Vec<u8> =
                index.iter().flat_map(|&p| (0..seq).map(move |j| u8::from(j as i64 > p as i64))).collect();
            backend.write(&mask, self.pool_mask.ensure(backend, batch * seq)?)?;
        }
        let mask = if self.causal { Some(self.pool_mask.get()?) } else { None };
        let layers = self.blocks.len();
        Self::forward_blocks(&mut self.blocks[..layers - 1], backend, params, x, batch, seq, None)?;
        let (last, first) = self.blocks.split_last_mut().expect("at least one block");
        let index = self.pool_index.get()?;
        match first.last() {
            None => last.forward_pooled(backend, params, x, batch, seq, index, mask),
            Some(before) => last.forward_pooled(backend, params, before.out()?, batch, seq, index, mask),
        }
    }

    /// Runs `blocks` in order, each on the previous one's output (the first on `x`).
    #[allow(clippy::too_many_arguments)]
    fn forward_blocks(
        blocks: &mut [ResidualAttentionBlock<B>],
        backend: &B,
        params: &ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        batch: usize,
        seq: usize,
        key_padding: Option<Ref<'_, B, u8>>,
    ) -> Result<()> {
        let Some(first) = blocks.first_mut() else { return Ok(()) };
        first.forward(backend, params, x, batch, seq, key_padding)?;
        for i in 1..blocks.len() {
            let (done, rest) = blocks.split_at_mut(i);
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
        let pooling = Pooling::None(key_padding);
        Self::backward_through(&mut self.blocks, &mut self.d_between, backend, params, x, d_out, pooling, dx)
    }

    /// Backward of [`Transformer::forward_pooled`] given `d_out [batch, width]` (the pooled rows' gradient).
    pub fn backward_pooled(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        d_out: Ref<'_, B, B::Act>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let index = self.pool_index.get()?;
        let mask = if self.causal { Some(self.pool_mask.get()?) } else { None };
        let pooling = Pooling::Last { index, mask };
        Self::backward_through(&mut self.blocks, &mut self.d_between, backend, params, x, d_out, pooling, dx)
    }

    /// Backward through `blocks` in reverse, ping-ponging the gradients between them through `d_between`.
    #[allow(clippy::too_many_arguments)]
    fn backward_through(
        blocks: &mut [ResidualAttentionBlock<B>],
        d_between: &mut [Slot<B, B::Act>; 2],
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        d_out: Ref<'_, B, B::Act>,
        pooling: Pooling<'_, B>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let layers = blocks.len();
        // Block i's backward, the last one in pooled mode when the forward was.
        let block_backward = |block: &mut ResidualAttentionBlock<B>,
                              params: &mut ParamStore<B>,
                              i: usize,
                              x: Ref<'_, B, B::Act>,
                              d: Ref<'_, B, B::Act>,
                              dx: Mut<'_, B, B::Act>| match pooling {
            Pooling::Last { index, mask } if i == layers - 1 => {
                block.backward_pooled(backend, params, x, d, index, mask, dx)
            }
            Pooling::Last { .. } => block.backward(backend, params, x, d, None, dx),
            Pooling::None(key_padding) => block.backward(backend, params, x, d, key_padding, dx),
        };
        if layers == 1 {
            return block_backward(&mut blocks[0], params, 0, x, d_out, dx);
        }
        let len = B::len(x);
        let [d_even, d_odd] = d_between;
        d_even.ensure(backend, len)?;
        d_odd.ensure(backend, len)?;
        // Block i (i ≥ 1) reads the gradient of its output from slot (i+1)%2 (d_out for the last block) and writes
        // its input gradient into slot i%2; block 0 then writes into dx.
        for i in (1..layers).rev() {
            let (before, rest) = blocks.split_at_mut(i);
            let (d_in, d_next) = if i % 2 == 0 { (&mut *d_even, &*d_odd) } else { (&mut *d_odd, &*d_even) };
            let (block, x_i) = (&mut rest[0], before[i - 1].out()?);
            if i == layers - 1 {
                block_backward(block, params, i, x_i, d_out, d_in.get_mut()?)?;
            } else {
                block_backward(block, params, i, x_i, d_next.get()?, d_in.get_mut()?)?;
            }
        }
        block_backward(&mut blocks[0], params, 0, x, d_odd.get()?, dx)
    }
}

/// How the last forward pass ran: every row (with an optional key mask), or the last block on pooled rows only.
#[derive(Clone, Copy)]
enum Pooling<'a, B: Backend> {
    None(Option<Ref<'a, B, u8>>),
    Last { index: Ref<'a, B, i32>, mask: Option<Ref<'a, B, u8>> },
}
