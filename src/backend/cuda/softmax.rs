//! Launchers for `kernels/softmax.cu` (issue #5).

/// The kernels of `kernels/softmax.cu`.
pub const KERNELS: &[&str] = &[];
