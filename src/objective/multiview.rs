//! One training step of the multi-view objectives (`cliprt train --objective declip|cl2l|siamlip|byolip|barlip|
//! swalip`, SPEC §2–3): what each adds to the CLIP model (heads, a second logit scale, the MLM head, the
//! nearest-neighbour queue, the EMA target), and its forward and backward written out in order.
//!
//! Layout of a step. The views come stacked view-major ([`crate::train::views::ViewBatch`]); each tower runs ONCE
//! over all its views (`views · n` rows), so view `v`'s embeddings are rows `v·n .. (v+1)·n` of the tower output.
//! The heads likewise run once over the stacked views they need. (The reference codebases call the towers and heads
//! once per view; the difference is BatchNorm: here its statistics cover all the views of a step at once, as when
//! views are concatenated into one batch. Layers without BatchNorm — the ViT and text towers — give the same
//! numbers either way.) Projector/predictor heads take the towers' embeddings (`embed_dim`) as input, where the
//! reference codebases feed them the backbone features before the final projection.
//!
//! Every term's weight is applied through its `dloss`, and the towers get one gradient per view row, summed over
//! the terms that use the row (`axpy` into the step's gradient buffers).

use crate::backend::{Backend, Elem, Gemm, Ref};
use crate::error::{Error, Result};
use crate::model::clip::Clip;
use crate::model::config::ModelConfig;
use crate::model::heads::{HeadWidths, MlpHead};
use crate::nn::Slot;
use crate::objective::contrastive::{Cl2l, Cl2lConfig, Mvs, Nns, Scale};
use crate::objective::kind::{ObjectiveKind, ObjectiveOptions};
use crate::objective::mlm::{MlmHead, IGNORE_INDEX};
use crate::objective::queue::{nns_step, NnQueue};
use crate::objective::ssl::{BarlowTwins, ByolDistance, NegativeCosine, SwappedPrediction};
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};
use crate::train::views::ViewBatch;

/// The image/text view pairs of the CL2L family's SSL terms: the global pair, then the 2×2 local pairs.
const SSL_PAIRS: [(usize, usize); 5] = [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2)];

/// CL2L's local logit scale at initialisation: t = ln 10 (SPEC §3).
pub const LOCAL_INITIAL_LOGIT_SCALE: f64 = std::f64::consts::LN_10;

/// BYOLIP's targets: the EMA model's SSL projections of the image and text views.
type Targets<B> = (<B as Backend>::Buf<<B as Backend>::Act>, <B as Backend>::Buf<<B as Backend>::Act>);

/// The loss of one step and its terms (unweighted), for the log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepLoss {
    pub total: f64,
    pub terms: Vec<(&'static str, f64)>,
}

/// DeCLIP's additions.
struct Declip<B: Backend> {
    iss_projector: MlpHead<B>,
    iss_predictor: MlpHead<B>,
    mlm: MlmHead<B>,
    queue: Option<NnQueue<B>>,
    mvs: Mvs<B>,
    nns: Nns<B>,
    iss: NegativeCosine<B>,
    neighbours: Option<crate::objective::queue::Neighbours<B>>,
    /// TSS: the labelled token rows (indices into the step's token features), their features and gradients.
    selected: Slot<B, i32>,
    selected_count: usize,
    selected_features: Slot<B, B::Act>,
    d_selected: Slot<B, B::Act>,
    d_tokens_master: Slot<B, B::Master>,
}

/// The SSL term of the CL2L family.
enum Ssl<B: Backend> {
    None,
    /// SiamLIP / BYOLIP: projector + predictor per modality, 10 cross-modal distances.
    Predict {
        image_projector: MlpHead<B>,
        text_projector: MlpHead<B>,
        image_predictor: MlpHead<B>,
        text_predictor: MlpHead<B>,
        distances: Vec<ByolDistance<B>>,
    },
    /// BarLIP: one projector per modality, Barlow Twins over the 5 pairs.
    Barlow {
        image_projector: MlpHead<B>,
        text_projector: MlpHead<B>,
        terms: Vec<BarlowTwins<B>>,
    },
    /// SwALIP: swapped prediction between the local heads' cosine logits (4 terms).
    Swap {
        terms: Vec<SwappedPrediction<B>>,
    },
}

/// The CL2L recipe's additions and its SSL term.
struct Cl2lFamily<B: Backend> {
    local_image: MlpHead<B>,
    local_text: MlpHead<B>,
    local_logit_scale: ParamId,
    cl2l: Cl2l<B>,
    ssl: Ssl<B>,
}

/// What an objective adds to [`Clip`], declared under `objective.` in the same parameter buffer.
pub struct ObjectiveHeads<B: Backend> {
    pub kind: ObjectiveKind,
    pub options: ObjectiveOptions,
    embed: usize,
    declip: Option<Declip<B>>,
    cl2l: Option<Cl2lFamily<B>>,
    n: usize,
    d_image: Slot<B, B::Act>,
    d_text: Slot<B, B::Act>,
    d_tokens: Slot<B, B::Act>,
    scratch: [Slot<B, B::Act>; 4],
    /// Normalised local head outputs and their norms (SwALIP).
    unit: [Slot<B, B::Act>; 2],
    unit_norms: [Slot<B, B::Master>; 2],
    logits: Vec<Slot<B, B::Act>>,
    images: Slot<B, B::Act>,
}

impl<B: Backend> ObjectiveHeads<B> {
    /// Declares the objective's tensors (nothing for `clip`) in the caller's scope.
    pub fn new(
        pb: &mut ParamBuilder,
        kind: ObjectiveKind,
        options: &ObjectiveOptions,
        cfg: &ModelConfig,
    ) -> Result<Self> {
        options.validate()?;
        let d = cfg.embed_dim;
        let o = options;
        let declip = if kind == ObjectiveKind::Declip {
            let projector = HeadWidths { hidden: o.width(1024), out: o.width(1024) };
            let predictor = HeadWidths { hidden: o.width(512), out: projector.out };
            Some(Declip {
                iss_projector: MlpHead::declip_iss_projector(pb, "iss_projector", d, projector)?,
                iss_predictor: MlpHead::declip_iss_predictor(pb, "iss_predictor", predictor)?,
                mlm: MlmHead::new(pb, "mlm_head", cfg.text_cfg.width, cfg.text_cfg.vocab_size)?,
                queue: None,
                mvs: Mvs::new(true),
                nns: Nns::new(0.0, true),
                iss: NegativeCosine::default(),
                neighbours: None,
                selected: Slot::default(),
                selected_count: 0,
                selected_features: Slot::default(),
                d_selected: Slot::default(),
                d_tokens_master: Slot::default(),
            })
        } else {
            None
        };
        let cl2l = if kind.is_cl2l_family() {
            let local = HeadWidths { hidden: o.width(4096), out: o.local_embed_dim };
            let ssl = match kind {
                ObjectiveKind::Siamlip | ObjectiveKind::Byolip => {
                    let w = HeadWidths { hidden: o.width(2048), out: o.width(128) };
                    Ssl::Predict {
                        image_projector: MlpHead::siamlip_projector(pb, "image_ssl_projector", d, w)?,
                        text_projector: MlpHead::siamlip_projector(pb, "text_ssl_projector", d, w)?,
                        image_predictor: MlpHead::siamlip_predictor(pb, "image_ssl_predictor", w)?,
                        text_predictor: MlpHead::siamlip_predictor(pb, "text_ssl_predictor", w)?,
                        distances: (0..2 * SSL_PAIRS.len()).map(|_| ByolDistance::default()).collect(),
                    }
                }
                ObjectiveKind::Barlip => {
                    let w = HeadWidths { hidden: o.width(3000), out: o.width(8192) };
                    Ssl::Barlow {
                        image_projector: MlpHead::barlip_projector(pb, "image_ssl_projector", d, w)?,
                        text_projector: MlpHead::barlip_projector(pb, "text_ssl_projector", d, w)?,
                        terms: (0..SSL_PAIRS.len()).map(|_| BarlowTwins::default()).collect(),
                    }
                }
                ObjectiveKind::Swalip => Ssl::Swap { terms: (0..4).map(|_| SwappedPrediction::default()).collect() },
                _ => Ssl::None,
            };
            let local_config = Cl2lConfig { local_smoothing: o.local_smoothing, ..Cl2lConfig::default() };
            Some(Cl2lFamily {
                local_image: MlpHead::cl2l_local_projector(pb, "image_local_projector", d, local)?,
                local_text: MlpHead::cl2l_local_projector(pb, "text_local_projector", d, local)?,
                local_logit_scale: pb.param("local_logit_scale", &[], Init::Constant(LOCAL_INITIAL_LOGIT_SCALE))?,
                cl2l: Cl2l::new(local_config),
                ssl,
            })
        } else {
            None
        };
        Ok(ObjectiveHeads {
            kind,
            options: o.clone(),
            embed: d,
            declip,
            cl2l,
            n: 0,
            d_image: Slot::default(),
            d_text: Slot::default(),
            d_tokens: Slot::default(),
            scratch: Default::default(),
            unit: Default::default(),
            unit_norms: Default::default(),
            logits: (0..8).map(|_| Slot::default()).collect(),
            images: Slot::default(),
        })
    }

    /// The second logit scale (CL2L family), which the trainer clamps like the first.
    pub fn local_logit_scale(&self) -> Option<ParamId> {
        self.cl2l.as_ref().map(|c| c.local_logit_scale)
    }

    /// DeCLIP's queue, created on first use with random unit rows from `seed`.
    fn ensure_queue(&mut self, backend: &B, seed: u64) -> Result<()> {
        if let Some(declip) = &mut self.declip {
            if declip.queue.is_none() {
                declip.queue = Some(NnQueue::new(backend, self.options.queue_size, self.embed, seed)?);
            }
        }
        Ok(())
    }

    /// Forward and backward of one step over `views`; every parameter gradient is ACCUMULATED into the store
    /// (the caller zeroes them). `target`: BYOLIP's EMA model (its towers and projectors give the targets).
    pub fn forward_backward(
        &mut self,
        backend: &B,
        clip: &mut Clip<B>,
        params: &mut ParamStore<B>,
        views: &ViewBatch,
        seed: u64,
        target: Option<(&mut Clip<B>, &mut ObjectiveHeads<B>, &mut ParamStore<B>)>,
    ) -> Result<StepLoss> {
        const OP: &str = "objective step";
        let (vi, vt) = self.kind.views();
        if views.image_views != vi || views.text_views != vt {
            return Err(Error::Invalid {
                op: OP,
                msg: format!(
                    "{} needs {vi} image and {vt} text views, the batch has {} and {}",
                    self.kind.name(),
                    views.image_views,
                    views.text_views
                ),
            });
        }
        let context = clip.text.context_length();
        let n = views.tokens.len() / (vt * context);
        let side = clip.config.vision_cfg.image_size;
        crate::error::check_len(OP, "images", views.images.len(), vi * n * 3 * side * side)?;
        if n < 2 {
            return Err(Error::Invalid { op: OP, msg: "a contrastive step needs at least 2 samples".into() });
        }
        self.n = n;
        self.ensure_queue(backend, seed ^ 0x05ee_d0f9_ee0e)?;
        let images = self.images.ensure(backend, views.images.len())?;
        let host: Vec<B::Act> = views.images.iter().map(|&x| B::Act::from_real(x as f64)).collect();
        backend.write(&host, images)?;

        // Towers, once over all views.
        clip.visual.forward(backend, params, self.images.get()?, vi * n)?;
        if self.declip.is_some() {
            clip.text.forward_all_tokens(backend, params, &views.tokens, vt * n)?;
        } else {
            clip.text.forward(backend, params, &views.tokens, vt * n)?;
        }
        let targets = match target {
            Some((target_clip, target_heads, target_params)) => {
                Some(target_heads.target_projections(backend, target_clip, target_params, self.images.get()?, views)?)
            }
            None => None,
        };
        let loss = if self.declip.is_some() {
            self.declip_step(backend, clip, params, views)?
        } else {
            self.cl2l_step(backend, clip, params, targets.as_ref())?
        };
        Ok(loss)
    }

    /// BYOLIP's targets: this (EMA) model's towers and SSL projectors on the same views, no backward.
    fn target_projections(
        &mut self,
        backend: &B,
        clip: &mut Clip<B>,
        params: &mut ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        views: &ViewBatch,
    ) -> Result<Targets<B>> {
        let (vi, vt) = self.kind.views();
        let n = views.tokens.len() / (vt * clip.text.context_length());
        clip.visual.forward(backend, params, images, vi * n)?;
        clip.text.forward(backend, params, &views.tokens, vt * n)?;
        let Some(Cl2lFamily { ssl: Ssl::Predict { image_projector, text_projector, .. }, .. }) = &mut self.cl2l else {
            return Err(Error::Invalid { op: "BYOLIP target", msg: "the target model has no projectors".into() });
        };
        image_projector.forward(backend, params, clip.visual.out()?, vi * n)?;
        text_projector.forward(backend, params, clip.text.out()?, vt * n)?;
        let copy = |x: Ref<'_, B, B::Act>| -> Result<B::Buf<B::Act>> {
            let mut out = backend.zeros::<B::Act>(B::len(x))?;
            backend.copy(x, B::view_mut(&mut out))?;
            Ok(out)
        };
        Ok((copy(image_projector.out()?)?, copy(text_projector.out()?)?))
    }

    /// Zeroed gradient buffers for the towers' outputs.
    fn zero_tower_grads(&mut self, backend: &B, image_rows: usize, text_rows: usize) -> Result<()> {
        let d = self.embed;
        backend.fill(self.d_image.ensure(backend, image_rows * d)?, B::Act::from_real(0.0))?;
        backend.fill(self.d_text.ensure(backend, text_rows * d)?, B::Act::from_real(0.0))?;
        Ok(())
    }

    /// DeCLIP (SPEC §2): L = α·MVS + β·NNS + γ·ISS + δ·TSS.
    fn declip_step(
        &mut self,
        backend: &B,
        clip: &mut Clip<B>,
        params: &mut ParamStore<B>,
        views: &ViewBatch,
    ) -> Result<StepLoss> {
        let (n, d, o) = (self.n, self.embed, self.options.clone());
        let rows = |v: usize| v * n * d..(v + 1) * n * d;
        let declip = self.declip.as_mut().expect("declip step");
        let labels = views.mlm_labels.as_ref().ok_or(Error::Invalid {
            op: "DeCLIP step",
            msg: "the views carry no masked-language-modelling labels".into(),
        })?;
        let (img, txt) = (clip.visual.out()?, clip.text.out()?);
        let g = [B::slice(img, rows(0)), B::slice(img, rows(1))];
        let t = [B::slice(txt, rows(0)), B::slice(txt, rows(1))];
        let log_scale = params.master_weight(clip.logit_scale);

        // MVS: the four symmetric pairs.
        let mvs = declip.mvs.forward(backend, g, t, log_scale, n, d)?;
        // NNS: neighbours from the queue as it was before this step, then push t′ and t.
        let queue = declip.queue.as_mut().expect("queue created");
        let nb = nns_step(backend, queue, t[0], t[1], n)?;
        let neighbours = [B::view(&nb.text), B::view(&nb.augmented)];
        let nns = declip.nns.forward(backend, g, neighbours, log_scale, n, d)?;
        declip.neighbours = Some(nb);
        // ISS: SimSiam on the two image views (projector and predictor once over both).
        declip.iss_projector.forward(backend, params, img, 2 * n)?;
        declip.iss_predictor.forward(backend, params, declip.iss_projector.out()?, 2 * n)?;
        let p_dim = declip.iss_predictor.out_features();
        let (z, p) = (declip.iss_projector.out()?, declip.iss_predictor.out()?);
        let (h0, h1) = (0..n * p_dim, n * p_dim..2 * n * p_dim);
        let (p0, z0, p1, z1) = (B::slice(p, h0.clone()), B::slice(z, h0), B::slice(p, h1.clone()), B::slice(z, h1));
        let iss = declip.iss.forward(backend, p0, z0, p1, z1, n, p_dim)?;
        // TSS: the MLM head on the selected tokens of the masked caption view. Only those rows carry a label, so
        // only they are gathered (the loss and their gradients are those of the head on every token; the other
        // rows' gradient is zero), which keeps the [rows, vocab] logits ~7× smaller.
        let context = clip.text.context_length();
        let width = clip.config.text_cfg.width;
        let selected: Vec<i32> = (0..n * context).filter(|&r| labels[r] != IGNORE_INDEX).map(|r| r as i32).collect();
        let selected_labels: Vec<i32> = selected.iter().map(|&r| labels[r as usize]).collect();
        let tss = if selected.is_empty() {
            0.0
        } else {
            backend.write(&selected, declip.selected.ensure(backend, selected.len())?)?;
            let rows_out = declip.selected_features.ensure(backend, selected.len() * width)?;
            let tokens = clip.text.token_features()?;
            backend.embedding_forward(declip.selected.get()?, tokens, rows_out, 2 * n * context, width)?;
            declip.mlm.forward(backend, params, declip.selected_features.get()?, &selected_labels)?
        };
        declip.selected_count = selected.len();
        let total = o.mvs_weight * mvs + o.nns_weight * nns + o.iss_weight * iss + o.tss_weight * tss;

        // Backward, term by term, into the towers' output gradients.
        self.zero_tower_grads(backend, 2 * n, 2 * n)?;
        let declip = self.declip.as_mut().expect("declip step");
        let (img, txt) = (clip.visual.out()?, clip.text.out()?);
        let g = [B::slice(img, rows(0)), B::slice(img, rows(1))];
        let t = [B::slice(txt, rows(0)), B::slice(txt, rows(1))];
        {
            let (_, [dt]) = params.master_and_grads([clip.logit_scale])?;
            let mut dt = dt;
            let mut d_image = self.d_image.get_mut()?;
            let mut d_text = self.d_text.get_mut()?;
            let (di0, di1) = B::split_at_mut(B::reborrow(&mut d_image), n * d);
            let (dt0, dt1) = B::split_at_mut(B::reborrow(&mut d_text), n * d);
            declip.mvs.backward(backend, g, t, o.mvs_weight, [di0, di1], [dt0, dt1], B::reborrow(&mut dt))?;
            let nb = declip.neighbours.as_ref().expect("set in the forward");
            let neighbours = [B::view(&nb.text), B::view(&nb.augmented)];
            let mut tmp = self.scratch[0].ensure(backend, 2 * n * d)?;
            let (s0, s1) = B::split_at_mut(B::reborrow(&mut tmp), n * d);
            declip.nns.backward(backend, neighbours, o.nns_weight, [s0, s1], dt)?;
            backend.axpy(1.0, B::as_ref(&tmp), d_image)?;
        }
        // ISS backward: predictor, then projector, into the image views.
        let p_dim = declip.iss_predictor.out_features();
        let [s0, s1, s2, _] = &mut self.scratch;
        let mut dp = s1.ensure(backend, 2 * n * p_dim)?;
        let (dp0, dp1) = B::split_at_mut(B::reborrow(&mut dp), n * p_dim);
        declip.iss.backward(backend, o.iss_weight, dp0, dp1)?;
        let dz = s2.ensure(backend, 2 * n * p_dim)?;
        let z = declip.iss_projector.out()?;
        declip.iss_predictor.backward(backend, params, z, B::as_ref(&dp), Some(dz))?;
        let dg = s0.ensure(backend, 2 * n * d)?;
        declip.iss_projector.backward(backend, params, img, s2.get()?, Some(dg))?;
        backend.axpy(1.0, s0.get()?, self.d_image.get_mut()?)?;
        // TSS backward: the selected rows' gradient scattered back into the token features (the rest get none).
        let all_tokens = 2 * n * context * width;
        {
            let mut d_master = declip.d_tokens_master.ensure(backend, all_tokens)?;
            backend.fill(B::reborrow(&mut d_master), B::Master::from_real(0.0))?;
            if declip.selected_count > 0 {
                let d_rows = declip.d_selected.ensure(backend, declip.selected_count * width)?;
                declip.mlm.backward(backend, params, declip.selected_features.get()?, o.tss_weight, Some(d_rows))?;
                let (ids, d_rows) = (declip.selected.get()?, declip.d_selected.get()?);
                backend.embedding_backward(ids, d_rows, d_master, 2 * n * context, width)?;
            }
        }
        let d_tokens = self.d_tokens.ensure(backend, all_tokens)?;
        backend.master_to_act(declip.d_tokens_master.get()?, d_tokens)?;
        let _ = t;

        // Towers.
        clip.visual.backward(backend, params, self.images.get()?, self.d_image.get()?)?;
        clip.text.backward_with_tokens(backend, params, self.d_text.get()?, Some(self.d_tokens.get()?))?;
        Ok(StepLoss { total, terms: vec![("mvs", mvs), ("nns", nns), ("iss", iss), ("tss", tss)] })
    }

    /// The CL2L recipe (SPEC §3) and, for SiamLIP / BYOLIP / BarLIP / SwALIP, its SSL term.
    fn cl2l_step(
        &mut self,
        backend: &B,
        clip: &mut Clip<B>,
        params: &mut ParamStore<B>,
        targets: Option<&Targets<B>>,
    ) -> Result<StepLoss> {
        let (n, d) = (self.n, self.embed);
        let kind = self.kind;
        let ssl_weight = self.options.ssl_weight_for(kind);
        let fam = self.cl2l.as_mut().expect("cl2l step");
        let ld = fam.local_image.out_features();
        let rows = |v: usize, w: usize| v * n * w..(v + 1) * n * w;
        let (img, txt) = (clip.visual.out()?, clip.text.out()?);
        // Local heads over the two local views of each modality (rows n..3n).
        fam.local_image.forward(backend, params, B::slice(img, n * d..3 * n * d), 2 * n)?;
        fam.local_text.forward(backend, params, B::slice(txt, n * d..3 * n * d), 2 * n)?;
        let (hi, ht) = (fam.local_image.out()?, fam.local_text.out()?);
        let global_t = params.master_weight(clip.logit_scale);
        let local_t = params.master_weight(fam.local_logit_scale);
        let global = [B::slice(img, rows(0, d)), B::slice(txt, rows(0, d))];
        let li = [B::slice(hi, rows(0, ld)), B::slice(hi, rows(1, ld))];
        let lt = [B::slice(ht, rows(0, ld)), B::slice(ht, rows(1, ld))];
        let contrastive = fam.cl2l.forward(backend, global, li, lt, global_t, local_t, n, d, ld)?;

        // The SSL term's forward.
        let local_scale = Scale::read(backend, local_t, true)?;
        let ssl = match &mut fam.ssl {
            Ssl::None => 0.0,
            Ssl::Predict { image_projector, text_projector, image_predictor, text_predictor, distances } => {
                image_projector.forward(backend, params, img, 3 * n)?;
                text_projector.forward(backend, params, txt, 3 * n)?;
                image_predictor.forward(backend, params, image_projector.out()?, 3 * n)?;
                text_predictor.forward(backend, params, text_projector.out()?, 3 * n)?;
                let w = image_predictor.out_features();
                let (zi, zt) = match targets {
                    Some((ti, tt)) => (B::view(ti), B::view(tt)),
                    None => (image_projector.out()?, text_projector.out()?),
                };
                let (pi, pt) = (image_predictor.out()?, text_predictor.out()?);
                let mut total = 0.0;
                for (k, &(a, b)) in SSL_PAIRS.iter().enumerate() {
                    let (pia, ztb) = (B::slice(pi, rows(a, w)), B::slice(zt, rows(b, w)));
                    let (ptb, zia) = (B::slice(pt, rows(b, w)), B::slice(zi, rows(a, w)));
                    total += distances[2 * k].forward(backend, pia, ztb, n, w)?;
                    total += distances[2 * k + 1].forward(backend, ptb, zia, n, w)?;
                }
                total / distances.len() as f64
            }
            Ssl::Barlow { image_projector, text_projector, terms } => {
                image_projector.forward(backend, params, img, 3 * n)?;
                text_projector.forward(backend, params, txt, 3 * n)?;
                let w = image_projector.out_features();
                let (zi, zt) = (image_projector.out()?, text_projector.out()?);
                let mut total = 0.0;
                for (k, &(a, b)) in SSL_PAIRS.iter().enumerate() {
                    total += terms[k].forward(backend, B::slice(zi, rows(a, w)), B::slice(zt, rows(b, w)), n, w)?;
                }
                total / terms.len() as f64
            }
            Ssl::Swap { terms } => {
                // Cosine logits between the local heads: I_ab = ĥ_img[a]·ĥ_txt[b]ᵀ, T_ab = ĥ_txt[a]·ĥ_img[b]ᵀ.
                for (m, h) in [hi, ht].into_iter().enumerate() {
                    let u = self.unit[m].ensure(backend, 2 * n * ld)?;
                    backend.l2norm_forward(h, u, self.unit_norms[m].ensure(backend, 2 * n)?, 2 * n, ld)?;
                }
                for (slot, (x, a, y, b)) in swap_logits().into_iter().enumerate() {
                    let (ux, uy) = (self.unit[x].get()?, self.unit[y].get()?);
                    let s = self.logits[slot].ensure(backend, n * n)?;
                    let gemm = Gemm::new(n, n, ld, false, true);
                    backend.gemm(&gemm, B::slice(ux, rows(a, ld)), B::slice(uy, rows(b, ld)), s)?;
                }
                let mut total = 0.0;
                for (k, term) in terms.iter_mut().enumerate() {
                    let (s_a, s_b) = (self.logits[2 * k].get()?, self.logits[2 * k + 1].get()?);
                    total += term.forward(backend, s_a, s_b, local_scale.value, n, n)?;
                }
                total / terms.len() as f64
            }
        };
        let total = contrastive + ssl_weight * ssl;

        // Backward. The CL2L terms write the global rows of both towers and the local heads' gradients.
        self.zero_tower_grads(backend, 3 * n, 3 * n)?;
        let fam = self.cl2l.as_mut().expect("cl2l step");
        let (img, txt) = (clip.visual.out()?, clip.text.out()?);
        let (hi, ht) = (fam.local_image.out()?, fam.local_text.out()?);
        let global = [B::slice(img, rows(0, d)), B::slice(txt, rows(0, d))];
        let li = [B::slice(hi, rows(0, ld)), B::slice(hi, rows(1, ld))];
        let lt = [B::slice(ht, rows(0, ld)), B::slice(ht, rows(1, ld))];
        let [s0, s1, s2, s3] = &mut self.scratch;
        let mut d_hi = s0.ensure(backend, 2 * n * ld)?;
        let mut d_ht = s1.ensure(backend, 2 * n * ld)?;
        {
            let (_, [dgt, dlt]) = params.master_and_grads([clip.logit_scale, fam.local_logit_scale])?;
            let d_image = B::slice_mut(self.d_image.get_mut()?, 0..n * d);
            let d_text = B::slice_mut(self.d_text.get_mut()?, 0..n * d);
            let (a0, a1) = B::split_at_mut(B::reborrow(&mut d_hi), n * ld);
            let (b0, b1) = B::split_at_mut(B::reborrow(&mut d_ht), n * ld);
            fam.cl2l.backward(backend, global, li, lt, 1.0, [d_image, d_text], [a0, a1], [b0, b1], dgt, dlt)?;
        }
        // The SSL term's backward: into the local heads' gradients (SwALIP) or through its own heads into the towers.
        let mut extra_local_dt = 0.0;
        match &mut fam.ssl {
            Ssl::None => {}
            Ssl::Predict { image_projector, text_projector, image_predictor, text_predictor, distances } => {
                let w = image_predictor.out_features();
                let dloss = ssl_weight / distances.len() as f64;
                let mut d_pi = s2.ensure(backend, 3 * n * w)?;
                let mut d_pt = s3.ensure(backend, 3 * n * w)?;
                backend.fill(B::reborrow(&mut d_pi), B::Act::from_real(0.0))?;
                backend.fill(B::reborrow(&mut d_pt), B::Act::from_real(0.0))?;
                let mut tmp = backend.zeros::<B::Act>(n * w)?;
                for (k, &(a, b)) in SSL_PAIRS.iter().enumerate() {
                    distances[2 * k].backward(backend, dloss, B::view_mut(&mut tmp))?;
                    backend.axpy(1.0, B::view(&tmp), B::slice_mut(B::reborrow(&mut d_pi), rows(a, w)))?;
                    distances[2 * k + 1].backward(backend, dloss, B::view_mut(&mut tmp))?;
                    backend.axpy(1.0, B::view(&tmp), B::slice_mut(B::reborrow(&mut d_pt), rows(b, w)))?;
                }
                // Predictor then projector of each modality, into the towers' rows of every view.
                let mut dz = backend.zeros::<B::Act>(3 * n * w)?;
                let mut dx = backend.zeros::<B::Act>(3 * n * d)?;
                let (d_image, d_text) = (&mut self.d_image, &mut self.d_text);
                let sides = [
                    (image_predictor, image_projector, B::as_ref(&d_pi), img, d_image),
                    (text_predictor, text_projector, B::as_ref(&d_pt), txt, d_text),
                ];
                for (predictor, projector, dp, x, d_tower) in sides {
                    predictor.backward(backend, params, projector.out()?, dp, Some(B::view_mut(&mut dz)))?;
                    projector.backward(backend, params, x, B::view(&dz), Some(B::view_mut(&mut dx)))?;
                    backend.axpy(1.0, B::view(&dx), d_tower.get_mut()?)?;
                }
            }
            Ssl::Barlow { image_projector, text_projector, terms } => {
                let w = image_projector.out_features();
                let dloss = ssl_weight / terms.len() as f64;
                let (zi, zt) = (image_projector.out()?, text_projector.out()?);
                let mut d_zi = s2.ensure(backend, 3 * n * w)?;
                let mut d_zt = s3.ensure(backend, 3 * n * w)?;
                backend.fill(B::reborrow(&mut d_zi), B::Act::from_real(0.0))?;
                backend.fill(B::reborrow(&mut d_zt), B::Act::from_real(0.0))?;
                let (mut ti, mut tt) = (backend.zeros::<B::Act>(n * w)?, backend.zeros::<B::Act>(n * w)?);
                for (k, &(a, b)) in SSL_PAIRS.iter().enumerate() {
                    let (za, zb) = (B::slice(zi, rows(a, w)), B::slice(zt, rows(b, w)));
                    terms[k].backward(backend, dloss, za, zb, B::view_mut(&mut ti), B::view_mut(&mut tt))?;
                    backend.axpy(1.0, B::view(&ti), B::slice_mut(B::reborrow(&mut d_zi), rows(a, w)))?;
                    backend.axpy(1.0, B::view(&tt), B::slice_mut(B::reborrow(&mut d_zt), rows(b, w)))?;
                }
                let mut dx = backend.zeros::<B::Act>(3 * n * d)?;
                let (d_image, d_text) = (&mut self.d_image, &mut self.d_text);
                let sides = [
                    (image_projector, B::as_ref(&d_zi), img, d_image),
                    (text_projector, B::as_ref(&d_zt), txt, d_text),
                ];
                for (projector, dz, x, d_tower) in sides {
                    projector.backward(backend, params, x, dz, Some(B::view_mut(&mut dx)))?;
                    backend.axpy(1.0, B::view(&dx), d_tower.get_mut()?)?;
                }
            }
            Ssl::Swap { terms } => {
                // dS of each logit matrix, then S = X·Yᵀ's backward into the unit rows, then the normalisation.
                let dloss = ssl_weight / terms.len() as f64;
                let mut ds = [backend.zeros::<B::Act>(n * n)?, backend.zeros::<B::Act>(n * n)?];
                let mut du = [backend.zeros::<B::Act>(2 * n * ld)?, backend.zeros::<B::Act>(2 * n * ld)?];
                let pairs = swap_logits();
                for (k, term) in terms.iter_mut().enumerate() {
                    let [ds_a, ds_b] = &mut ds;
                    let dscale = term.backward(backend, dloss, B::view_mut(ds_a), B::view_mut(ds_b))?;
                    extra_local_dt += local_scale.value * dscale;
                    for (j, ds) in ds.iter().enumerate() {
                        let (x, a, y, b) = pairs[2 * k + j];
                        let (ux, uy) = (self.unit[x].get()?, self.unit[y].get()?);
                        // dX += dS·Y, dY += dSᵀ·X.
                        let gx = Gemm::new(n, ld, n, false, false).accumulate();
                        backend.gemm(
                            &gx,
                            B::view(ds),
                            B::slice(uy, rows(b, ld)),
                            B::slice_mut(B::view_mut(&mut du[x]), rows(a, ld)),
                        )?;
                        let gy = Gemm::new(n, ld, n, true, false).accumulate();
                        backend.gemm(
                            &gy,
                            B::view(ds),
                            B::slice(ux, rows(a, ld)),
                            B::slice_mut(B::view_mut(&mut du[y]), rows(b, ld)),
                        )?;
                    }
                }
                let mut dh = backend.zeros::<B::Act>(2 * n * ld)?;
                for (m, d_local) in [&mut d_hi, &mut d_ht].into_iter().enumerate() {
                    let (u, norms) = (self.unit[m].get()?, self.unit_norms[m].get()?);
                    backend.l2norm_backward(B::view(&du[m]), u, norms, B::view_mut(&mut dh), 2 * n, ld)?;
                    backend.axpy(1.0, B::view(&dh), B::reborrow(d_local))?;
                }
            }
        }
        if extra_local_dt != 0.0 && local_scale.passes_grad {
            add_to_grad(backend, params, fam.local_logit_scale, extra_local_dt)?;
        }
        // Local heads, their input gradient added to the towers' local rows (which may hold SSL gradients already).
        let local_rows = n * d..3 * n * d;
        let mut dx = backend.zeros::<B::Act>(2 * n * d)?;
        let sides = [
            (&mut fam.local_image, img, B::as_ref(&d_hi), &mut self.d_image),
            (&mut fam.local_text, txt, B::as_ref(&d_ht), &mut self.d_text),
        ];
        for (head, x, dh, d_tower) in sides {
            head.backward(backend, params, B::slice(x, local_rows.clone()), dh, Some(B::view_mut(&mut dx)))?;
            backend.axpy(1.0, B::view(&dx), B::slice_mut(d_tower.get_mut()?, local_rows.clone()))?;
        }
        clip.visual.backward(backend, params, self.images.get()?, self.d_image.get()?)?;
        clip.text.backward(backend, params, self.d_text.get()?)?;
        let name = match kind {
            ObjectiveKind::Siamlip | ObjectiveKind::Byolip => "distance",
            ObjectiveKind::Barlip => "barlow",
            ObjectiveKind::Swalip => "swap",
            _ => "none",
        };
        let mut terms = vec![("cl2l", contrastive)];
        if !matches!(kind, ObjectiveKind::Cl2l) {
            terms.push((name, ssl));
        }
        Ok(StepLoss { total, terms })
    }
}

/// The 8 cosine-logit matrices of SwALIP as (x modality, x view, y modality, y view), modality 0 = image, 1 = text:
/// per term k, slots 2k and 2k+1 are the swapped pair: (I_00, I_11), (I_01, I_10), (T_00, T_11), (T_01, T_10).
fn swap_logits() -> [(usize, usize, usize, usize); 8] {
    [(0, 0, 1, 0), (0, 1, 1, 1), (0, 0, 1, 1), (0, 1, 1, 0), (1, 0, 0, 0), (1, 1, 0, 1), (1, 0, 0, 1), (1, 1, 0, 0)]
}

/// `grad[id] += value` for a scalar parameter (one download and one write).
fn add_to_grad<B: Backend>(backend: &B, params: &mut ParamStore<B>, id: ParamId, value: f64) -> Result<()> {
    let [g] = params.grads_mut([id])?;
    let current = backend.download(B::as_ref(&g))?[0].to_real();
    backend.write(&[B::Master::from_real(current + value)], g)
}
