//! Data: the CLIP tokenizer and image preprocessing.

pub mod image;
pub mod shapes;
pub mod tokenizer;
