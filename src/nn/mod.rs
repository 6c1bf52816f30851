//! Layers with explicit forward and backward (DESIGN "The three layers of the runtime").
//!
//! A layer holds the [`ParamId`](crate::params::ParamId)s of its tensors and the buffers it produces (its output and
//! whatever its backward needs: LayerNorm statistics, attention probabilities). `forward` fills them; `backward`
//! takes the same input again from the caller (who owns it), the gradient of the output, and writes the gradient of
//! the input into a view the caller gives, accumulating parameter gradients into the store. A tower calls its layers'
//! backward in reverse order, written out by hand, so a training step's data flow reads top to bottom.
//!
//! Buffers are sized on the first call for a given batch and reused afterwards: after the first step nothing is
//! allocated.

mod activation;
mod attention;
mod batchnorm;
mod conv;
mod embedding;
mod layernorm;
mod linear;
mod mlp;
mod pool;
mod projection;
mod slot;

pub use activation::ActivationLayer;
pub use attention::{AttentionInit, MultiHeadAttention};
pub use batchnorm::BatchNorm2d;
pub use conv::Conv2dLayer;
pub use embedding::Embedding;
pub use layernorm::LayerNorm;
pub use linear::Linear;
pub use mlp::Mlp;
pub use pool::{AvgPool2d, GatherTokens};
pub use projection::Projection;
pub use slot::Slot;
