//! The Vision Transformer image tower (SPEC §1.3), open_clip's `VisionTransformer` with class-token pooling:
//! patches by a strided convolution, a class token prepended, positional embedding, `ln_pre`, the Transformer,
//! `ln_post` on the class token, then `· proj`.

use crate::backend::{Activation, Backend, Ref};
use crate::error::{Error, Result};
use crate::model::config::{VisionConfig, VisionLayers};
use crate::model::transformer::{Transformer, TransformerInit};
use crate::nn::{Conv2dLayer, LayerNorm, Projection, Slot};
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

pub struct VisionTransformer<B: Backend> {
    pub conv1: Conv2dLayer<B>,
    pub class_embedding: ParamId,
    pub positional_embedding: ParamId,
    pub ln_pre: LayerNorm<B>,
    pub transformer: Transformer<B>,
    pub ln_post: LayerNorm<B>,
    pub proj: Projection<B>,
    image_size: usize,
    patch: usize,
    width: usize,
    batch: usize,
    /// Patch tokens `[batch, grid², width]` (the convolution output transposed).
    patches: Slot<B, B::Act>,
    /// `[batch, grid²+1, width]`: class token, patch tokens, plus the positional embedding.
    tokens: Slot<B, B::Act>,
    /// `[batch, width]` gradients: of the projection input, then of the pooled token (reused for the class rows).
    d_pooled: Slot<B, B::Act>,
    d_token: Slot<B, B::Act>,
    /// `[batch, seq, width]` gradient of the embedded tokens (before ln_pre).
    d_tokens: Slot<B, B::Act>,
    /// `[batch, seq, width]` gradient of ln_pre's output, then scratch for the patch rows.
    d_ln_pre: Slot<B, B::Act>,
    /// Gradient of the convolution output `[batch, width, grid²]`.
    d_conv: Slot<B, B::Act>,
}

impl<B: Backend> VisionTransformer<B> {
    /// Declares `conv1.weight`, `class_embedding`, `positional_embedding`, `ln_pre`, `transformer.resblocks.*`,
    /// `ln_post` and `proj` (relative to the caller's `visual` scope), initialised as open_clip does.
    pub fn new(pb: &mut ParamBuilder, cfg: &VisionConfig, embed_dim: usize, act: Activation) -> Result<Self> {
        let (VisionLayers::Transformer(layers), Some(patch)) = (&cfg.layers, cfg.patch_size) else {
            return Err(Error::Invalid {
                op: "VisionTransformer",
                msg: "vision_cfg needs integer layers and patch_size".into(),
            });
        };
        let width = cfg.width;
        let grid = cfg.image_size / patch;
        let scale = (width as f64).powf(-0.5);
        let conv1 = Conv2dLayer::new(pb, "conv1", 3, width, patch, patch, 0, None)?;
        let class_embedding = pb.param("class_embedding", &[width], Init::Normal(scale))?;
        let positional_embedding = pb.param("positional_embedding", &[grid * grid + 1, width], Init::Normal(scale))?;
        let ln_pre = LayerNorm::new(pb, "ln_pre", width)?;
        let heads = width / cfg.head_width;
        let transformer = pb.scope("transformer", |pb| {
            Transformer::new(pb, width, *layers, heads, cfg.mlp_ratio, act, false, TransformerInit::PyTorch)
        })?;
        let ln_post = LayerNorm::new(pb, "ln_post", width)?;
        let proj = Projection::new(pb, "proj", width, embed_dim, Init::Normal(scale))?;
        Ok(VisionTransformer {
            conv1,
            class_embedding,
            positional_embedding,
            ln_pre,
            transformer,
            ln_post,
            proj,
            image_size: cfg.image_size,
            patch,
            width,
            batch: 0,
            patches: Slot::default(),
            tokens: Slot::default(),
            d_pooled: Slot::default(),
            d_token: Slot::default(),
            d_tokens: Slot::default(),
            d_ln_pre: Slot::default(),
            d_conv: Slot::default(),
        })
    }

    fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    fn seq(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// `images [batch, 3, image_size, image_size]` → `out [batch, embed]`.
    pub fn forward(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        batch: usize,
    ) -> Result<()> {
        let (width, grid2, seq) = (self.width, self.grid() * self.grid(), self.seq());
        self.conv1.forward(backend, params, images, batch, self.image_size, self.image_size)?;
        // [batch, width, grid²] → [batch, grid², width].
        let patches = self.patches.ensure(backend, batch * grid2 * width)?;
        backend.transpose(self.conv1.out()?, patches, batch, width, grid2)?;
        // tokens[b] = [class_embedding; patches[b]] + positional_embedding.
        let mut tokens = self.tokens.ensure(backend, batch * seq * width)?;
        let class = params.weight(self.class_embedding);
        backend.copy_rows(class, 0, B::reborrow(&mut tokens), seq * width, batch, width)?;
        let after_class = B::slice_mut(B::reborrow(&mut tokens), width..batch * seq * width);
        backend.copy_rows(self.patches.get()?, grid2 * width, after_class, seq * width, batch, grid2 * width)?;
        backend.add_row_vector(tokens, params.weight(self.positional_embedding), batch, seq * width)?;
        self.ln_pre.forward(backend, params, self.tokens.get()?, batch * seq)?;
        // Only the class token is read after the Transformer (LayerNorm is per token, so pooling before ln_post is
        // exact): the last block runs for it alone.
        let class_index = vec![0i32; batch];
        self.transformer.forward_pooled(backend, params, self.ln_pre.out()?, batch, seq, &class_index)?;
        self.ln_post.forward(backend, params, self.transformer.out()?, batch)?;
        self.proj.forward(backend, params, self.ln_post.out()?, batch)?;
        self.batch = batch;
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.proj.out()
    }

    /// Accumulates every parameter gradient given `d_out [batch, embed]` (no image gradient).
    pub fn backward(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        images: Ref<'_, B, B::Act>,
        d_out: Ref<'_, B, B::Act>,
    ) -> Result<()> {
        let (batch, width, grid2, seq) = (self.batch, self.width, self.grid() * self.grid(), self.seq());
        let d_pooled = self.d_pooled.ensure(backend, batch * width)?;
        self.proj.backward(backend, params, self.ln_post.out()?, d_out, Some(d_pooled))?;
        let d_token = self.d_token.ensure(backend, batch * width)?;
        self.ln_post.backward(backend, params, self.transformer.out()?, self.d_pooled.get()?, d_token)?;
        let d_ln_pre = self.d_ln_pre.ensure(backend, batch * seq * width)?;
        self.transformer.backward_pooled(backend, params, self.ln_pre.out()?, self.d_token.get()?, d_ln_pre)?;
        // The gradient of the embedded tokens (class, patches, + positions).
        let d_embedded = self.d_tokens.ensure(backend, batch * seq * width)?;
        self.ln_pre.backward(backend, params, self.tokens.get()?, self.d_ln_pre.get()?, d_embedded)?;
        let d_embedded = self.d_tokens.get()?;
        let [d_pos] = params.grads_mut([self.positional_embedding])?;
        backend.sum_rows(d_embedded, d_pos, batch, seq * width, true)?;
        // The class embedding's gradient: the class rows, gathered into d_pooled, summed over the batch.
        backend.copy_rows(d_embedded, seq * width, self.d_pooled.get_mut()?, width, batch, width)?;
        let [d_class_embedding] = params.grads_mut([self.class_embedding])?;
        backend.sum_rows(self.d_pooled.get()?, d_class_embedding, batch, width, true)?;
        // The patch rows, gathered into d_ln_pre, back to the convolution's [batch, width, grid²] layout.
        let patch_rows = B::slice(d_embedded, width..batch * seq * width);
        let scratch = B::slice_mut(self.d_ln_pre.get_mut()?, 0..batch * grid2 * width);
        backend.copy_rows(patch_rows, seq * width, scratch, grid2 * width, batch, grid2 * width)?;
        let d_conv = self.d_conv.ensure(backend, batch * grid2 * width)?;
        backend.transpose(B::slice(self.d_ln_pre.get()?, 0..batch * grid2 * width), d_conv, batch, grid2, width)?;
        self.conv1.backward(backend, params, images, self.d_conv.get()?, None)
    }
}
