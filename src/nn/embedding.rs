//! Token embedding: a `[vocab, width]` table indexed by i32 ids.

use crate::backend::{Backend, Ref};
use crate::error::Result;
use crate::nn::Slot;
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

pub struct Embedding<B: Backend> {
    pub weight: ParamId,
    pub vocab: usize,
    pub width: usize,
    out: Slot<B, B::Act>,
}

impl<B: Backend> Embedding<B> {
    /// Declares `{name}.weight [vocab, width]`.
    pub fn new(pb: &mut ParamBuilder, name: &str, vocab: usize, width: usize, init: Init) -> Result<Self> {
        let weight = pb.param(&format!("{name}.weight"), &[vocab, width], init)?;
        Ok(Embedding { weight, vocab, width, out: Slot::default() })
    }

    /// `out [ids.len(), width]`.
    pub fn forward(&mut self, backend: &B, params: &ParamStore<B>, ids: Ref<'_, B, i32>) -> Result<()> {
        let out = self.out.ensure(backend, B::len(ids) * self.width)?;
        backend.embedding_forward(ids, params.weight(self.weight), out, self.vocab, self.width)
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out.get()
    }

    /// Scatter-adds `dy` into the table's gradient.
    pub fn backward(
        &self,
        backend: &B,
        params: &mut ParamStore<B>,
        ids: Ref<'_, B, i32>,
        dy: Ref<'_, B, B::Act>,
    ) -> Result<()> {
        let [dtable] = params.grads_mut([self.weight])?;
        backend.embedding_backward(ids, dy, dtable, self.vocab, self.width)
    }
}
