//! Multi-head scaled dot-product attention, reference form: materialised probabilities per (batch, head).

use crate::backend::{Attention, Float};
use crate::error::Result;

pub fn saved_len(spec: &Attention) -> usize {
    todo!()
}
pub fn forward<F: Float>(
    spec: &Attention,
    qkv: &[F],
    key_padding: Option<&[u8]>,
    out: &mut [F],
    saved: &mut [F],
) -> Result<()> {
    todo!()
}
pub fn backward<F: Float>(
    spec: &Attention,
    qkv: &[F],
    key_padding: Option<&[u8]>,
    out: &[F],
    saved: &[F],
    dout: &[F],
    dqkv: &mut [F],
) -> Result<()> {
    todo!()
}
