//! Image decoding and open_clip evaluation preprocessing. Being written.
