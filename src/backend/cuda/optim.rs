//! Launchers for `kernels/optim.cu` (issue #5).

/// The kernels of `kernels/optim.cu`.
pub const KERNELS: &[&str] = &[];
