//! `cliprt bench clip-loss | nn-queue | attention`: the fused kernels of issues #6–#8 timed against their floors and
//! their naive baselines in one run, on the GPU (each subcommand explains itself when there is none).

pub mod attention;
pub mod clip_loss;
pub mod nn_queue;
