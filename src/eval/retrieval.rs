//! Image↔text retrieval recall (SPEC §1.8), as open_clip's `get_clip_metrics`: N paired items, item i's image and
//! caption match each other and nothing else. For each image the captions are ranked by cosine similarity (and for
//! each caption the images); recall@k is the fraction of queries whose match ranks among the first k.
//!
//! Ties are broken towards the lower index (see [`rank_of`]): a caption that scores exactly as high as the match
//! and has a lower index ranks before it. So duplicate captions (several items with the same text) count against
//! every duplicate but the first: recall then measures telling items apart, not just finding the right words.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::zeroshot::{rank_of, scores};

/// Recall at 1, 5 and 10 (k past N counts as N).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Recall {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
}

/// Both directions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Retrieval {
    pub image_to_text: Recall,
    pub text_to_image: Recall,
    /// Number of (image, caption) pairs.
    pub n: usize,
}

/// Recall@1/5/10 from each query row's similarities `sim [n, n]`: row i's match is column i.
fn recall(sim: &[f32], n: usize) -> Recall {
    let mut hits = [0usize; 3];
    for (i, row) in sim.chunks_exact(n).enumerate() {
        let rank = rank_of(row, i);
        for (h, k) in hits.iter_mut().zip([1, 5, 10]) {
            *h += usize::from(rank < k);
        }
    }
    let frac = |h: usize| h as f64 / n as f64;
    Recall { r1: frac(hits[0]), r5: frac(hits[1]), r10: frac(hits[2]) }
}

/// Retrieval recalls of unit-norm `image_features [n, dim]` against `text_features [n, dim]`, item i matching i.
pub fn retrieval(image_features: &[f32], text_features: &[f32], dim: usize) -> Result<Retrieval> {
    if dim == 0 || image_features.len() != text_features.len() || !image_features.len().is_multiple_of(dim) {
        return Err(Error::Invalid {
            op: "retrieval",
            msg: format!(
                "{} image and {} text feature values of dimension {dim}; need the same number of rows of each",
                image_features.len(),
                text_features.len()
            ),
        });
    }
    let n = image_features.len() / dim;
    if n == 0 {
        return Err(Error::Invalid { op: "retrieval", msg: "no (image, caption) pairs to rank".into() });
    }
    Ok(Retrieval {
        image_to_text: recall(&scores(image_features, text_features, dim), n),
        text_to_image: recall(&scores(text_features, image_features, dim), n),
        n,
    })
}
