//! GPU parity tests of `kernels/optim.cu` against the CPU reference.
