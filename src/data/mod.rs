//! Data: the CLIP tokenizer and image preprocessing.

pub mod image;
pub mod tokenizer;
