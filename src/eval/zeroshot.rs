//! Zero-shot classification (SPEC §1.8): a classifier built from text alone, scored by top-k accuracy.
//!
//! Class `c`'s weight is the mean of the L2-normalised text embeddings of every template filled with its name,
//! L2-normalised again (open_clip's `build_zero_shot_classifier`); an image is scored against each class by the dot
//! product of its normalised embedding with that weight (the logit scale does not change the ranking).
//!
//! Class names and templates are data, one per line (`{}` stands for the class name): the shapes set's ship in
//! `data/zeroshot/`, and `imagefolder_templates.txt` (from OpenAI CLIP's ImageNet prompt list, MIT) is the default
//! for a user's folder. Filling a template uses [`shapes::prompt`]: `{}` is replaced by the name, and "a {}" becomes
//! "an {}" before a vowel ("a photo of an apple.").

use std::path::Path;

use rayon::prelude::*;

use crate::backend::Backend;
use crate::data::shapes::Split;
use crate::data::{list_lines, shapes};
use crate::error::{Error, Result};
use crate::eval::features::{encode_texts, l2_normalize_rows, shapes_features};
use crate::model::clip::Clip;
use crate::params::ParamStore;

/// Generic templates for a user's ImageFolder when no `--templates` file is given.
pub const IMAGEFOLDER_TEMPLATES_FILE: &str = include_str!("../../data/zeroshot/imagefolder_templates.txt");

/// Parses a class-names list (one per line; blank lines skipped); an empty list is an error naming `source`.
pub fn parse_classnames(text: &str, source: &str) -> Result<Vec<String>> {
    let names: Vec<String> = list_lines(text).into_iter().map(str::to_string).collect();
    if names.is_empty() {
        return Err(Error::Invalid {
            op: "class names",
            msg: format!("{source} holds no class name; write one class name per line"),
        });
    }
    Ok(names)
}

/// Parses a templates list (one per line; blank lines skipped): it must hold at least one template, and every
/// template exactly one `{}`; the error names `source` and the line.
pub fn parse_templates(text: &str, source: &str) -> Result<Vec<String>> {
    let templates: Vec<String> = list_lines(text).into_iter().map(str::to_string).collect();
    if templates.is_empty() {
        return Err(Error::Invalid {
            op: "templates",
            msg: format!("{source} holds no template; write one per line, e.g. `a photo of a {{}}.`"),
        });
    }
    if let Some(bad) = templates.iter().find(|t| t.matches("{}").count() != 1) {
        return Err(Error::Invalid {
            op: "templates",
            msg: format!("{source}: template {bad:?} must contain `{{}}` exactly once, where the class name goes"),
        });
    }
    Ok(templates)
}

fn read_list(path: &Path, what: &'static str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|source| Error::Io { path: format!("{what} file {}", path.display()), source })
}

/// Reads a class-names file (see [`parse_classnames`]).
pub fn read_classnames(path: &Path) -> Result<Vec<String>> {
    parse_classnames(&read_list(path, "class names")?, &format!("class names file {}", path.display()))
}

/// Reads a templates file (see [`parse_templates`]).
pub fn read_templates(path: &Path) -> Result<Vec<String>> {
    parse_templates(&read_list(path, "templates")?, &format!("templates file {}", path.display()))
}

/// Every class's prompts, `[class][template]`.
pub fn prompts(classnames: &[String], templates: &[String]) -> Vec<Vec<String>> {
    classnames.iter().map(|c| templates.iter().map(|t| shapes::prompt(t, c)).collect()).collect()
}

/// The zero-shot classifier `[classes, embed_dim]` (row `c` = class `c`'s unit-norm weight) from the text
/// embeddings of every class's prompts.
pub fn classifier<B: Backend>(
    backend: &B,
    model: &mut Clip<B>,
    store: &mut ParamStore<B>,
    classnames: &[String],
    templates: &[String],
    batch_size: usize,
) -> Result<Vec<f32>> {
    if classnames.is_empty() || templates.is_empty() {
        return Err(Error::Invalid {
            op: "zero-shot classifier",
            msg: format!(
                "{} class names and {} templates; need at least one of each",
                classnames.len(),
                templates.len()
            ),
        });
    }
    let texts: Vec<String> = prompts(classnames, templates).into_iter().flatten().collect();
    let embeddings = encode_texts(backend, model, store, &texts, batch_size)?;
    Ok(classifier_from_embeddings(&embeddings, classnames.len(), templates.len(), model.config.embed_dim))
}

/// The classifier from unit-norm prompt embeddings `[classes · templates, dim]` (class-major): per class, the mean
/// over its templates, L2-normalised.
pub fn classifier_from_embeddings(embeddings: &[f32], classes: usize, templates: usize, dim: usize) -> Vec<f32> {
    let mut weights = vec![0f32; classes * dim];
    for (c, w) in weights.chunks_exact_mut(dim).enumerate() {
        let mut sum = vec![0f64; dim];
        for t in 0..templates {
            let row = &embeddings[(c * templates + t) * dim..][..dim];
            sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
        }
        w.iter_mut().zip(&sum).for_each(|(w, &s)| *w = (s / templates as f64) as f32);
    }
    l2_normalize_rows(&mut weights, dim);
    weights
}

/// `x [n, dim] · wᵀ` for `w [m, dim]`: `[n, m]` scores, each a dot product accumulated in f64 (rows in parallel;
/// the result does not depend on the thread count).
pub fn scores(x: &[f32], w: &[f32], dim: usize) -> Vec<f32> {
    if dim == 0 {
        return Vec::new();
    }
    let m = w.len() / dim;
    let mut out = vec![0f32; x.len() / dim * m];
    out.par_chunks_mut(m.max(1)).zip(x.par_chunks_exact(dim)).for_each(|(out, row)| {
        for (o, col) in out.iter_mut().zip(w.chunks_exact(dim)) {
            *o = row.iter().zip(col).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        }
    });
    out
}

/// 0-based rank of column `target` in `row`: the number of entries that beat it, a tie counting as a win for the
/// lower index (so equal scores rank in index order, and a constant row ranks column 0 first).
pub fn rank_of(row: &[f32], target: usize) -> usize {
    let s = row[target];
    row.iter().enumerate().filter(|&(j, &v)| v > s || (v == s && j < target)).count()
}

/// Top-k accuracy for each `k` in `ks` of `scores [n, classes]` against `labels`; k larger than the number of
/// classes counts as all classes (top-k = top-min(k, C)). Ties as in [`rank_of`]. 0 for no rows.
pub fn topk_accuracy(scores: &[f32], classes: usize, labels: &[usize], ks: &[usize]) -> Vec<f64> {
    let mut hits = vec![0usize; ks.len()];
    for (row, &label) in scores.chunks_exact(classes.max(1)).zip(labels) {
        let rank = rank_of(row, label);
        for (h, &k) in hits.iter_mut().zip(ks) {
            *h += usize::from(rank < k.min(classes));
        }
    }
    hits.iter().map(|&h| if labels.is_empty() { 0.0 } else { h as f64 / labels.len() as f64 }).collect()
}

/// Zero-shot top-1 and top-5 accuracy of unit-norm image features `[n, dim]` against a classifier
/// `[classes, dim]` (see [`classifier`]).
pub fn zeroshot_accuracy(image_features: &[f32], classifier: &[f32], dim: usize, labels: &[usize]) -> (f64, f64) {
    let classes = classifier.len().checked_div(dim).unwrap_or(0);
    let acc = topk_accuracy(&scores(image_features, classifier, dim), classes, labels, &[1, 5]);
    (acc[0], acc[1])
}

/// The shapes set's zero-shot classes and templates, from the embedded data files.
pub fn shapes_classnames_and_templates() -> (Vec<String>, Vec<String>) {
    (shapes::classes(), shapes::templates().iter().map(|t| t.to_string()).collect())
}

/// Zero-shot top-1 and top-5 accuracy on the held-out split of the shapes set (`shapes_cfg.held_out_size` images
/// drawn at `shapes_cfg.resolution`, which must equal the model's `image_size`), with the embedded class names and
/// templates. What `cliprt train` reports at the end and periodically; the model's training mode is restored.
pub fn zeroshot_shapes<B: Backend>(
    backend: &B,
    model: &mut Clip<B>,
    store: &mut ParamStore<B>,
    shapes_cfg: &shapes::ShapesConfig,
    batch_size: usize,
) -> Result<(f64, f64)> {
    let (classnames, templates) = shapes_classnames_and_templates();
    let weights = classifier(backend, model, store, &classnames, &templates, batch_size)?;
    let held_out = shapes_features(backend, model, store, shapes_cfg, Split::HeldOut, usize::MAX, batch_size)?;
    Ok(zeroshot_accuracy(&held_out.features, &weights, model.config.embed_dim, &held_out.labels))
}
