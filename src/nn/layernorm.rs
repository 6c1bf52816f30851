//! LayerNorm over the last axis (PyTorch `nn.LayerNorm`, eps 1e-5), statistics kept in the master dtype.

use crate::backend::{Backend, Mut, Ref};
use crate::error::Result;
use crate::nn::Slot;
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

pub struct LayerNorm<B: Backend> {
    pub weight: ParamId,
    pub bias: ParamId,
    pub width: usize,
    pub eps: f64,
    rows: usize,
    out: Slot<B, B::Act>,
    mean: Slot<B, B::Master>,
    rstd: Slot<B, B::Master>,
}

impl<B: Backend> LayerNorm<B> {
    /// Declares `{name}.weight` (ones) and `{name}.bias` (zeros).
    pub fn new(pb: &mut ParamBuilder, name: &str, width: usize) -> Result<Self> {
        let weight = pb.param(&format!("{name}.weight"), &[width], Init::Ones)?;
        let bias = pb.param(&format!("{name}.bias"), &[width], Init::Zeros)?;
        Ok(LayerNorm {
            weight,
            bias,
            width,
            eps: 1e-5,
            rows: 0,
            out: Slot::default(),
            mean: Slot::default(),
            rstd: Slot::default(),
        })
    }

    pub fn forward(&mut self, backend: &B, params: &ParamStore<B>, x: Ref<'_, B, B::Act>, rows: usize) -> Result<()> {
        let y = self.out.ensure(backend, rows * self.width)?;
        let mean = self.mean.ensure(backend, rows)?;
        let rstd = self.rstd.ensure(backend, rows)?;
        let (gamma, beta) = (params.weight(self.weight), params.weight(self.bias));
        backend.layernorm_forward(x, gamma, beta, y, mean, rstd, rows, self.width, self.eps)?;
        self.rows = rows;
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out.get()
    }

    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        dy: Ref<'_, B, B::Act>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let (weights, [dgamma, dbeta]) = params.weights_and_grads([self.weight, self.bias])?;
        let gamma = B::slice(weights, self.weight.range());
        let (mean, rstd) = (self.mean.get()?, self.rstd.get()?);
        backend.layernorm_backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, self.rows, self.width)
    }
}
