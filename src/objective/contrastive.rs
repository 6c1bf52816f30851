//! Contrastive terms built from the InfoNCE primitives: the one-way (image → text) InfoNCE of DeCLIP's NNS, and the
//! multi-view compositions of DeCLIP (MVS, NNS) and of the CL2L recipe (SPEC §2, §3).
//!
//! Conventions (DESIGN): every `backward` OVERWRITES the gradients of its embedding inputs and ACCUMULATES the
//! gradient of each log scale (a parameter, shared with other terms). `backward` takes the same inputs as the
//! preceding `forward` (the terms keep only O(n) state, like [`Backend::clip_loss_forward`]).
//!
//! Inputs of the compositions are the towers' UN-normalised embeddings: [`Backend::clip_loss_forward`] normalises
//! inside (and back-propagates through the normalisation), and [`Nns`] normalises the image views itself, so a
//! training step hands every term the same tower outputs. (Normalising twice changes nothing, so already unit rows
//! are fine too.)
//!
//! The logit scale: `s = exp(t)`, and with `clamp_scale` `s = min(exp(t), 100)` in the forward pass (DeCLIP,
//! `logit_scale.exp().clamp(max=100)`); where the clamp is active the scale gets no gradient (PyTorch's clamp
//! backward, which passes the gradient while `exp(t) ≤ 100`). The clamp needs the scalar `t` on the host: one
//! 1-element download per term and step.

use crate::backend::{Backend, ClipLoss, Elem, Mut, Ref};
use crate::error::{Error, Result};
use crate::nn::Slot;

/// DeCLIP's (and CLIP's) upper bound on the logit scale `exp(t)`.
pub const MAX_LOGIT_SCALE: f64 = 100.0;

/// The logit scale a forward pass used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    /// `ln s` as used (the parameter, or ln 100 when clamped).
    pub log: f64,
    /// `s = exp(log)`.
    pub value: f64,
    /// False when the clamp was active: the parameter then gets no gradient.
    pub passes_grad: bool,
}

impl Scale {
    /// Reads the log scale `t` (`[1]`, master dtype) and applies the clamp when `clamp`.
    pub fn read<B: Backend>(backend: &B, log_scale: Ref<'_, B, B::Master>, clamp: bool) -> Result<Scale> {
        let t = backend
            .download(log_scale)?
            .first()
            .map(|v| v.to_real())
            .ok_or_else(|| Error::Invalid { op: "Scale::read", msg: "empty log scale".into() })?;
        let max = MAX_LOGIT_SCALE.ln();
        Ok(if clamp && t > max {
            Scale { log: max, value: MAX_LOGIT_SCALE, passes_grad: false }
        } else {
            Scale { log: t, value: t.exp(), passes_grad: true }
        })
    }
}

fn check_len<B: Backend, T: Elem>(op: &'static str, arg: &'static str, x: Ref<'_, B, T>, want: usize) -> Result<()> {
    let got = B::len(x);
    if got != want {
        return Err(Error::Shape { op, arg, got, want });
    }
    Ok(())
}

/// One-way InfoNCE, image → text only: `L = mean_i CE(s·f̂_i·T̂ᵀ, i)` with targets `(1−ε)·onehot + ε/n`, for
/// `f [n, d]` and text targets `T [n, d]` (rows of T are the positives of the matching rows of f; NNS passes the
/// queue's nearest neighbours, detached). One [`Backend::clip_loss_forward`] with [`ClipLoss::one_way`]: on the GPU
/// the fused kernel, which never holds the n×n logits (the rows are normalised inside; unit rows stay as they are).
pub struct OneWayInfoNce<B: Backend> {
    pub label_smoothing: f64,
    pub clamp_scale: bool,
    n: usize,
    dim: usize,
    scale: Option<Scale>,
    saved: Slot<B, B::Master>,
    loss: Slot<B, B::Master>,
    /// The log scale as used (ln 100 while clamped), and where a clamped scale's gradient goes (discarded).
    used_log_scale: Slot<B, B::Master>,
    dscale_sink: Slot<B, B::Master>,
}

impl<B: Backend> OneWayInfoNce<B> {
    pub fn new(label_smoothing: f64, clamp_scale: bool) -> Self {
        OneWayInfoNce {
            label_smoothing,
            clamp_scale,
            n: 0,
            dim: 0,
            scale: None,
            saved: Slot::default(),
            loss: Slot::default(),
            used_log_scale: Slot::default(),
            dscale_sink: Slot::default(),
        }
    }

    /// The scale of the last forward pass.
    pub fn scale(&self) -> Option<Scale> {
        self.scale
    }

    fn spec(&self) -> ClipLoss {
        ClipLoss::one_way(self.n, self.n, 0, self.dim).with_label_smoothing(self.label_smoothing)
    }

    /// The mean loss over the `n` rows of `f [n, dim]` against `text [n, dim]`, log scale `t` (`[1]`).
    pub fn forward(
        &mut self,
        backend: &B,
        f: Ref<'_, B, B::Act>,
        text: Ref<'_, B, B::Act>,
        log_scale: Ref<'_, B, B::Master>,
        n: usize,
        dim: usize,
    ) -> Result<f64> {
        const OP: &str = "OneWayInfoNce::forward";
        check_len::<B, _>(OP, "f", f, n * dim)?;
        check_len::<B, _>(OP, "text", text, n * dim)?;
        if n == 0 {
            return Err(Error::Invalid { op: OP, msg: "empty batch".into() });
        }
        let scale = Scale::read(backend, log_scale, self.clamp_scale)?;
        backend.write(&[B::Master::from_real(scale.log)], self.used_log_scale.ensure(backend, 1)?)?;
        (self.n, self.dim, self.scale) = (n, dim, Some(scale));
        let spec = self.spec();
        let saved = self.saved.ensure(backend, backend.clip_loss_saved_len(&spec))?;
        let (loss, t) = (self.loss.ensure(backend, 1)?, self.used_log_scale.get()?);
        backend.clip_loss_forward(&spec, f, text, t, loss, saved)?;
        Ok(backend.download(self.loss.get()?)?[0].to_real())
    }

    /// Gradients of `dloss·L`: `df` and (unless `dtext` is `None`: detached targets) `dT`, both OVERWRITTEN;
    /// `dt` ACCUMULATED, skipped while the clamp is active.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        backend: &B,
        f: Ref<'_, B, B::Act>,
        text: Ref<'_, B, B::Act>,
        dloss: f64,
        df: Mut<'_, B, B::Act>,
        dtext: Option<Mut<'_, B, B::Act>>,
        dlog_scale: Mut<'_, B, B::Master>,
    ) -> Result<()> {
        let scale = self
            .scale
            .ok_or_else(|| Error::Invalid { op: "OneWayInfoNce::backward", msg: "backward before forward".into() })?;
        let spec = self.spec();
        let (t, saved) = (self.used_log_scale.get()?, self.saved.get()?);
        if scale.passes_grad {
            backend.clip_loss_backward(&spec, f, text, t, saved, dloss, df, dtext, dlog_scale)
        } else {
            let sink = self.dscale_sink.ensure(backend, 1)?;
            backend.clip_loss_backward(
                &spec,
                f,
                text,
                self.used_log_scale.get()?,
                self.saved.get()?,
                dloss,
                df,
                dtext,
                sink,
            )
        }
    }
}

/// One symmetric InfoNCE term of a sum: `weight·clip_loss(images[image], texts[text])`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairTerm {
    pub image: usize,
    pub text: usize,
    pub weight: f64,
}

/// A weighted sum of [`Backend::clip_loss_forward`] terms over pairs of several image and text views sharing one
/// log scale and one label smoothing: `L = Σ_k w_k·clip(images[i_k], texts[j_k])`, each on UN-normalised
/// `[n, dim]` embeddings (normalised inside the primitive). The building block of MVS and CL2L.
pub struct ClipPairs<B: Backend> {
    pub pairs: Vec<PairTerm>,
    pub label_smoothing: f64,
    pub clamp_scale: bool,
    n: usize,
    dim: usize,
    scale: Option<Scale>,
    saved: Vec<Slot<B, B::Master>>,
    loss: Slot<B, B::Master>,
    /// The log scale as used (ln 100 while clamped).
    used_log_scale: Slot<B, B::Master>,
    /// Where the clamped scale's gradient goes (discarded).
    dscale_sink: Slot<B, B::Master>,
    dimage: Slot<B, B::Act>,
    dtext: Slot<B, B::Act>,
}

impl<B: Backend> ClipPairs<B> {
    pub fn new(pairs: Vec<PairTerm>, label_smoothing: f64, clamp_scale: bool) -> Self {
        let saved = pairs.iter().map(|_| Slot::default()).collect();
        ClipPairs {
            pairs,
            label_smoothing,
            clamp_scale,
            n: 0,
            dim: 0,
            scale: None,
            saved,
            loss: Slot::default(),
            used_log_scale: Slot::default(),
            dscale_sink: Slot::default(),
            dimage: Slot::default(),
            dtext: Slot::default(),
        }
    }

    /// The scale of the last forward pass.
    pub fn scale(&self) -> Option<Scale> {
        self.scale
    }

    fn spec(&self) -> ClipLoss {
        ClipLoss::symmetric(self.n, self.dim).with_label_smoothing(self.label_smoothing)
    }

    fn check_views(&self, op: &'static str, images: usize, texts: usize) -> Result<()> {
        for p in &self.pairs {
            if p.image >= images || p.text >= texts {
                return Err(Error::Invalid {
                    op,
                    msg: format!("pair ({}, {}) with {images} image and {texts} text views", p.image, p.text),
                });
            }
        }
        Ok(())
    }

    /// The weighted sum for views `images[v] [n, dim]`, `texts[v] [n, dim]` and the log scale `t` (`[1]`).
    pub fn forward(
        &mut self,
        backend: &B,
        images: &[Ref<'_, B, B::Act>],
        texts: &[Ref<'_, B, B::Act>],
        log_scale: Ref<'_, B, B::Master>,
        n: usize,
        dim: usize,
    ) -> Result<f64> {
        const OP: &str = "ClipPairs::forward";
        self.check_views(OP, images.len(), texts.len())?;
        for &x in images {
            check_len::<B, _>(OP, "image", x, n * dim)?;
        }
        for &x in texts {
            check_len::<B, _>(OP, "text", x, n * dim)?;
        }
        let scale = Scale::read(backend, log_scale, self.clamp_scale)?;
        backend.write(&[B::Master::from_real(scale.log)], self.used_log_scale.ensure(backend, 1)?)?;
        (self.n, self.dim) = (n, dim);
        let spec = self.spec();
        let saved_len = backend.clip_loss_saved_len(&spec);
        let mut total = 0.0;
        for (p, saved) in self.pairs.iter().zip(&mut self.saved) {
            let loss = self.loss.ensure(backend, 1)?;
            let saved = saved.ensure(backend, saved_len)?;
            let t = self.used_log_scale.get()?;
            backend.clip_loss_forward(&spec, images[p.image], texts[p.text], t, loss, saved)?;
            total += p.weight * backend.download(self.loss.get()?)?[0].to_real();
        }
        self.scale = Some(scale);
        Ok(total)
    }

    /// Gradients of `dloss·L`: `dimages[v]`, `dtexts[v]` OVERWRITTEN (zero for a view no pair uses), `dt`
    /// ACCUMULATED (not while the clamp is active). The views must be those of the forward pass.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        backend: &B,
        images: &[Ref<'_, B, B::Act>],
        texts: &[Ref<'_, B, B::Act>],
        dloss: f64,
        dimages: &mut [Mut<'_, B, B::Act>],
        dtexts: &mut [Mut<'_, B, B::Act>],
        mut dlog_scale: Mut<'_, B, B::Master>,
    ) -> Result<()> {
        const OP: &str = "ClipPairs::backward";
        let scale = self.scale.ok_or_else(|| Error::Invalid { op: OP, msg: "backward before forward".into() })?;
        self.check_views(OP, images.len().min(dimages.len()), texts.len().min(dtexts.len()))?;
        for d in dimages.iter_mut() {
            backend.fill(B::reborrow(d), B::Act::from_real(0.0))?;
        }
        for d in dtexts.iter_mut() {
            backend.fill(B::reborrow(d), B::Act::from_real(0.0))?;
        }
        let spec = self.spec();
        let len = self.n * self.dim;
        for (p, saved) in self.pairs.iter().zip(&self.saved) {
            let dimage = self.dimage.ensure(backend, len)?;
            let dtext = self.dtext.ensure(backend, len)?;
            let t = self.used_log_scale.get()?;
            // The pair's gradients land in scratch (the primitive overwrites) and are summed into the view's.
            let dt =
                if scale.passes_grad { B::reborrow(&mut dlog_scale) } else { self.dscale_sink.ensure(backend, 1)? };
            let (image, text) = (images[p.image], texts[p.text]);
            backend.clip_loss_backward(
                &spec,
                image,
                text,
                t,
                saved.get()?,
                dloss * p.weight,
                dimage,
                Some(dtext),
                dt,
            )?;
            backend.axpy(1.0, self.dimage.get()?, B::reborrow(&mut dimages[p.image]))?;
            backend.axpy(1.0, self.dtext.get()?, B::reborrow(&mut dtexts[p.text]))?;
        }
        Ok(())
    }
}

/// DeCLIP's multi-view supervision (SPEC §2): `L_MVS = ¼[clip(g1,t) + clip(g2,t) + clip(g1,t′) + clip(g2,t′)]`
/// over two image views `g1, g2` and the caption / its EDA copy `t, t′`, each term symmetric, no label smoothing,
/// logit scale clamped at 100. Views index 0 and 1: `images = [g1, g2]`, `texts = [t, t′]`.
pub struct Mvs<B: Backend> {
    pub pairs: ClipPairs<B>,
}

impl<B: Backend> Mvs<B> {
    pub fn new(clamp_scale: bool) -> Self {
        let pairs = [(0, 0), (1, 0), (0, 1), (1, 1)]
            .into_iter()
            .map(|(image, text)| PairTerm { image, text, weight: 0.25 })
            .collect();
        Mvs { pairs: ClipPairs::new(pairs, 0.0, clamp_scale) }
    }

    /// `L_MVS` for `images = [g1, g2]`, `texts = [t, t′]` (un-normalised, `[n, dim]` each).
    pub fn forward(
        &mut self,
        backend: &B,
        images: [Ref<'_, B, B::Act>; 2],
        texts: [Ref<'_, B, B::Act>; 2],
        log_scale: Ref<'_, B, B::Master>,
        n: usize,
        dim: usize,
    ) -> Result<f64> {
        self.pairs.forward(backend, &images, &texts, log_scale, n, dim)
    }

    /// See [`ClipPairs::backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        backend: &B,
        images: [Ref<'_, B, B::Act>; 2],
        texts: [Ref<'_, B, B::Act>; 2],
        dloss: f64,
        dimages: [Mut<'_, B, B::Act>; 2],
        dtexts: [Mut<'_, B, B::Act>; 2],
        dlog_scale: Mut<'_, B, B::Master>,
    ) -> Result<()> {
        let (mut dimages, mut dtexts) = (dimages, dtexts);
        self.pairs.backward(backend, &images, &texts, dloss, &mut dimages, &mut dtexts, dlog_scale)
    }
}

/// Settings of [`Cl2l`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cl2lConfig {
    /// ε of the global pair (SPEC §3: "plain InfoNCE", 0).
    pub global_smoothing: f64,
    /// ε of the 2×2 local pairs (0.1).
    pub local_smoothing: f64,
    /// Clamp both scales at 100 in the forward pass (SPEC: "both scales clamped ≤ ln 100"; clip-rocket clamps the
    /// parameter after the step, which the optimiser does too — the forward clamp then never binds).
    pub clamp_scale: bool,
}

impl Default for Cl2lConfig {
    fn default() -> Self {
        Cl2lConfig { global_smoothing: 0.0, local_smoothing: 0.1, clamp_scale: true }
    }
}

/// The CL2L contrastive loss (SPEC §3): per direction `L_dir = (L_dir,global + 2·mean_local L_dir)/3`, and
/// `L = L_img + L_txt`.
///
/// [`Backend::clip_loss_forward`] gives `clip = ½(L_img + L_txt)` of one pair, and both directions carry the same
/// weights, so `L = (2·clip_global + 4·mean_local clip)/3 = ⅔·clip_global + ⅓·Σ_local clip` (4 local pairs). The
/// global pair uses the global log scale, the local pairs their own (t = ln 10 at init). Views: the global image and
/// text `[n, dim_g]`; local `images = [v1, v2]`, `texts = [w1, w2]` `[n, dim_l]`, all four (vᵢ, wⱼ) pairs.
pub struct Cl2l<B: Backend> {
    pub global: ClipPairs<B>,
    pub local: ClipPairs<B>,
}

impl<B: Backend> Cl2l<B> {
    pub fn new(config: Cl2lConfig) -> Self {
        let global = vec![PairTerm { image: 0, text: 0, weight: 2.0 / 3.0 }];
        let local = [(0, 0), (0, 1), (1, 0), (1, 1)]
            .into_iter()
            .map(|(image, text)| PairTerm { image, text, weight: 1.0 / 3.0 })
            .collect();
        Cl2l {
            global: ClipPairs::new(global, config.global_smoothing, config.clamp_scale),
            local: ClipPairs::new(local, config.local_smoothing, config.clamp_scale),
        }
    }

    /// `L` for the global pair (`global = [image, text]`, `[n, global_dim]`) and the local views (`[n, local_dim]`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        backend: &B,
        global: [Ref<'_, B, B::Act>; 2],
        local_images: [Ref<'_, B, B::Act>; 2],
        local_texts: [Ref<'_, B, B::Act>; 2],
        global_log_scale: Ref<'_, B, B::Master>,
        local_log_scale: Ref<'_, B, B::Master>,
        n: usize,
        global_dim: usize,
        local_dim: usize,
    ) -> Result<f64> {
        let g = self.global.forward(backend, &global[..1], &global[1..], global_log_scale, n, global_dim)?;
        let l = self.local.forward(backend, &local_images, &local_texts, local_log_scale, n, local_dim)?;
        Ok(g + l)
    }

    /// Gradients of `dloss·L`: every view's OVERWRITTEN (`dglobal = [dimage, dtext]`), both log scales'
    /// ACCUMULATED.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        backend: &B,
        global: [Ref<'_, B, B::Act>; 2],
        local_images: [Ref<'_, B, B::Act>; 2],
        local_texts: [Ref<'_, B, B::Act>; 2],
        dloss: f64,
        dglobal: [Mut<'_, B, B::Act>; 2],
        dlocal_images: [Mut<'_, B, B::Act>; 2],
        dlocal_texts: [Mut<'_, B, B::Act>; 2],
        dglobal_log_scale: Mut<'_, B, B::Master>,
        dlocal_log_scale: Mut<'_, B, B::Master>,
    ) -> Result<()> {
        let [dgi, dgt] = dglobal;
        let (mut dgi, mut dgt) = ([dgi], [dgt]);
        self.global.backward(backend, &global[..1], &global[1..], dloss, &mut dgi, &mut dgt, dglobal_log_scale)?;
        let (mut di, mut dt) = (dlocal_images, dlocal_texts);
        self.local.backward(backend, &local_images, &local_texts, dloss, &mut di, &mut dt, dlocal_log_scale)
    }
}

/// DeCLIP's nearest-neighbour supervision (SPEC §2), image → text only: for each image view v,
/// `½[CE(s·f_v·NN(t)ᵀ) + CE(s·f_v·NN(t′)ᵀ)]`, `L_NNS` = their mean over the two views, where `f_v` is the
/// normalised image view (normalised here from the tower output `g_v`) and `NN(t)`, `NN(t′)` `[n, dim]` are the
/// queue's nearest neighbours (unit rows, detached: no gradient). Plain CE (ε = 0) as DeCLIP, logit scale shared with
/// MVS and clamped at 100.
pub struct Nns<B: Backend> {
    /// `terms[2v + k]`: view v against neighbour set k.
    terms: Vec<OneWayInfoNce<B>>,
    n: usize,
    dim: usize,
    f: [Slot<B, B::Act>; 2],
    norms: [Slot<B, B::Master>; 2],
    df: Slot<B, B::Act>,
    df_term: Slot<B, B::Act>,
}

impl<B: Backend> Nns<B> {
    pub fn new(label_smoothing: f64, clamp_scale: bool) -> Self {
        Nns {
            terms: (0..4).map(|_| OneWayInfoNce::new(label_smoothing, clamp_scale)).collect(),
            n: 0,
            dim: 0,
            f: Default::default(),
            norms: Default::default(),
            df: Slot::default(),
            df_term: Slot::default(),
        }
    }

    /// `L_NNS` for the un-normalised image views `images = [g1, g2]` and `neighbours = [NN(t), NN(t′)]`.
    pub fn forward(
        &mut self,
        backend: &B,
        images: [Ref<'_, B, B::Act>; 2],
        neighbours: [Ref<'_, B, B::Act>; 2],
        log_scale: Ref<'_, B, B::Master>,
        n: usize,
        dim: usize,
    ) -> Result<f64> {
        let mut total = 0.0;
        for (v, &image) in images.iter().enumerate() {
            let f = self.f[v].ensure(backend, n * dim)?;
            backend.l2norm_forward(image, f, self.norms[v].ensure(backend, n)?, n, dim)?;
            for (k, &nn) in neighbours.iter().enumerate() {
                total += 0.25 * self.terms[2 * v + k].forward(backend, self.f[v].get()?, nn, log_scale, n, dim)?;
            }
        }
        (self.n, self.dim) = (n, dim);
        Ok(total)
    }

    /// Gradients of `dloss·L_NNS`: `dimages[v]` OVERWRITTEN, `dt` ACCUMULATED (not while clamped); the neighbours
    /// get none.
    pub fn backward(
        &mut self,
        backend: &B,
        neighbours: [Ref<'_, B, B::Act>; 2],
        dloss: f64,
        dimages: [Mut<'_, B, B::Act>; 2],
        mut dlog_scale: Mut<'_, B, B::Master>,
    ) -> Result<()> {
        let len = self.n * self.dim;
        for (v, dimage) in dimages.into_iter().enumerate() {
            let f = self.f[v].get()?;
            // df_v = Σ_k ∂(¼·CE_vk)/∂f_v, summed over the two neighbour sets, then back through the normalisation.
            let mut df = self.df.ensure(backend, len)?;
            for (k, &nn) in neighbours.iter().enumerate() {
                let term = &mut self.terms[2 * v + k];
                if k == 0 {
                    term.backward(
                        backend,
                        f,
                        nn,
                        0.25 * dloss,
                        B::reborrow(&mut df),
                        None,
                        B::reborrow(&mut dlog_scale),
                    )?;
                } else {
                    let tmp = self.df_term.ensure(backend, len)?;
                    term.backward(backend, f, nn, 0.25 * dloss, tmp, None, B::reborrow(&mut dlog_scale))?;
                    backend.axpy(1.0, self.df_term.get()?, B::reborrow(&mut df))?;
                }
            }
            let norms = self.norms[v].get()?;
            backend.l2norm_backward(B::as_ref(&df), f, norms, dimage, self.n, self.dim)?;
        }
        Ok(())
    }
}
