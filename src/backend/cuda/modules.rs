//! Loading the embedded kernel modules (fatbins) into a context and looking their kernels up by name.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::{
    activation, attention, attention_naive, bias, clip_loss, clip_loss_naive, cross_entropy, dnn, elementwise,
    embedding, layout, nn_queue, nn_search, norm, optim, pool, softmax,
};
use crate::error::{Error, Result};
use crate::kernels;

/// Every kernel module the launchers use, with the `extern "C"` kernels each must contain. Loading checks them all,
/// so a kernel renamed in a .cu file fails at load time (and in `cliprt doctor`), not at its first launch.
pub const MODULE_KERNELS: &[(&str, &[&str])] = &[
    ("activation", activation::KERNELS),
    ("attention", attention::KERNELS),
    ("attention_naive", attention_naive::KERNELS),
    ("bias", bias::KERNELS),
    ("clip_loss", clip_loss::KERNELS),
    ("clip_loss_naive", clip_loss_naive::KERNELS),
    ("cross_entropy", cross_entropy::KERNELS),
    ("dnn_helpers", dnn::KERNELS),
    ("elementwise", elementwise::KERNELS),
    ("embedding", embedding::KERNELS),
    ("layout", layout::KERNELS),
    ("nn_queue", nn_queue::KERNELS),
    ("nn_topk", nn_search::KERNELS),
    ("norm", norm::KERNELS),
    ("optim", optim::KERNELS),
    ("pool", pool::KERNELS),
    ("softmax", softmax::KERNELS),
];

/// The kernels a module must contain (empty for a module no launcher uses yet).
pub fn expected_kernels(module: &str) -> &'static [&'static str] {
    MODULE_KERNELS.iter().find(|(name, _)| *name == module).map_or(&[], |(_, kernels)| kernels)
}

/// A module loaded into a context, with its kernels.
pub struct LoadedModule {
    pub name: &'static str,
    pub module: Arc<CudaModule>,
    pub functions: Vec<(&'static str, CudaFunction)>,
}

/// Loads the embedded module `name` into `ctx` and looks up every kernel [`MODULE_KERNELS`] lists for it.
///
/// Errors: [`Error::CudaUnavailable`] when this build has no compiled kernels; [`Error::Cuda`] when there is no
/// such module, the driver rejects the fatbin (e.g. a driver older than the nvcc that built it), or a kernel is
/// missing.
pub fn load_module(ctx: &Arc<CudaContext>, name: &str) -> Result<LoadedModule> {
    if let Some(msg) = kernels::missing_kernels_message() {
        return Err(Error::CudaUnavailable(msg));
    }
    let embedded = kernels::module(name).ok_or_else(|| Error::Cuda {
        op: "load_module",
        msg: format!("no kernel module `{name}` is embedded in this build (is there a kernels/{name}.cu?)"),
    })?;
    let module = ctx
        .load_module(Ptx::from_binary(embedded.fatbin.to_vec()))
        .map_err(|e| Error::Cuda { op: "load_module", msg: format!("module `{name}`: {e}") })?;
    let functions = expected_kernels(name)
        .iter()
        .map(|&kernel| {
            module.load_function(kernel).map(|f| (kernel, f)).map_err(|e| Error::Cuda {
                op: "load_function",
                msg: format!("kernel `{kernel}` in module `{name}`: {e}"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LoadedModule { name: embedded.name, module, functions })
}
