//! GPU parity tests of `kernels/norm.cu` against the CPU reference.
