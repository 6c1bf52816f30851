//! Tests of backend::cpu::norm.
