//! Which device a run uses, said in one line. The GPU is used when one is usable and the CUDA backend provides
//! every primitive the model needs; until the CUDA backend implements the `Backend` trait (issue #5) training runs
//! on the CPU and the line says why.

use crate::error::{Error, Result};

pub struct DeviceChoice {
    /// `cpu` (the only training backend so far).
    pub name: String,
    /// What was chosen and why, for the user.
    pub line: String,
}

pub fn select(requested: &str) -> Result<DeviceChoice> {
    let threads = rayon::current_num_threads();
    let cpu =
        |why: String| DeviceChoice { name: "cpu".into(), line: format!("device: cpu, {threads} threads ({why})") };
    match requested {
        "cpu" => Ok(cpu("--device cpu".into())),
        "auto" => Ok(match crate::backend::cuda::device::DeviceInfo::current() {
            Ok(info) => cpu(format!(
                "GPU {} found, but the CUDA backend does not implement the training primitives yet",
                info.name
            )),
            Err(e) => cpu(format!("no usable GPU: {e}")),
        }),
        "cuda" => Err(Error::Invalid {
            op: "device",
            msg: "--device cuda: the CUDA backend does not implement the training primitives yet; use --device cpu \
                  or auto"
                .into(),
        }),
        other => Err(Error::Invalid { op: "device", msg: format!("unknown device `{other}`; use auto, cpu or cuda") }),
    }
}
