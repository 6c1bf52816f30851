//! GPU parity tests of the cuBLASLt GEMMs against the CPU reference.
