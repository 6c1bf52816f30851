//! GPU parity tests of `kernels/softmax.cu` against the CPU reference.
