//! `y = x·P` with `P [in, out]` stored as written (open_clip's `visual.proj` and `text_projection`, which are plain
//! matrices, not `nn.Linear` weights), no bias.

use crate::backend::{Backend, Gemm, Mut, Ref};
use crate::error::Result;
use crate::nn::Slot;
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

pub struct Projection<B: Backend> {
    pub weight: ParamId,
    pub in_features: usize,
    pub out_features: usize,
    rows: usize,
    out: Slot<B, B::Act>,
}

impl<B: Backend> Projection<B> {
    /// Declares `name [in, out]`.
    pub fn new(pb: &mut ParamBuilder, name: &str, in_features: usize, out_features: usize, init: Init) -> Result<Self> {
        let weight = pb.param(name, &[in_features, out_features], init)?;
        Ok(Projection { weight, in_features, out_features, rows: 0, out: Slot::default() })
    }

    /// `out [rows, out] = x [rows, in] · P`.
    pub fn forward(&mut self, backend: &B, params: &ParamStore<B>, x: Ref<'_, B, B::Act>, rows: usize) -> Result<()> {
        let y = self.out.ensure(backend, rows * self.out_features)?;
        let spec = Gemm::new(rows, self.out_features, self.in_features, false, false);
        backend.gemm(&spec, x, params.weight(self.weight), y)?;
        self.rows = rows;
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out.get()
    }

    /// `dx = dy·Pᵀ` (when asked), `dP += xᵀ·dy`.
    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        dy: Ref<'_, B, B::Act>,
        dx: Option<Mut<'_, B, B::Act>>,
    ) -> Result<()> {
        let (rows, in_f, out_f) = (self.rows, self.in_features, self.out_features);
        if let Some(dx) = dx {
            backend.gemm(&Gemm::new(rows, in_f, out_f, false, true), dy, params.weight(self.weight), dx)?;
        }
        let [dp] = params.grads_mut([self.weight])?;
        backend.gemm_to_master(&Gemm::new(in_f, out_f, rows, true, false).accumulate(), x, dy, dp)
    }
}
