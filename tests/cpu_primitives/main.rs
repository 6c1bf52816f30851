//! Every CPU primitive: forward against hand-computed values or a simpler formula, backward against central
//! differences in f64 (tests named `*grad*`), on random shapes including odd sizes and size 1. One test binary so the
//! suite links once.

mod activation;
mod attention;
mod conv;
mod elementwise;
mod embedding;
mod loss;
mod matmul;
mod nn_search;
mod norm;
mod optim;
mod pooled;
mod step;
