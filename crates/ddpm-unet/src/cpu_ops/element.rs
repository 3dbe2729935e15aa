//! The element types the kernels run on, and typed access to candle's CPU storage.

use candle_core::{CpuStorage, Layout, Result};

/// f32 or f64.
pub(crate) trait Element:
    Copy
    + Send
    + Sync
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    /// σ(v) = 1/(1 + e^(−v)).
    fn sigmoid(self) -> Self;
    /// e^v.
    fn exp(self) -> Self;
    /// The larger of two values.
    fn max(self, other: Self) -> Self;
    /// The storage's elements, if it holds this type.
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    /// Wraps a vector as storage.
    fn storage(data: Vec<Self>) -> CpuStorage;
}

impl Element for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn max(self, other: Self) -> Self {
        f32::max(self, other)
    }
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        match storage {
            CpuStorage::F32(data) => Some(data),
            _ => None,
        }
    }
    fn storage(data: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(data)
    }
}

impl Element for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn max(self, other: Self) -> Self {
        f64::max(self, other)
    }
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        match storage {
            CpuStorage::F64(data) => Some(data),
            _ => None,
        }
    }
    fn storage(data: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(data)
    }
}

/// The contiguous elements a layout views, or an error naming the op.
pub(crate) fn contiguous<'a, T: Element>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> Result<&'a [T]> {
    let data = T::slice(storage).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "{op}: unexpected dtype {:?}",
            candle_core::backend::BackendStorage::dtype(storage)
        ))
    })?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(candle_core::Error::Msg(format!(
            "{op}: expects contiguous inputs"
        ))),
    }
}

/// Runs `$body` with `T` bound to the storage's element type (f32 or f64).
macro_rules! dispatch {
    ($storage:expr, $op:expr, |$t:ident| $body:expr) => {
        match candle_core::backend::BackendStorage::dtype($storage) {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            dtype => Err(candle_core::Error::UnsupportedDTypeForOp(dtype, $op)),
        }
    };
}
pub(crate) use dispatch;
