//! The pre-LN Transformer shared by the ViT and the text tower. Being written.
