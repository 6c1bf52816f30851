//! Evaluation of a trained CLIP (SPEC §1.8): zero-shot classification, image↔text retrieval and a linear probe on
//! frozen image features, on the embedded shapes set or a user's ImageFolder tree.
//!
//! Read in this order: [`features`] (images and texts → unit-norm host rows, in evaluation mode), [`zeroshot`]
//! (the text classifier and top-k accuracy), [`retrieval`] (recall@k), [`logistic`] and [`linear_probe`] (the
//! probe's solver and its validation sweep), [`cli`] (`cliprt eval`: inputs, model loading, the report).
//! Everything after the model's forward passes runs on the host: features are small (`n × embed_dim`).

pub mod cli;
pub mod features;
pub mod linear_probe;
pub mod logistic;
pub mod retrieval;
pub mod zeroshot;

pub use cli::{run, EvalArgs, EvalReport};
pub use zeroshot::zeroshot_shapes;
