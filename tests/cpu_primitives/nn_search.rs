//! Tests of backend::cpu::nn_search.
