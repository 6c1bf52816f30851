//! Training objectives beyond plain CLIP (issue #9, SPEC §2–3): the loss terms of DeCLIP (multi-view, image
//! self-supervision, masked language modelling, nearest-neighbour supervision), the CL2L recipe of Fini et al. and
//! their SSL-style terms (SiamLIP, BYOLIP, BarLIP, SwALIP). Each term takes embeddings (or logits) on a `Backend` and
//! returns its loss and the gradients of its inputs, forward and backward side by side; a training step composes
//! them.

pub mod contrastive;
pub mod kind;
pub mod local_loss;
pub mod mlm;
pub mod multiview;
pub mod queue;
pub mod ssl;
