//! Tests of backend::cpu::optim.
