//! Cross-entropy (ignore index, label smoothing) and the CLIP contrastive loss (materialised reference).

use crate::backend::{ClipLoss, Float};
use crate::error::Result;

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_forward<F: Float>(
    logits: &[F],
    targets: &[i32],
    losses: &mut [F],
    lse: &mut [F],
    rows: usize,
    classes: usize,
    ignore_index: i32,
    label_smoothing: f64,
) -> Result<()> {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward<F: Float>(
    logits: &[F],
    targets: &[i32],
    lse: &[F],
    dlogits: &mut [F],
    rows: usize,
    classes: usize,
    ignore_index: i32,
    label_smoothing: f64,
    grad_scale: f64,
) -> Result<()> {
    todo!()
}
pub fn clip_loss_saved_len(spec: &ClipLoss) -> usize {
    todo!()
}
pub fn clip_loss_forward<F: Float>(
    spec: &ClipLoss,
    image: &[F],
    text: &[F],
    log_scale: &[F],
    loss: &mut [F],
    saved: &mut [F],
) -> Result<()> {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn clip_loss_backward<F: Float>(
    spec: &ClipLoss,
    image: &[F],
    text: &[F],
    log_scale: &[F],
    saved: &[F],
    dloss: f64,
    dimage: &mut [F],
    dtext: &mut [F],
    dlog_scale: &mut [F],
) -> Result<()> {
    todo!()
}
