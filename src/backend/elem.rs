//! Element types a backend buffer can hold, and the floating-point types the CPU reference computes in.

use std::fmt::Debug;

use half::{bf16, f16};

/// Runtime tag of an element type (what a checkpoint, a log line or `doctor` prints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    BF16,
    F16,
    I32,
    U8,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
        }
    }
}

/// Anything a backend buffer may hold. `DeviceRepr` ties it to what cudarc can copy to a device, `Pod` to what can be
/// reinterpreted as bytes (checkpoints, uploads).
pub trait Elem:
    Copy + Default + Debug + PartialEq + Send + Sync + bytemuck::Pod + cudarc::driver::DeviceRepr + 'static
{
    const DTYPE: DType;
    /// Conversion from a host f64 (rounding to nearest; integers truncate): initial values, uploads of constants.
    fn from_real(x: f64) -> Self;
    /// Widening conversion to f64 (downloads, checks).
    fn to_real(self) -> f64;
}

impl Elem for f64 {
    const DTYPE: DType = DType::F64;
    fn from_real(x: f64) -> Self {
        x
    }
    fn to_real(self) -> f64 {
        self
    }
}
impl Elem for f32 {
    const DTYPE: DType = DType::F32;
    fn from_real(x: f64) -> Self {
        x as f32
    }
    fn to_real(self) -> f64 {
        self as f64
    }
}
impl Elem for bf16 {
    const DTYPE: DType = DType::BF16;
    fn from_real(x: f64) -> Self {
        bf16::from_f64(x)
    }
    fn to_real(self) -> f64 {
        self.to_f64()
    }
}
impl Elem for f16 {
    const DTYPE: DType = DType::F16;
    fn from_real(x: f64) -> Self {
        f16::from_f64(x)
    }
    fn to_real(self) -> f64 {
        self.to_f64()
    }
}
impl Elem for i32 {
    const DTYPE: DType = DType::I32;
    fn from_real(x: f64) -> Self {
        x as i32
    }
    fn to_real(self) -> f64 {
        self as f64
    }
}
impl Elem for u8 {
    const DTYPE: DType = DType::U8;
    fn from_real(x: f64) -> Self {
        x as u8
    }
    fn to_real(self) -> f64 {
        self as f64
    }
}

/// A real number type the CPU reference computes in: f32 for training, f64 for gradient checks.
pub trait Float:
    Elem
    + num_traits::Float
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
{
    fn of_f64(x: f64) -> Self;
    fn as_f64(self) -> f64;
    /// The Gauss error function (for exact GELU).
    fn erf(self) -> Self;
}

impl Float for f32 {
    fn of_f64(x: f64) -> Self {
        x as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
}

impl Float for f64 {
    fn of_f64(x: f64) -> Self {
        x
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
}
