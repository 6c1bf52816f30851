//! The text Transformer (SPEC §1.4): token + positional embedding, a causal Transformer, `ln_final`, the feature at
//! the EOT position (the argmax of the token ids: EOT has the highest id), `· text_projection`. Names are open_clip's
//! CLIP top-level ones (`token_embedding.weight`, `positional_embedding`, `transformer.resblocks.*`, `ln_final`,
//! `text_projection`).

use crate::backend::{Activation, Backend, Ref};
use crate::error::{Error, Result};
use crate::model::config::TextConfig;
use crate::model::transformer::{Transformer, TransformerInit};
use crate::nn::{Embedding, LayerNorm, Projection, Slot};
use crate::params::{Init, ParamBuilder, ParamId, ParamStore};

pub struct TextTransformer<B: Backend> {
    pub token_embedding: Embedding<B>,
    pub positional_embedding: ParamId,
    pub transformer: Transformer<B>,
    pub ln_final: LayerNorm<B>,
    pub text_projection: Projection<B>,
    context: usize,
    width: usize,
    batch: usize,
    ids: Slot<B, i32>,
    /// Token plus positional embedding: the Transformer's input.
    embedded: Slot<B, B::Act>,
    d_pooled: Slot<B, B::Act>,
    d_ln_in: Slot<B, B::Act>,
    d_embedded: Slot<B, B::Act>,
}

impl<B: Backend> TextTransformer<B> {
    /// Declares the text tower's tensors in the caller's scope, initialised as openai/CLIP does (SPEC §1.5).
    pub fn new(pb: &mut ParamBuilder, cfg: &TextConfig, embed_dim: usize, act: Activation) -> Result<Self> {
        let width = cfg.width;
        let token_embedding = Embedding::new(pb, "token_embedding", cfg.vocab_size, width, Init::Normal(0.02))?;
        let positional_embedding =
            pb.param("positional_embedding", &[cfg.context_length, width], Init::Normal(0.01))?;
        let transformer = pb.scope("transformer", |pb| {
            Transformer::new(pb, width, cfg.layers, cfg.heads, cfg.mlp_ratio, act, true, TransformerInit::Clip)
        })?;
        let ln_final = LayerNorm::new(pb, "ln_final", width)?;
        let std = (width as f64).powf(-0.5);
        let text_projection = Projection::new(pb, "text_projection", width, embed_dim, Init::Normal(std))?;
        Ok(TextTransformer {
            token_embedding,
            positional_embedding,
            transformer,
            ln_final,
            text_projection,
            context: cfg.context_length,
            width,
            batch: 0,
            ids: Slot::default(),
            embedded: Slot::default(),
            d_pooled: Slot::default(),
            d_ln_in: Slot::default(),
            d_embedded: Slot::default(),
        })
    }

    pub fn context_length(&self) -> usize {
        self.context
    }

    /// `tokens [batch, context]` (host ids, as the tokenizer gives them) → `out [batch, embed]`.
    pub fn forward(&mut self, backend: &B, params: &ParamStore<B>, tokens: &[i32], batch: usize) -> Result<()> {
        let (context, width) = (self.context, self.width);
        if tokens.len() != batch * context {
            return Err(Error::Shape {
                op: "TextTransformer::forward",
                arg: "tokens",
                got: tokens.len(),
                want: batch * context,
            });
        }
        // Pool at the first position of the largest id in each row (torch.argmax's choice on ties).
        let eot: Vec<i32> = tokens
            .chunks(context)
            .map(|row| {
                let max = *row.iter().max().expect("context ≥ 1");
                row.iter().position(|&t| t == max).expect("max is in the row") as i32
            })
            .collect();
        backend.write(tokens, self.ids.ensure(backend, batch * context)?)?;

        self.token_embedding.forward(backend, params, self.ids.get()?)?;
        let mut embedded = self.embedded.ensure(backend, batch * context * width)?;
        backend.copy(self.token_embedding.out()?, B::reborrow(&mut embedded))?;
        backend.add_row_vector(embedded, params.weight(self.positional_embedding), batch, context * width)?;
        // Only the EOT token is read after the Transformer (LayerNorm is per token, so pooling before ln_final is
        // exact): the last block runs for it alone.
        self.transformer.forward_pooled(backend, params, self.embedded.get()?, batch, context, &eot)?;
        self.ln_final.forward(backend, params, self.transformer.out()?, batch)?;
        self.text_projection.forward(backend, params, self.ln_final.out()?, batch)?;
        self.batch = batch;
        Ok(())
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.text_projection.out()
    }

    /// Accumulates every parameter gradient given `d_out [batch, embed]`.
    pub fn backward(&mut self, backend: &B, params: &mut ParamStore<B>, d_out: Ref<'_, B, B::Act>) -> Result<()> {
        let (batch, context, width) = (self.batch, self.context, self.width);
        let d_pooled = self.d_pooled.ensure(backend, batch * width)?;
        self.text_projection.backward(backend, params, self.ln_final.out()?, d_out, Some(d_pooled))?;
        let d_ln_in = self.d_ln_in.ensure(backend, batch * width)?;
        self.ln_final.backward(backend, params, self.transformer.out()?, self.d_pooled.get()?, d_ln_in)?;
        let d_embedded = self.d_embedded.ensure(backend, batch * context * width)?;
        self.transformer.backward_pooled(backend, params, self.embedded.get()?, self.d_ln_in.get()?, d_embedded)?;
        let d_embedded = self.d_embedded.get()?;
        let [d_pos] = params.grads_mut([self.positional_embedding])?;
        backend.sum_rows(d_embedded, d_pos, batch, context * width, true)?;
        self.token_embedding.backward(backend, params, self.ids.get()?, d_embedded)
    }
}
