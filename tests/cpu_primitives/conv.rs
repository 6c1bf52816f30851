//! Tests of backend::cpu::conv.
