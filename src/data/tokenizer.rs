//! The CLIP BPE tokenizer. Being written.
