//! GEMMs through cuBLASLt for the `Gemm` descriptor (issue #5).
