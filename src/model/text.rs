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
    /// All-token mode ([`TextTransformer::forward_all_tokens`], DeCLIP's masked language modelling): the EOT rows
    /// of ln_final's output, their device indices, and the all-token gradients.
    all_tokens: bool,
    eot_index: Slot<B, i32>,
    pooled: Slot<B, B::Act>,
    d_tokens: Slot<B, B::Act>,
    d_ln_in_all: Slot<B, B::Act>,
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
            all_tokens: false,
            eot_index: Slot::default(),
            pooled: Slot::default(),
            d_tokens: Slot::default(),
            d_ln_in_all: Slot::default(),
        })
    }

    pub fn context_length(&self) -> usize {
        self.context
    }

    /// `tokens [batch, context]` (host ids, as the tokenizer gives them) → `out [batch, embed]`.
    pub fn forward(&mut self, backend: &B, params: &ParamStore<B>, tokens: &[i32], batch: usize) -> Result<()> {
        let eot = self.embed(backend, params, tokens, batch)?;
        // Only the EOT token is read after the Transformer (LayerNorm is per token, so pooling before ln_final is
        // exact): the last block runs for it alone.
        self.transformer.forward_pooled(backend, params, self.embedded.get()?, batch, self.context, &eot)?;
        self.ln_final.forward(backend, params, self.transformer.out()?, batch)?;
        self.text_projection.forward(backend, params, self.ln_final.out()?, batch)?;
        (self.batch, self.all_tokens) = (batch, false);
        Ok(())
    }

    /// [`TextTransformer::forward`] that also keeps ln_final's output for EVERY token ([`Self::token_features`],
    /// `[batch·context, width]`), for DeCLIP's masked-language-modelling head: the last block runs on all rows and
    /// the EOT rows are gathered after ln_final. `out()` is the same embedding the pooled forward gives.
    pub fn forward_all_tokens(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
        tokens: &[i32],
        batch: usize,
    ) -> Result<()> {
        let (context, width) = (self.context, self.width);
        let eot = self.embed(backend, params, tokens, batch)?;
        backend.write(&eot, self.eot_index.ensure(backend, batch)?)?;
        self.transformer.forward(backend, params, self.embedded.get()?, batch, context, None)?;
        self.ln_final.forward(backend, params, self.transformer.out()?, batch * context)?;
        let pooled = self.pooled.ensure(backend, batch * width)?;
        backend.gather_tokens(self.ln_final.out()?, self.eot_index.get()?, pooled, batch, context, width)?;
        self.text_projection.forward(backend, params, self.pooled.get()?, batch)?;
        (self.batch, self.all_tokens) = (batch, true);
        Ok(())
    }

    /// ln_final's output for every token, `[batch·context, width]` (after [`Self::forward_all_tokens`]).
    pub fn token_features(&self) -> Result<Ref<'_, B, B::Act>> {
        if !self.all_tokens {
            return Err(Error::Invalid {
                op: "TextTransformer::token_features",
                msg: "the last forward pooled the EOT token only; use forward_all_tokens".into(),
            });
        }
        self.ln_final.out()
    }

    /// Token plus positional embedding into `embedded`; returns each row's pooling position (the first position of
    /// the largest id: torch.argmax's choice on ties).
    fn embed(&mut self, backend: &B, params: &ParamStore<B>, tokens: &[i32], batch: usize) -> Result<Vec<i32>> {
        let (context, width) = (self.context, self.width);
        if tokens.len() != batch * context {
            return Err(Error::Shape {
                op: "TextTransformer::forward",
                arg: "tokens",
                got: tokens.len(),
                want: batch * context,
            });
        }
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
        Ok(eot)
    }

    pub fn out(&self) -> Result<Ref<'_, B, B::Act>> {
        self.text_projection.out()
    }

    /// Accumulates every parameter gradient given `d_out [batch, embed]`.
    pub fn backward(&mut self, backend: &B, params: &mut ParamStore<B>, d_out: Ref<'_, B, B::Act>) -> Result<()> {
        self.backward_with_tokens(backend, params, d_out, None)
    }

    /// [`TextTransformer::backward`] after either forward; after [`Self::forward_all_tokens`], `d_tokens`
    /// (`[batch·context, width]`, the gradient of [`Self::token_features`]) is added to the pooled rows' gradient.
    pub fn backward_with_tokens(
        &mut self,
        backend: &B,
        params: &mut ParamStore<B>,
        d_out: Ref<'_, B, B::Act>,
        d_tokens: Option<Ref<'_, B, B::Act>>,
    ) -> Result<()> {
        let (batch, context, width) = (self.batch, self.context, self.width);
        let d_pooled = self.d_pooled.ensure(backend, batch * width)?;
        self.d_embedded.ensure(backend, batch * context * width)?;
        if self.all_tokens {
            self.text_projection.backward(backend, params, self.pooled.get()?, d_out, Some(d_pooled))?;
            let rows = batch * context;
            let d_all = self.d_tokens.ensure(backend, rows * width)?;
            backend.gather_tokens_backward(
                self.d_pooled.get()?,
                self.eot_index.get()?,
                d_all,
                batch,
                context,
                width,
            )?;
            if let Some(d) = d_tokens {
                backend.axpy(1.0, d, self.d_tokens.get_mut()?)?;
            }
            let d_ln_in = self.d_ln_in_all.ensure(backend, rows * width)?;
            self.ln_final.backward(backend, params, self.transformer.out()?, self.d_tokens.get()?, d_ln_in)?;
            let (embedded, d_ln_in) = (self.embedded.get()?, self.d_ln_in_all.get()?);
            self.transformer.backward(backend, params, embedded, d_ln_in, None, self.d_embedded.get_mut()?)?;
        } else {
            if d_tokens.is_some() {
                return Err(Error::Invalid {
                    op: "TextTransformer::backward_with_tokens",
                    msg: "token gradients given after a pooled forward; use forward_all_tokens".into(),
                });
            }
            self.text_projection.backward(backend, params, self.ln_final.out()?, d_out, Some(d_pooled))?;
            let d_ln_in = self.d_ln_in.ensure(backend, batch * width)?;
            self.ln_final.backward(backend, params, self.transformer.out()?, self.d_pooled.get()?, d_ln_in)?;
            let (embedded, d_ln_in) = (self.embedded.get()?, self.d_ln_in.get()?);
            self.transformer.backward_pooled(backend, params, embedded, d_ln_in, self.d_embedded.get_mut()?)?;
        }
        let d_embedded = self.d_embedded.get()?;
        let [d_pos] = params.grads_mut([self.positional_embedding])?;
        backend.sum_rows(d_embedded, d_pos, batch, context * width, true)?;
        self.token_embedding.backward(backend, params, self.ids.get()?, d_embedded)
    }
}
