//! BatchNorm over `[n, channels, spatial]` — `nn.BatchNorm2d` (spatial = H·W) and `nn.BatchNorm1d` (spatial = 1) —
//! with running statistics in the store's non-trainable buffer and PyTorch's names (`weight`, `bias`,
//! `running_mean`, `running_var`, `num_batches_tracked`).

use crate::backend::{Backend, BatchNorm, Mut, Ref};
use crate::error::{Error, Result};
use crate::nn::Slot;
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

pub struct BatchNorm2d<B: Backend> {
    /// `None` for `affine=False` (SiamLIP's last projector norm).
    pub weight: Option<ParamId>,
    pub bias: Option<ParamId>,
    pub running_mean: ParamId,
    pub running_var: ParamId,
    /// Training-mode forwards so far (an int64 in the state dict; kept on the host, so counting never syncs).
    pub num_batches_tracked: u64,
    pub channels: usize,
    pub eps: f64,
    pub momentum: f64,
    /// Training mode normalises with batch statistics and updates the running ones; evaluation uses the running ones.
    pub training: bool,
    spec: Option<BatchNorm>,
    out: Slot<B, B::Act>,
    save_mean: Slot<B, B::Master>,
    save_rstd: Slot<B, B::Master>,
}

impl<B: Backend> BatchNorm2d<B> {
    /// Declares `{name}.{weight,bias}` (ones, zeros; none when not `affine`) and the running statistics.
    pub fn new(pb: &mut ParamBuilder, name: &str, channels: usize, affine: bool) -> Result<Self> {
        Self::with_weight_init(pb, name, channels, affine, Init::Ones)
    }

    /// As [`BatchNorm2d::new`] with another initial weight (CLIP zeroes each bottleneck's last BatchNorm weight).
    pub fn with_weight_init(
        pb: &mut ParamBuilder,
        name: &str,
        channels: usize,
        affine: bool,
        weight_init: Init,
    ) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                Some(pb.param(&format!("{name}.weight"), &[channels], weight_init)?),
                Some(pb.param(&format!("{name}.bias"), &[channels], Init::Zeros)?),
            )
        } else {
            (None, None)
        };
        Ok(BatchNorm2d {
            weight,
            bias,
            running_mean: pb.buffer(&format!("{name}.running_mean"), &[channels], Init::Zeros)?,
            running_var: pb.buffer(&format!("{name}.running_var"), &[channels], Init::Ones)?,
            num_batches_tracked: 0,
            channels,
            eps: 1e-5,
            momentum: 0.1,
            training: true,
            spec: None,
            out: Slot::default(),
            save_mean: Slot::default(),
            save_rstd: Slot::default(),
        })
    }

    /// `x [n, channels, spatial]` → `out`, same shape.
    pub fn forward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        n: usize,
        spatial: usize,
    ) -> Result<()> {
        let spec = BatchNorm { n, channels: self.channels, spatial, eps: self.eps, momentum: self.momentum };
        let y = self.out.ensure(backend, spec.len())?;
        if self.training {
            let save_mean = self.save_mean.ensure(backend, self.channels)?;
            let save_rstd = self.save_rstd.ensure(backend, self.channels)?;
            let (weights, [running_mean, running_var]) =
                params.weights_and_buffers([self.running_mean, self.running_var])?;
            let gamma = self.weight.map(|id| B::slice(weights, id.range()));
            let beta = self.bias.map(|id| B::slice(weights, id.range()));
            backend.batchnorm_forward_train(
                &spec,
                x,
                gamma,
                beta,
                y,
                save_mean,
                save_rstd,
                running_mean,
                running_var,
            )?;
            self.num_batches_tracked += 1;
        } else {
            let gamma = self.weight.map(|id| params.weight(id));
            let beta = self.bias.map(|id| params.weight(id));
            let buffers = B::view(&params.buffers);
            let running_mean = B::slice(buffers, self.running_mean.range());
            let running_var = B::slice(buffers, self.running_var.range());
            backend.batchnorm_forward_eval(&spec, x, gamma, beta, running_mean, running_var, y)?;
        }
        self.spec = Some(spec);
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.out.get()
    }

    /// Backward of the training-mode forward.
    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        x: Ref<'_, B, B::Act>,
        dy: Ref<'_, B, B::Act>,
        dx: Mut<'_, B, B::Act>,
    ) -> Result<()> {
        let spec = self.spec.ok_or(Error::Invalid { op: "BatchNorm2d", msg: "backward before forward".into() })?;
        if !self.training {
            return Err(Error::Invalid { op: "BatchNorm2d", msg: "backward of an evaluation-mode forward".into() });
        }
        let (save_mean, save_rstd) = (self.save_mean.get()?, self.save_rstd.get()?);
        match (self.weight, self.bias) {
            (Some(w), Some(b)) => {
                let (weights, [dgamma, dbeta]) = params.weights_and_grads([w, b])?;
                let gamma = B::slice(weights, w.range());
                backend.batchnorm_backward(
                    &spec,
                    dy,
                    x,
                    Some(gamma),
                    save_mean,
                    save_rstd,
                    dx,
                    Some(dgamma),
                    Some(dbeta),
                )
            }
            _ => backend.batchnorm_backward(&spec, dy, x, None, save_mean, save_rstd, dx, None, None),
        }
    }
}
