//! Which device a command (`train`, `eval`, `bench train-step`) runs on, said in one line. The GPU is used when one
//! is usable and the CUDA backend provides every primitive the model needs; until the CUDA backend implements the
//! `Backend` trait (issue #5) everything runs on the CPU and the line says why.

use crate::error::{Error, Result};

pub struct DeviceChoice {
    /// `cpu` (the only backend that runs models so far).
    pub name: String,
    /// What was chosen and why, for the user.
    pub line: String,
    /// Set when a GPU is present but not used (`auto`), saying why.
    pub gpu_note: Option<String>,
}

const NO_MODEL_PRIMITIVES: &str = "the CUDA backend does not implement the training primitives yet (issue #5)";

/// Resolves `--device` (`auto`, `cpu`, `cuda` or `cuda:N`).
pub fn select(requested: &str) -> Result<DeviceChoice> {
    let threads = rayon::current_num_threads();
    let cpu = |why: String, gpu_note| DeviceChoice {
        name: "cpu".into(),
        line: format!("device: cpu, {threads} threads ({why})"),
        gpu_note,
    };
    match requested {
        "cpu" => Ok(cpu("--device cpu".into(), None)),
        "auto" => Ok(match crate::backend::cuda::device::DeviceInfo::current() {
            Ok(info) => {
                let note = format!("GPU {} found, but {NO_MODEL_PRIMITIVES}", info.name);
                cpu(note.clone(), Some(note))
            }
            Err(e) => cpu(format!("no usable GPU: {e}"), None),
        }),
        d if d == "cuda" || d.starts_with("cuda:") => Err(Error::Invalid {
            op: "device",
            msg: format!("--device {d}: {NO_MODEL_PRIMITIVES}; use --device cpu or auto"),
        }),
        other => Err(Error::Invalid { op: "device", msg: format!("unknown device `{other}`; use auto, cpu or cuda") }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuda_is_refused_with_the_reason() {
        for d in ["cuda", "cuda:1"] {
            let err = super::select(d).err().expect("cuda cannot run models yet").to_string();
            assert!(err.contains("issue #5") && err.contains(d), "{err}");
        }
        let err = super::select("tpu").err().expect("unknown device").to_string();
        assert!(err.contains("tpu"), "{err}");
        assert_eq!(super::select("cpu").unwrap().name, "cpu");
    }
}
