//! Tests of backend::cpu::embedding.
