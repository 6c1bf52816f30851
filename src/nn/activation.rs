//! An element-wise nonlinearity as a layer (it owns its output; the backward needs the input again).

use crate::backend::{Activation, Backend, Mut, Ref};
use crate::error::Result;
use crate::nn::Slot;

pub struct ActivationLayer<B: Backend> {
    pub kind: Activation,
    out: Slot<B, B::Act>,
}

impl<B: Backend> ActivationLayer<B> {
    pub fn new(kind: Activation) -> Self {
        ActivationLayer { kind, out: Slot::default() }
    }

    pub fn forward(&mut self, backend: &B, x: Ref<'_, B, B::Act>) -> Result<()> {
        let y = self.out.ensure(backend, B::len(x))?;
        backend.activation_forward(self.kind, x, y)
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out.get()
    }

    pub fn backward(
        &self,
        backend: &B,
        x: Ref<'_, B, B::Act>,
        dy: Ref<'_, B, B::Act>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        backend.activation_backward(self.kind, x, dy, dx)
    }
}
