//! The Transformer MLP: `c_fc` (width → hidden) → nonlinearity → `c_proj` (hidden → width), open_clip's names.

use crate::backend::{Activation, Backend, Mut, Ref};
use crate::error::Result;
use crate::nn::{ActivationLayer, Linear, Slot};
use crate::params::{Init, ParamBuilder, ParamStore};

pub struct Mlp<B: Backend> {
    pub c_fc: Linear<B>,
    pub act: ActivationLayer<B>,
    pub c_proj: Linear<B>,
    /// Gradients of the hidden activations, after and before the nonlinearity.
    d_act_out: Slot<B, B::Act>,
    d_fc_out: Slot<B, B::Act>,
}

impl<B: Backend> Mlp<B> {
    /// Declares `{name}.c_fc.{weight,bias}` and `{name}.c_proj.{weight,bias}` with PyTorch's Linear initialisation.
    pub fn new(pb: &mut ParamBuilder, name: &str, width: usize, hidden: usize, kind: Activation) -> Result<Self> {
        let c_fc = Linear::new(pb, &format!("{name}.c_fc"), width, hidden, true)?;
        let c_proj = Linear::new(pb, &format!("{name}.c_proj"), hidden, width, true)?;
        Ok(Self::from_parts(c_fc, kind, c_proj))
    }

    /// Declares the tensors with normal weight initialisations of the given standard deviations (CLIP's text tower);
    /// the biases keep PyTorch's Linear default, U(±1/√in).
    pub fn with_std(
        pb: &mut ParamBuilder,
        name: &str,
        width: usize,
        hidden: usize,
        kind: Activation,
        fc_std: f64,
        proj_std: f64,
    ) -> Result<Self> {
        let (fc_w, fc_b) = (format!("{name}.c_fc.weight"), format!("{name}.c_fc.bias"));
        let (pr_w, pr_b) = (format!("{name}.c_proj.weight"), format!("{name}.c_proj.bias"));
        let (fc_bound, proj_bound) = (1.0 / (width as f64).sqrt(), 1.0 / (hidden as f64).sqrt());
        let c_fc =
            Linear::with_names(pb, &fc_w, Some(&fc_b), width, hidden, Init::Normal(fc_std), Init::Uniform(fc_bound))?;
        let c_proj = Linear::with_names(
            pb,
            &pr_w,
            Some(&pr_b),
            hidden,
            width,
            Init::Normal(proj_std),
            Init::Uniform(proj_bound),
        )?;
        Ok(Self::from_parts(c_fc, kind, c_proj))
    }

    fn from_parts(c_fc: Linear<B>, kind: Activation, c_proj: Linear<B>) -> Self {
        Mlp { c_fc, act: ActivationLayer::new(kind), c_proj, d_act_out: Slot::default(), d_fc_out: Slot::default() }
    }

    pub fn forward(&mut self, backend: &B, params: &ParamStore<B>, x: Ref<'_, B, B::Act>, rows: usize) -> Result<()> {
        self.c_fc.forward(backend, params, x, rows)?;
        self.act.forward(backend, self.c_fc.out()?)?;
        self.c_proj.forward(backend, params, self.act.out()?, rows)
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.c_proj.out()
    }

    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        dy: Ref<'_, B, B::Act>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let hidden_len = B::len(self.c_fc.out()?);
        let d_act_out = self.d_act_out.ensure(backend, hidden_len)?;
        self.c_proj.backward(backend, params, self.act.out()?, dy, Some(d_act_out))?;
        let d_fc_out = self.d_fc_out.ensure(backend, hidden_len)?;
        self.act.backward(backend, self.c_fc.out()?, self.d_act_out.get()?, d_fc_out)?;
        self.c_fc.backward(backend, params, x, self.d_fc_out.get()?, Some(dx))
    }
}
