//! The CUDA backend: device detection that never panics, the embedded kernel modules, and safe launchers for every
//! kernel in `kernels/*.cu` (one launcher file per kernel file). The `Backend` implementation builds on these.
//!
//! Everything here works on a machine without a GPU: cudarc loads libcuda, cuBLAS(Lt) and cuDNN dynamically, and
//! [`context`] checks that the driver library exists before touching it, so a missing GPU is an
//! [`Error::CudaUnavailable`](crate::Error::CudaUnavailable), never a panic.

pub mod activation;
pub mod attention;
pub mod attention_naive;
pub mod backend;
pub mod bias;
pub mod blas;
pub mod clip_loss;
pub mod clip_loss_naive;
pub mod cross_entropy;
pub mod device;
pub mod dnn;
pub mod elementwise;
pub mod embedding;
pub mod launch;
pub mod layout;
pub mod libs;
pub mod memory;
pub mod modules;
pub mod nn_queue;
pub mod nn_search;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod softmax;
pub mod view;

pub use backend::{shared_device, CudaAct, CudaBackend};
pub use device::{context, driver_version, CudaDevice, DeviceInfo};
pub use launch::KernelFloat;
pub use libs::{libraries, Libraries, Library};
pub use memory::{DeviceBuf, MemoryStats};
pub use modules::{load_module, LoadedModule, MODULE_KERNELS};
pub use view::{CudaMut, CudaRef, DeviceViews};
