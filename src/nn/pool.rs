//! Pooling: average pooling over NCHW (CLIP's anti-aliased downsampling) and token gathering (class / EOT token).

use crate::backend::{Backend, Mut, Pool2d, Ref};
use crate::error::{Error, Result};
use crate::nn::Slot;

pub struct AvgPool2d<B: Backend> {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    spec: Option<Pool2d>,
    out: Slot<B, B::Act>,
}

impl<B: Backend> AvgPool2d<B> {
    pub fn new(kernel: usize, stride: usize, pad: usize) -> Self {
        AvgPool2d { kernel, stride, pad, spec: None, out: Slot::default() }
    }

    /// `x [n, c, h, w]` → `out [n, c, out_h, out_w]`.
    pub fn forward(
        &mut self,
        backend: &B,
        x: Ref<'_, B, B::Act>,
        n: usize,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        let spec = Pool2d { n, c, h, w, kernel: self.kernel, stride: self.stride, pad: self.pad };
        let y = self.out.ensure(backend, spec.output_len())?;
        backend.avgpool2d_forward(&spec, x, y)?;
        self.spec = Some(spec);
        Ok(())
    }

    pub fn spec(&self) -> Result<Pool2d> {
        self.spec.ok_or(Error::Invalid { op: "AvgPool2d", msg: "shape asked before the forward pass".into() })
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out.get()
    }

    pub fn backward(&self, backend: &B, dy: Ref<'_, B, B::Act>, dx: Mut<'_, B, B::Act>) -> Result<()> {
        backend.avgpool2d_backward(&self.spec()?, dy, dx)
    }
}

/// Picks one token per sequence: `x [batch, seq, dim]` → `out [batch, dim]` at `index [batch]`.
pub struct GatherTokens<B: Backend> {
    shape: Option<(usize, usize, usize)>,
    out: Slot<B, B::Act>,
}

impl<B: Backend> Default for GatherTokens<B> {
    fn default() -> Self {
        GatherTokens { shape: None, out: Slot::default() }
    }
}

impl<B: Backend> GatherTokens<B> {
    pub fn forward(
        &mut self,
        backend: &B,
        x: Ref<'_, B, B::Act>,
        index: Ref<'_, B, i32>,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        let y = self.out.ensure(backend, batch * dim)?;
        backend.gather_tokens(x, index, y, batch, seq, dim)?;
        self.shape = Some((batch, seq, dim));
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out.get()
    }

    /// `dx [batch, seq, dim]`: zero except at the gathered tokens.
    pub fn backward(
        &self,
        backend: &B,
        index: Ref<'_, B, i32>,
        dy: Ref<'_, B, B::Act>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let (batch, seq, dim) =
            self.shape.ok_or(Error::Invalid { op: "GatherTokens", msg: "backward before forward".into() })?;
        backend.gather_tokens_backward(dy, index, dx, batch, seq, dim)
    }
}
