//! The CUDA kernel modules embedded in this build: one fatbin per `kernels/*.cu` (sm_80 and sm_90a machine code plus
//! compute_80 PTX), compiled by `build.rs` when it found nvcc. The constants below come from the file build.rs
//! generates (`$OUT_DIR/kernels.rs`).

/// One compiled kernel file.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedModule {
    /// The file stem: `kernels/elementwise.cu` is module `elementwise`.
    pub name: &'static str,
    /// The fatbin nvcc produced; empty when this build has no compiled kernels.
    pub fatbin: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The embedded module called `name`, if there is a `kernels/<name>.cu`.
pub fn module(name: &str) -> Option<&'static EmbeddedModule> {
    MODULES.iter().find(|m| m.name == name)
}

/// Why this build cannot launch kernels, as a user-facing sentence naming the fix; None when kernels were compiled.
pub fn missing_kernels_message() -> Option<String> {
    if KERNELS_COMPILED {
        return None;
    }
    let reason = NOT_COMPILED_REASON.unwrap_or("nvcc was not found at build time");
    Some(format!("this build has no compiled kernels ({reason}; run scripts/install-nvcc.sh and rebuild)"))
}
