//! AdamW with decoupled weight decay over the whole parameter buffer.

use crate::backend::{AdamW, DecaySegment, Float};
use crate::error::Result;

pub fn adamw_update<F: Float>(
    hp: &AdamW,
    segments: &[DecaySegment],
    params: &mut [F],
    grads: &[F],
    m: &mut [F],
    v: &mut [F],
) -> Result<()> {
    todo!()
}
