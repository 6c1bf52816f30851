//! The CUDA backend: device detection that never panics, the embedded kernel modules, and safe launchers for every
//! kernel in `kernels/*.cu` (one launcher file per kernel file). The `Backend` implementation builds on these.
//!
//! Everything here works on a machine without a GPU: cudarc loads libcuda, cuBLAS(Lt) and cuDNN dynamically, and
//! [`context`] checks that the driver library exists before touching it, so a missing GPU is an
//! [`Error::CudaUnavailable`](crate::Error::CudaUnavailable), never a panic.

pub mod activation;
pub mod blas;
pub mod device;
pub mod elementwise;
pub mod embedding;
pub mod launch;
pub mod libs;
pub mod modules;
pub mod norm;
pub mod optim;
pub mod softmax;

pub use device::{context, driver_version, CudaDevice, DeviceInfo};
pub use launch::KernelFloat;
pub use libs::{libraries, Libraries, Library};
pub use modules::{load_module, LoadedModule, MODULE_KERNELS};
