//! Tests of backend::cpu::elementwise.
