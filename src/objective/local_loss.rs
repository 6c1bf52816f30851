//! open_clip's local loss (`ClipLoss(local_loss=True)`) for one rank, given the gathered embeddings of all ranks:
//! `L_r = ½[CE(I_local·T_allᵀ, offset + i) + CE(T_local·I_allᵀ, offset + i)]`, two one-directional terms of
//! [`Backend::clip_loss_forward`] (`ClipLoss::one_way` with weight ½ each), never the global N×N matrix.
//!
//! With the gather carrying gradient (open_clip's `gather_with_grad`), the backward also returns `d_image_all` and
//! `d_text_all` `[N, dim]`: the gradients of the gathered copies, which the all-gather's backward reduces (sums) back
//! to their owners. Each rank's gradient of its own rows is then its local gradient plus its slice of the summed
//! all-gradients; averaged over the R ranks (DDP), and with equal rank sizes, that is exactly the gradient of the
//! global symmetric loss, whose value is the mean of the ranks' losses (tests/clip_loss.rs checks both). Without
//! gradient through the gather (clip-rocket), the gathered keys get none: `dtext = None` in the primitive, whose
//! GEMM is then skipped.
//!
//! Built on the `Backend` trait only. Conventions: embedding gradients OVERWRITTEN, `dlog_scale` ACCUMULATED.

use crate::backend::{Backend, ClipLoss, Elem, Mut, Ref};
use crate::error::{Error, Result};
use crate::nn::Slot;

/// The shape of one rank's local loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalLossSpec {
    /// This rank's pairs.
    pub local: usize,
    /// All ranks' pairs (the gathered rows).
    pub global: usize,
    /// This rank's first row in the gathered order (rank · local with equal ranks).
    pub offset: usize,
    pub dim: usize,
    pub label_smoothing: f64,
    /// Whether the gather carries gradient (open_clip's `gather_with_grad`); false: the gathered keys are constants.
    pub gather_grad: bool,
}

impl LocalLossSpec {
    /// `½·mean_i CE(x_local,i · y_allᵀ, offset + i)`: the primitive's spec for either direction.
    pub fn term(&self) -> ClipLoss {
        ClipLoss::one_way(self.local, self.global, self.offset, self.dim)
            .with_label_smoothing(self.label_smoothing)
            .with_weights(0.5, 0.0)
    }
}

/// The gradients of the gathered copies (only with `gather_grad`).
pub struct GatheredGrads<'a, B: Backend> {
    pub d_image_all: Mut<'a, B, B::Act>,
    pub d_text_all: Mut<'a, B, B::Act>,
}

/// One rank's local loss and its saved state.
pub struct LocalLoss<B: Backend> {
    pub spec: LocalLossSpec,
    /// Saved state of the image → text term and of the text → image term.
    saved: [Slot<B, B::Master>; 2],
    loss: Slot<B, B::Master>,
    forwarded: bool,
}

impl<B: Backend> LocalLoss<B> {
    pub fn new(spec: LocalLossSpec) -> Self {
        LocalLoss { spec, saved: [Slot::default(), Slot::default()], loss: Slot::default(), forwarded: false }
    }

    /// `L_r` for `image_local`, `text_local [local, dim]`, the gathered `image_all`, `text_all [global, dim]` and
    /// the log scale `t` (`[1]`).
    pub fn forward<'a>(
        &mut self,
        backend: &B,
        image_local: Ref<'a, B, B::Act>,
        text_local: Ref<'a, B, B::Act>,
        image_all: Ref<'a, B, B::Act>,
        text_all: Ref<'a, B, B::Act>,
        log_scale: Ref<'_, B, B::Master>,
    ) -> Result<f64> {
        let spec = self.spec.term();
        spec.validate("LocalLoss::forward")?;
        let saved_len = backend.clip_loss_saved_len(&spec);
        let mut total = 0.0;
        for (k, (x, y)) in [(image_local, text_all), (text_local, image_all)].into_iter().enumerate() {
            let saved = self.saved[k].ensure(backend, saved_len)?;
            backend.clip_loss_forward(&spec, x, y, log_scale, self.loss.ensure(backend, 1)?, saved)?;
            total += backend.download(self.loss.get()?)?[0].to_real();
        }
        self.forwarded = true;
        Ok(total)
    }

    /// Gradients of `dloss·L_r`: `d_image_local`, `d_text_local` OVERWRITTEN; with `gather_grad`, `gathered` (must
    /// then be given) OVERWRITTEN with the gradients of the gathered copies; `dlog_scale` ACCUMULATED. The inputs
    /// must be those of the forward pass.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        backend: &B,
        image_local: Ref<'_, B, B::Act>,
        text_local: Ref<'_, B, B::Act>,
        image_all: Ref<'_, B, B::Act>,
        text_all: Ref<'_, B, B::Act>,
        log_scale: Ref<'_, B, B::Master>,
        dloss: f64,
        d_image_local: Mut<'_, B, B::Act>,
        d_text_local: Mut<'_, B, B::Act>,
        gathered: Option<GatheredGrads<'_, B>>,
        mut dlog_scale: Mut<'_, B, B::Master>,
    ) -> Result<()> {
        const OP: &str = "LocalLoss::backward";
        if !self.forwarded {
            return Err(Error::Invalid { op: OP, msg: "backward before forward".into() });
        }
        if gathered.is_some() != self.spec.gather_grad {
            return Err(Error::Invalid {
                op: OP,
                msg: format!(
                    "gather_grad is {} but the gathered gradients were {}: pass them exactly when the gather carries \
                     gradient",
                    self.spec.gather_grad,
                    if gathered.is_some() { "given" } else { "not given" }
                ),
            });
        }
        let spec = self.spec.term();
        let (d_text_all, d_image_all) = match gathered {
            Some(g) => (Some(g.d_text_all), Some(g.d_image_all)),
            None => (None, None),
        };
        let saved = self.saved[0].get()?;
        backend.clip_loss_backward(
            &spec,
            image_local,
            text_all,
            log_scale,
            saved,
            dloss,
            d_image_local,
            d_text_all,
            B::reborrow(&mut dlog_scale),
        )?;
        let saved = self.saved[1].get()?;
        backend.clip_loss_backward(
            &spec,
            text_local,
            image_all,
            log_scale,
            saved,
            dloss,
            d_text_local,
            d_image_all,
            dlog_scale,
        )
    }
}
