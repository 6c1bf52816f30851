//! The CLIP model: an image tower (ViT or modified ResNet), the text tower, and the learnable log scale `t`
//! (`logit_scale`, initialised to ln(1/0.07)), trained with the contrastive loss of SPEC §1.1.
//!
//! A training step reads top to bottom: [`Clip::forward_loss`] runs both towers and the loss, [`Clip::backward`]
//! runs the loss backward and then each tower's backward, accumulating every gradient into the store.

use std::path::Path;

use crate::backend::{Backend, ClipLoss, Elem, Ref};
use crate::checkpoint::{self, StateDict};
use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, VisionLayers};
use crate::model::resnet::ModifiedResNet;
use crate::model::text::TextTransformer;
use crate::model::vit::VisionTransformer;
use crate::nn::Slot;
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

/// The image tower a config asks for (boxed: the two differ much in size).
pub enum VisualTower<B: Backend> {
    Vit(Box<VisionTransformer<B>>),
    ResNet(Box<ModifiedResNet<B>>),
}

impl<B: Backend> VisualTower<B> {
    pub fn forward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        batch: usize,
    ) -> Result<()> {
        match self {
            VisualTower::Vit(t) => t.forward(backend, params, images, batch),
            VisualTower::ResNet(t) => t.forward(backend, params, images, batch),
        }
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        match self {
            VisualTower::Vit(t) => t.out(),
            VisualTower::ResNet(t) => t.out(),
        }
    }

    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        d_out: Ref<'_, B, B::Act>,
    ) -> Result<()> {
        match self {
            VisualTower::Vit(t) => t.backward(backend, params, images, d_out),
            VisualTower::ResNet(t) => t.backward(backend, params, images, d_out),
        }
    }

    /// BatchNorm mode (only the ResNet has BatchNorm).
    pub fn set_training(&mut self, training: bool) {
        if let VisualTower::ResNet(t) = self {
            t.set_training(training);
        }
    }
}

pub struct Clip<B: Backend> {
    pub config: ModelConfig,
    pub visual: VisualTower<B>,
    pub text: TextTransformer<B>,
    pub logit_scale: ParamId,
    batch: usize,
    loss: Slot<B, B::Master>,
    loss_saved: Slot<B, B::Master>,
    d_image: Slot<B, B::Act>,
    d_text: Slot<B, B::Act>,
    /// Gradient accumulation: every micro-batch's features, computed first (SPEC: open_clip `--accum-freq`).
    cached_image: Slot<B, B::Act>,
    cached_text: Slot<B, B::Act>,
}

/// Where the multi-view objectives declare their training-only tensors (heads, a second logit scale).
pub const OBJECTIVE_PREFIX: &str = "objective.";

/// `ln(1/0.07)`: CLIP's initial log temperature.
pub const INITIAL_LOGIT_SCALE: f64 = 2.659_260_036_932_778;

impl<B: Backend> Clip<B> {
    /// Declares the whole model with open_clip's state-dict names.
    pub fn new(pb: &mut ParamBuilder, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let act = config.activation();
        let visual = pb.scope("visual", |pb| match config.vision_cfg.layers {
            VisionLayers::Transformer(_) => {
                Ok(VisualTower::Vit(Box::new(VisionTransformer::new(pb, &config.vision_cfg, config.embed_dim, act)?)))
            }
            VisionLayers::ResNet(_) => {
                Ok(VisualTower::ResNet(Box::new(ModifiedResNet::new(pb, &config.vision_cfg, config.embed_dim)?)))
            }
        })?;
        let text = TextTransformer::new(pb, &config.text_cfg, config.embed_dim, act)?;
        let logit_scale = pb.param("logit_scale", &[], Init::Constant(INITIAL_LOGIT_SCALE))?;
        Ok(Clip {
            config: config.clone(),
            visual,
            text,
            logit_scale,
            batch: 0,
            loss: Slot::default(),
            loss_saved: Slot::default(),
            d_image: Slot::default(),
            d_text: Slot::default(),
            cached_image: Slot::default(),
            cached_text: Slot::default(),
        })
    }

    /// The model and its parameters, drawn from `seed`.
    pub fn build(backend: &B, config: &ModelConfig, seed: u64) -> Result<(Self, ParamStore<B>)> {
        let mut pb = ParamBuilder::new();
        let model = Self::new(&mut pb, config)?;
        let store = pb.build(backend, &mut crate::testing::rng(seed))?;
        Ok((model, store))
    }

    /// Image embeddings `[batch, embed]` (not normalised) of `images [batch, 3, size, size]`.
    pub fn encode_image(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        batch: usize,
    ) -> Result<Ref<'_, B, B::Act>> {
        self.visual.forward(backend, params, images, batch)?;
        self.visual.out()
    }

    /// Text embeddings `[batch, embed]` (not normalised) of `tokens [batch, context]`.
    pub fn encode_text(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
        tokens: &[i32],
        batch: usize,
    ) -> Result<Ref<'_, B, B::Act>> {
        self.text.forward(backend, params, tokens, batch)?;
        self.text.out()
    }

    /// Both towers and the contrastive loss over `batch` image/text pairs; returns the loss.
    pub fn forward_loss(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        tokens: &[i32],
        batch: usize,
    ) -> Result<f64> {
        if batch == 0 {
            return Err(Error::Invalid { op: "Clip::forward_loss", msg: "empty batch".into() });
        }
        self.visual.forward(backend, params, images, batch)?;
        self.text.forward(backend, params, tokens, batch)?;
        let spec = self.loss_spec(batch);
        let loss = self.loss.ensure(backend, 1)?;
        let saved = self.loss_saved.ensure(backend, backend.clip_loss_saved_len(&spec))?;
        let log_scale = params.master_weight(self.logit_scale);
        backend.clip_loss_forward(&spec, self.visual.out()?, self.text.out()?, log_scale, loss, saved)?;
        self.batch = batch;
        Ok(backend.download(self.loss.get()?)?[0].to_real())
    }

    fn loss_spec(&self, batch: usize) -> ClipLoss {
        ClipLoss::symmetric(batch, self.config.embed_dim)
    }

    /// Gradients of the last [`Clip::forward_loss`] for every parameter, accumulated into the store.
    pub fn backward(&mut self, backend: &B, params: &mut ParamStore<B>, images: Ref<'_, B, B::Act>) -> Result<()> {
        let spec = self.loss_spec(self.batch);
        let len = self.batch * self.config.embed_dim;
        let d_image = self.d_image.ensure(backend, len)?;
        let d_text = self.d_text.ensure(backend, len)?;
        let (image, text, saved) = (self.visual.out()?, self.text.out()?, self.loss_saved.get()?);
        let (master, [d_log_scale]) = params.master_and_grads([self.logit_scale])?;
        let log_scale = B::slice(master, self.logit_scale.range());
        backend.clip_loss_backward(&spec, image, text, log_scale, saved, 1.0, d_image, Some(d_text), d_log_scale)?;
        self.visual.backward(backend, params, images, self.d_image.get()?)?;
        self.text.backward(backend, params, self.d_text.get()?)
    }

    /// Loss and gradients of one training step over `batch` pairs computed in `accum` micro-batches of
    /// `batch / accum` (open_clip's `--accum-freq`): the gradient is the full-batch gradient, every micro-batch
    /// seeing all `batch - 1` negatives, while tower activations are only ever held for one micro-batch.
    ///
    /// Summing the gradients of per-micro-batch losses would be a different objective (each micro-batch would see only
    /// its own negatives), so, as open_clip: (1) both towers encode every micro-batch with no activations kept for
    /// backward, the features cached; (2) the loss over the cached `batch × batch` similarities gives the gradient of
    /// every feature row; (3) each micro-batch is encoded again, now keeping activations, and its towers' backward
    /// runs on its rows of that gradient. The re-encoding reproduces the cached features exactly (same weights, same
    /// inputs, deterministic kernels), so this is the same as open_clip's per-micro-batch loss recomputation for the
    /// towers. One difference: open_clip back-propagates the loss `accum` times through `logit_scale` and so sums
    /// `accum` copies of its gradient; here it is added once, so every gradient equals the full-batch one.
    /// BatchNorm (ResNet) statistics are per micro-batch and updated in both passes, as in open_clip.
    /// `accum == 1` is [`Clip::forward_loss`] then [`Clip::backward`].
    pub fn forward_backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        tokens: &[i32],
        batch: usize,
        accum: usize,
    ) -> Result<f64> {
        if accum == 0 || batch == 0 || !batch.is_multiple_of(accum) {
            return Err(Error::Invalid {
                op: "Clip::forward_backward",
                msg: format!(
                    "batch {batch} cannot be split into {accum} equal micro-batches; use an accumulation count that \
                     divides the batch size"
                ),
            });
        }
        if accum == 1 {
            let loss = self.forward_loss(backend, params, images, tokens, batch)?;
            self.backward(backend, params, images)?;
            return Ok(loss);
        }
        let micro = batch / accum;
        let dim = self.config.embed_dim;
        let side = self.config.vision_cfg.image_size;
        let image_len = 3 * side * side;
        crate::error::check_len("Clip::forward_backward", "images", B::len(images), batch * image_len)?;
        let context = self.text.context_length();
        crate::error::check_len("Clip::forward_backward", "tokens", tokens.len(), batch * context)?;
        let image_rows = |j: usize| B::slice(images, j * micro * image_len..(j + 1) * micro * image_len);
        let token_rows = |j: usize| &tokens[j * micro * context..(j + 1) * micro * context];
        let feature_rows = |j: usize| j * micro * dim..(j + 1) * micro * dim;

        // (1) Features of every micro-batch.
        self.cached_image.ensure(backend, batch * dim)?;
        self.cached_text.ensure(backend, batch * dim)?;
        for j in 0..accum {
            self.visual.forward(backend, params, image_rows(j), micro)?;
            backend.copy(self.visual.out()?, B::slice_mut(self.cached_image.get_mut()?, feature_rows(j)))?;
            self.text.forward(backend, params, token_rows(j), micro)?;
            backend.copy(self.text.out()?, B::slice_mut(self.cached_text.get_mut()?, feature_rows(j)))?;
        }

        // (2) The loss over the whole batch and the gradient of every feature row (and of the logit scale, once).
        let spec = self.loss_spec(batch);
        let loss = self.loss.ensure(backend, 1)?;
        let saved = self.loss_saved.ensure(backend, backend.clip_loss_saved_len(&spec))?;
        let (image, text) = (self.cached_image.get()?, self.cached_text.get()?);
        backend.clip_loss_forward(&spec, image, text, params.master_weight(self.logit_scale), loss, saved)?;
        let d_image = self.d_image.ensure(backend, batch * dim)?;
        let d_text = self.d_text.ensure(backend, batch * dim)?;
        let saved = self.loss_saved.get()?;
        let (master, [d_log_scale]) = params.master_and_grads([self.logit_scale])?;
        let log_scale = B::slice(master, self.logit_scale.range());
        backend.clip_loss_backward(&spec, image, text, log_scale, saved, 1.0, d_image, Some(d_text), d_log_scale)?;

        // (3) Each micro-batch again, with activations, and its share of the gradient through both towers.
        for j in 0..accum {
            self.visual.forward(backend, params, image_rows(j), micro)?;
            self.visual.backward(backend, params, image_rows(j), B::slice(self.d_image.get()?, feature_rows(j)))?;
            self.text.forward(backend, params, token_rows(j), micro)?;
            self.text.backward(backend, params, B::slice(self.d_text.get()?, feature_rows(j)))?;
        }
        self.batch = 0;
        Ok(backend.download(self.loss.get()?)?[0].to_real())
    }

    /// The integer entries of the state dict: each BatchNorm's `num_batches_tracked` (ResNet only).
    pub fn counters(&self) -> Vec<(String, u64)> {
        match &self.visual {
            VisualTower::Vit(_) => Vec::new(),
            VisualTower::ResNet(t) => t
                .batchnorms()
                .into_iter()
                .map(|(name, bn)| (format!("visual.{name}.num_batches_tracked"), bn.num_batches_tracked))
                .collect(),
        }
    }

    /// The model's state dict, as open_clip names it.
    pub fn state_dict(&self, backend: &B, params: &ParamStore<B>) -> Result<StateDict> {
        checkpoint::state_dict(backend, params, &self.counters())
    }

    /// Loads a state dict strictly (every tensor present with its shape, nothing else). The training-only heads of
    /// a multi-view objective (`objective.*`, see `crate::objective::multiview`) are skipped when this store has none,
    /// so a model trained with `--objective declip` evaluates like any CLIP.
    pub fn load_state_dict(&mut self, backend: &B, params: &mut ParamStore<B>, dict: &StateDict) -> Result<()> {
        let has_heads = params.layout().entries().iter().any(|e| e.name.starts_with(OBJECTIVE_PREFIX));
        let without_heads: StateDict;
        let dict = if has_heads {
            dict
        } else {
            without_heads = dict
                .iter()
                .filter(|(k, _)| !k.starts_with(OBJECTIVE_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            &without_heads
        };
        let names: Vec<String> = self.counters().into_iter().map(|(name, _)| name).collect();
        let values = checkpoint::apply_state_dict(backend, params, dict, &names)?;
        if let VisualTower::ResNet(t) = &mut self.visual {
            for (bn, (_, value)) in t.batchnorms_mut().into_iter().zip(values) {
                bn.num_batches_tracked = value;
            }
        }
        Ok(())
    }

    /// Writes the model file (open_clip's state dict as safetensors), atomically.
    pub fn save(&self, backend: &B, params: &ParamStore<B>, path: &Path) -> Result<()> {
        checkpoint::save_safetensors(path, &self.state_dict(backend, params)?)
    }

    /// Reads a model file written by [`Clip::save`] or by open_clip (`safetensors.torch.save_file(model.state_dict())`).
    pub fn load(&mut self, backend: &B, params: &mut ParamStore<B>, path: &Path) -> Result<()> {
        let dict = checkpoint::load_safetensors(path)?;
        self.load_state_dict(backend, params, &dict)
    }
}
