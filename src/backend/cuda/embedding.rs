//! Launchers for `kernels/embedding.cu` (issue #5).

/// The kernels of `kernels/embedding.cu`.
pub const KERNELS: &[&str] = &[];
