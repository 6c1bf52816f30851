//! The crate's error type: every message names the input at fault and, where there is one, the fix.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// A tensor argument does not have the length its shape descriptor requires.
    #[error("{op}: `{arg}` has {got} elements, the shape needs {want}")]
    Shape { op: &'static str, arg: &'static str, got: usize, want: usize },

    /// An argument is out of its domain (e.g. a token id past the vocabulary).
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },

    /// No usable CUDA device, driver or library; the message says which and what to install.
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),

    /// A CUDA driver or library call failed.
    #[error("CUDA error in {op}: {msg}")]
    Cuda { op: &'static str, msg: String },

    /// The backend does not implement this primitive (yet) for this element type.
    #[error("{backend} backend does not support {op}")]
    Unsupported { backend: &'static str, op: &'static str },

    /// A named parameter is missing or has the wrong shape.
    #[error("parameter `{name}`: {msg}")]
    Param { name: String, msg: String },

    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks that a tensor argument holds exactly `want` elements.
pub fn check_len(op: &'static str, arg: &'static str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Shape { op, arg, got, want })
    }
}

/// Checks that a tensor argument holds at least `want` elements (strided or offset layouts).
pub fn check_min_len(op: &'static str, arg: &'static str, got: usize, want: usize) -> Result<()> {
    if got >= want {
        Ok(())
    } else {
        Err(Error::Shape { op, arg, got, want })
    }
}
