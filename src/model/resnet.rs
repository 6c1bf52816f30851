//! CLIP's modified ResNet (SPEC §1.2). Being written.
