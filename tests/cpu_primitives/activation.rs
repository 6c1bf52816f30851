//! Tests of backend::cpu::activation.
