//! cliprt: a framework-free runtime that trains CLIP-family models, with explicit backward passes, a CPU reference
//! backend and hand-written CUDA kernels. Start at [`backend::Backend`], the contract every layer is written against.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod doctor;
pub mod error;
pub mod eval;
pub mod kernel_bench;
pub mod kernels;
pub mod model;
pub mod nn;
pub mod objective;
pub mod params;
pub mod plot;
pub mod schedule;
pub mod testing;
pub mod train;

pub use error::{Error, Result};
