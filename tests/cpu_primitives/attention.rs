//! Tests of backend::cpu::attention.
