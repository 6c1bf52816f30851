//! The views a multi-view objective trains on, drawn on the CPU from one batch of shapes samples (SPEC §2, §3):
//! each image and caption augmented per view with its own seeded stream, tokenized, and (DeCLIP) the first caption
//! view masked for the language-modelling loss.
//!
//! Views are stacked view-major (`[view][sample]`), so each tower runs ONCE per step over all its views (a batch of
//! `views · batch` rows). The normalisation is CLIP's mean and std (what the zero-shot evaluation feeds the model),
//! not ImageNet's that the reference recipes use, so that training and evaluation see the same input statistics.

use crate::data::augment::{augment_batch_view, sample_rng, ViewRecipe};
use crate::data::image::{RgbImage, CLIP_MEAN, CLIP_STD};
use crate::data::shapes::Sample;
use crate::data::text_augment::TextAug;
use crate::data::tokenizer::Tokenizer;
use crate::error::Result;
use crate::objective::kind::{AugmentPolicy, ObjectiveKind};
use crate::objective::mlm::{mask_tokens, MaskIds};

/// Stream ids of the text views and of the masking draw (the image views use 0, 1, 2).
const TEXT_VIEW_STREAM: u64 = 100;
const MASK_STREAM: u64 = 200;

/// One step's views.
pub struct ViewBatch {
    /// `[image_views · batch, 3, R, R]`, view-major.
    pub images: Vec<f32>,
    pub image_views: usize,
    /// `[text_views · batch, context]`, view-major; DeCLIP's view 0 is the MASKED caption.
    pub tokens: Vec<i32>,
    pub text_views: usize,
    /// DeCLIP: the masked-language-modelling labels of text view 0, `[batch · context]` (−100 where unselected).
    pub mlm_labels: Option<Vec<i32>>,
}

/// The image recipes of each objective's views (CLIP's statistics; without the colour operations for
/// [`AugmentPolicy::Geometric`]; the whole image for [`AugmentPolicy::None`]).
fn image_recipes(kind: ObjectiveKind, size: usize, policy: AugmentPolicy) -> Vec<ViewRecipe> {
    let clip_stats = |mut r: ViewRecipe| {
        (r.mean, r.std) = (CLIP_MEAN, CLIP_STD);
        if policy != AugmentPolicy::Paper {
            (r.jitter, r.grayscale_p, r.blur_p, r.solarize_p) = (None, 0.0, 0.0, 0.0);
        }
        if policy == AugmentPolicy::None {
            // The whole image at its own size: RandomResizedCrop with scale and ratio 1 on a square image.
            (r.scale, r.ratio, r.flip_p) = ((1.0, 1.0), (1.0, 1.0), 0.0);
        }
        r
    };
    match kind {
        ObjectiveKind::Clip => vec![clip_stats(ViewRecipe::crop_only(size))],
        ObjectiveKind::Declip => vec![clip_stats(ViewRecipe::declip(size)), clip_stats(ViewRecipe::declip(size))],
        _ => vec![
            clip_stats(ViewRecipe::cl2l_global(size)),
            clip_stats(ViewRecipe::cl2l_local(size)),
            clip_stats(ViewRecipe::cl2l_local(size)),
        ],
    }
}

/// The caption of text view `view` of one sample.
fn text_view<R: rand::Rng>(kind: ObjectiveKind, aug: &TextAug, caption: &str, view: usize, rng: &mut R) -> String {
    match (kind, view) {
        (ObjectiveKind::Clip, _) | (ObjectiveKind::Declip, 0) => caption.to_owned(),
        (ObjectiveKind::Declip, _) => aug.declip_view(caption, rng),
        (_, 0) => aug.cl2l_global(caption, rng),
        _ => aug.cl2l_strong(caption, rng),
    }
}

/// The views of `samples` for `kind` at training step `step`: a function of (seed, step, samples) only.
#[allow(clippy::too_many_arguments)]
pub fn make_views(
    kind: ObjectiveKind,
    policy: AugmentPolicy,
    samples: &[Sample],
    tokenizer: &Tokenizer,
    context: usize,
    seed: u64,
    step: u64,
) -> Result<ViewBatch> {
    let images: Vec<RgbImage> = samples
        .iter()
        .map(|s| RgbImage::from_raw(s.resolution, s.resolution, s.image.clone()))
        .collect::<Result<_>>()?;
    let size = samples.first().map_or(0, |s| s.resolution);
    let recipes = image_recipes(kind, size, policy);
    let mut pixels = Vec::new();
    for (v, recipe) in recipes.iter().enumerate() {
        pixels.extend(augment_batch_view(&images, recipe, seed, step, v as u64)?);
    }
    let (_, text_views) = kind.views();
    let aug = TextAug::new();
    let mut tokens = Vec::with_capacity(text_views * samples.len() * context);
    for v in 0..text_views {
        let texts: Vec<String> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut rng = sample_rng(seed, step, TEXT_VIEW_STREAM + v as u64, i);
                text_view(kind, &aug, &s.caption, v, &mut rng)
            })
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        tokens.extend(tokenizer.tokenize_batch(&refs, context));
    }
    let mlm_labels = if kind == ObjectiveKind::Declip {
        let ids = MaskIds::from_tokenizer(tokenizer).ok_or_else(|| crate::error::Error::Invalid {
            op: "DeCLIP views",
            msg: "the tokenizer has no <|mask|> token; DeCLIP trains with Tokenizer::declip".into(),
        })?;
        let first = &tokens[..samples.len() * context];
        let (masked, labels) = mask_tokens(first, context, &ids, &mut sample_rng(seed, step, MASK_STREAM, 0))?;
        tokens[..samples.len() * context].copy_from_slice(&masked);
        Some(labels)
    } else {
        None
    };
    Ok(ViewBatch { images: pixels, image_views: recipes.len(), tokens, text_views, mlm_labels })
}
