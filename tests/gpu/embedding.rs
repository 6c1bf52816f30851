//! GPU parity tests of `kernels/embedding.cu` against the CPU reference.
