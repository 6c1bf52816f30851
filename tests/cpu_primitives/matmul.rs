//! Tests of backend::cpu::matmul.
