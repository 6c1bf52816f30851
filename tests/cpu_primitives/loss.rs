//! Tests of backend::cpu::loss.
