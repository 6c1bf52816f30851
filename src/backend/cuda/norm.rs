//! Launchers for `kernels/norm.cu` (issue #5).

/// The kernels of `kernels/norm.cu`.
pub const KERNELS: &[&str] = &[];
