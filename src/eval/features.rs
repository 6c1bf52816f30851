//! Frozen features: images and texts through a [`Clip`] model in chunks of `batch_size`, back on the host as
//! L2-normalised `f32` rows (`[n, embed_dim]`, row-major).
//!
//! Encoding runs in evaluation mode (a ResNet's BatchNorms use their running statistics and leave them unchanged)
//! and puts the previous mode back afterwards, so a trainer can evaluate between steps without doing anything.

use crate::backend::{Backend, Elem};
use crate::data::shapes::{self, ShapesConfig, Split};
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::model::clip::{Clip, VisualTower};
use crate::params::ParamStore;

/// Scales each row of `x [rows, dim]` to unit L2 norm; an all-zero row stays zero (nothing to point anywhere).
pub fn l2_normalize_rows(x: &mut [f32], dim: usize) {
    if dim == 0 {
        return;
    }
    for row in x.chunks_exact_mut(dim) {
        let norm = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        }
    }
}

/// The image tower's training flag (`None` when it has no mode: a ViT has no BatchNorm).
fn visual_training<B: Backend>(model: &Clip<B>) -> Option<bool> {
    match &model.visual {
        VisualTower::Vit(_) => None,
        VisualTower::ResNet(t) => t.batchnorms().first().map(|(_, bn)| bn.training),
    }
}

/// Runs `f` with the model in evaluation mode, then restores the image tower's previous mode (also on error).
pub fn with_eval_mode<B: Backend, T>(model: &mut Clip<B>, f: impl FnOnce(&mut Clip<B>) -> Result<T>) -> Result<T> {
    let previous = visual_training(model);
    model.visual.set_training(false);
    let out = f(model);
    if let Some(training) = previous {
        model.visual.set_training(training);
    }
    out
}

fn check_batch_size(batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(Error::Invalid {
            op: "eval",
            msg: "batch size 0; use --batch-size 1 or more (default 256)".into(),
        });
    }
    Ok(())
}

/// L2-normalised image embeddings `[n, embed_dim]` of `images [n, 3, S, S]` (preprocessed host floats, S the
/// model's `image_size`), encoded `batch_size` images at a time in evaluation mode.
pub fn encode_images<B: Backend>(
    backend: &B,
    model: &mut Clip<B>,
    store: &mut ParamStore<B>,
    images: &[f32],
    batch_size: usize,
) -> Result<Vec<f32>> {
    check_batch_size(batch_size)?;
    let size = model.config.vision_cfg.image_size;
    let plane = 3 * size * size;
    if !images.len().is_multiple_of(plane) {
        return Err(Error::Invalid {
            op: "eval::encode_images",
            msg: format!(
                "{} floats is not a whole number of {size}×{size} RGB images ({plane} floats each); preprocess the \
                 images to the model's image_size",
                images.len()
            ),
        });
    }
    let dim = model.config.embed_dim;
    let mut out = Vec::with_capacity(images.len() / plane * dim);
    with_eval_mode(model, |model| {
        for chunk in images.chunks(batch_size * plane) {
            let n = chunk.len() / plane;
            let host: Vec<B::Act> = chunk.iter().map(|&v| B::Act::from_real(v as f64)).collect();
            let buf = backend.upload(&host)?;
            let emb = model.encode_image(backend, store, B::view(&buf), n)?;
            out.extend(backend.download(emb)?.into_iter().map(|v| v.to_real() as f32));
        }
        Ok(())
    })?;
    l2_normalize_rows(&mut out, dim);
    Ok(out)
}

/// L2-normalised text embeddings `[texts.len(), embed_dim]`, tokenized with CLIP's tokenizer at the model's context
/// length (too long: truncated with EOT last, as open_clip's `tokenize`), encoded `batch_size` texts at a time.
pub fn encode_texts<B: Backend>(
    backend: &B,
    model: &mut Clip<B>,
    store: &mut ParamStore<B>,
    texts: &[String],
    batch_size: usize,
) -> Result<Vec<f32>> {
    check_batch_size(batch_size)?;
    let context = model.config.text_cfg.context_length;
    let dim = model.config.embed_dim;
    let tokenizer = Tokenizer::for_vocab(model.config.text_cfg.vocab_size);
    let mut out = Vec::with_capacity(texts.len() * dim);
    with_eval_mode(model, |model| {
        for chunk in texts.chunks(batch_size) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let tokens = tokenizer.tokenize_batch(&refs, context);
            let emb = model.encode_text(backend, store, &tokens, chunk.len())?;
            out.extend(backend.download(emb)?.into_iter().map(|v| v.to_real() as f32));
        }
        Ok(())
    })?;
    l2_normalize_rows(&mut out, dim);
    Ok(out)
}

/// Image features of shapes samples, with their captions and labels, in index order.
pub struct ShapesFeatures {
    /// `[n, embed_dim]`, unit-norm rows.
    pub features: Vec<f32>,
    pub captions: Vec<String>,
    pub labels: Vec<usize>,
}

/// Encodes samples `0..min(count, split length)` of a shapes split, drawn `batch_size` at a time (memory holds one
/// batch of pixels). The set must be drawn at the model's `image_size`.
pub fn shapes_features<B: Backend>(
    backend: &B,
    model: &mut Clip<B>,
    store: &mut ParamStore<B>,
    shapes_cfg: &ShapesConfig,
    split: Split,
    count: usize,
    batch_size: usize,
) -> Result<ShapesFeatures> {
    shapes_cfg.validate()?;
    check_batch_size(batch_size)?;
    let size = model.config.vision_cfg.image_size;
    if shapes_cfg.resolution != size {
        return Err(Error::Invalid {
            op: "eval shapes",
            msg: format!(
                "shapes resolution {} differs from the model's image_size {size}; draw the set at {size} pixels",
                shapes_cfg.resolution
            ),
        });
    }
    let indices: Vec<usize> = (0..count.min(shapes_cfg.len(split))).collect();
    let mut out = ShapesFeatures { features: Vec::new(), captions: Vec::new(), labels: Vec::new() };
    for chunk in indices.chunks(batch_size) {
        let (images, captions, labels) = shapes::batch(shapes_cfg, split, chunk)?;
        out.features.extend(encode_images(backend, model, store, &images, batch_size)?);
        out.captions.extend(captions);
        out.labels.extend(labels);
    }
    Ok(out)
}
