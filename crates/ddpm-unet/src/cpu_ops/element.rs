//! The element types the kernels run on, and typed access to candle's CPU storage.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Result};
use rayon::prelude::*;

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
    /// The smaller of two values.
    fn min(self, other: Self) -> Self;
    /// The storage's elements, if it holds this type.
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    /// The same elements as f32, if this type is f32 (for kernels written for f32 only).
    fn as_f32(xs: &[Self]) -> Option<&[f32]>;
    /// [`Element::as_f32`], mutable.
    fn as_f32_mut(xs: &mut [Self]) -> Option<&mut [f32]>;
    /// [`Element::as_f32_mut`] for memory not yet written.
    fn as_f32_uninit(xs: &mut [MaybeUninit<Self>]) -> Option<&mut [MaybeUninit<f32>]>;
    /// Wraps a vector as storage.
    fn storage(data: Vec<Self>) -> CpuStorage;
    /// This thread's scratch buffer of this type (see [`with_scratch`]).
    fn scratch() -> &'static std::thread::LocalKey<RefCell<Vec<Self>>>;
}

thread_local! {
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Sets every element of `xs` to zero and returns the slice as initialised values (for the
/// generic fallbacks of kernels that write into uninitialised output).
pub(crate) fn zeroed<T: Element>(xs: &mut [MaybeUninit<T>]) -> &mut [T] {
    xs.fill(MaybeUninit::new(T::ZERO));
    // SAFETY: every element was just initialised, and MaybeUninit<T> has T's layout.
    unsafe { &mut *(xs as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// The elementwise sum of per-thread partial results of `len` elements, added into the
/// first (zeros if there are none, for an empty batch). rayon's `reduce` would also add
/// zeroed identity vectors, one per split: a quarter of the Winograd weight gradient's time
/// at 7×7. The additions are split over the threads by chunks of [`SUM_CHUNK`] elements
/// (one thread's sum of the network's largest, 36·192·96 floats, left the other core idle).
pub(crate) fn sum_partials<T: Element>(mut partials: Vec<Vec<T>>, len: usize) -> Vec<T> {
    if partials.is_empty() {
        return vec![T::ZERO; len];
    }
    let mut total = partials.swap_remove(0);
    total
        .par_chunks_mut(SUM_CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            for other in &partials {
                for (a, &b) in chunk.iter_mut().zip(&other[i * SUM_CHUNK..]) {
                    *a += b;
                }
            }
        });
    total
}

/// Elements per task of [`sum_partials`]: 64 KB of f32.
const SUM_CHUNK: usize = 16_384;

/// Runs `f` on `len` elements of this thread's scratch buffer, which persists between
/// calls, so that large per-task buffers are not allocated, zeroed and page-faulted in on
/// every call. The elements hold whatever the last user left: `f` must write before it
/// reads. The elements start on a cache line ([`aligned`]). (A nested call on the same
/// thread gets a fresh zeroed vector instead.)
pub(crate) fn with_scratch<T: Element, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    // Room to start on a cache line.
    let room = len + CACHE_LINE / std::mem::size_of::<T>();
    T::scratch().with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < room {
                buffer.resize(room, T::ZERO);
            }
            f(&mut aligned(&mut buffer)[..len])
        }
        Err(_) => f(&mut aligned(&mut vec![T::ZERO; room])[..len]),
    })
}

/// Bytes per cache line.
const CACHE_LINE: usize = 64;

/// The elements of `buffer` from its first on a cache-line boundary. A vector store to an
/// address that is not a multiple of 64 bytes touches two cache lines, and costs two stores
/// (glibc's large allocations start 16 bytes past a page).
fn aligned<T>(buffer: &mut [T]) -> &mut [T] {
    let skip = buffer.as_ptr().align_offset(CACHE_LINE).min(buffer.len());
    &mut buffer[skip..]
}

impl Element for f32 {
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn max(self, other: Self) -> Self {
        f32::max(self, other)
    }
    #[inline(always)]
    fn min(self, other: Self) -> Self {
        f32::min(self, other)
    }
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + exp_f32(-self))
    }
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        match storage {
            CpuStorage::F32(data) => Some(data),
            _ => None,
        }
    }
    fn as_f32(xs: &[Self]) -> Option<&[f32]> {
        Some(xs)
    }
    fn as_f32_mut(xs: &mut [Self]) -> Option<&mut [f32]> {
        Some(xs)
    }
    fn as_f32_uninit(xs: &mut [MaybeUninit<Self>]) -> Option<&mut [MaybeUninit<f32>]> {
        Some(xs)
    }
    fn storage(data: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(data)
    }
    fn scratch() -> &'static std::thread::LocalKey<RefCell<Vec<Self>>> {
        &SCRATCH_F32
    }
}

impl Element for f64 {
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn max(self, other: Self) -> Self {
        f64::max(self, other)
    }
    #[inline(always)]
    fn min(self, other: Self) -> Self {
        f64::min(self, other)
    }
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        match storage {
            CpuStorage::F64(data) => Some(data),
            _ => None,
        }
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    fn as_f32_uninit(_: &mut [MaybeUninit<Self>]) -> Option<&mut [MaybeUninit<f32>]> {
        None
    }
    fn storage(data: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(data)
    }
    fn scratch() -> &'static std::thread::LocalKey<RefCell<Vec<Self>>> {
        &SCRATCH_F64
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

/// Writes `value(i)` into every element of row i of `part` (consecutive rows of `row`
/// elements, the last possibly shorter) and returns it as initialised: how an output that
/// starts as a constant per row (a convolution's bias) is written once, without the zero-fill
/// of `vec![0; len]` first.
///
/// With `plus`, as long as `part`, row i is `value(i)` + its elements instead (a residual
/// added by the op that writes the output).
pub(crate) fn fill_rows<'a, T: Element>(
    part: &'a mut [MaybeUninit<T>],
    row: usize,
    value: impl Fn(usize) -> T,
    plus: Option<&[T]>,
) -> &'a mut [T] {
    match plus {
        None => {
            for (i, r) in part.chunks_mut(row.max(1)).enumerate() {
                let x = value(i);
                for slot in r {
                    slot.write(x);
                }
            }
        }
        Some(plus) => {
            assert_eq!(plus.len(), part.len());
            for (i, (r, p)) in part
                .chunks_mut(row.max(1))
                .zip(plus.chunks(row.max(1)))
                .enumerate()
            {
                let x = value(i);
                for (slot, &p) in r.iter_mut().zip(p) {
                    slot.write(x + p);
                }
            }
        }
    }
    // SAFETY: the loop above wrote every element of `part`, and MaybeUninit<T> has T's
    // layout.
    unsafe { &mut *(part as *mut [MaybeUninit<T>] as *mut [T]) }
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

/// e^x in f32 without a libm call, so that loops over slices vectorise: Cephes' `expf`
/// (range reduction x = n·ln 2 + r with ln 2 split in two parts, a degree-5 polynomial for
/// e^r on |r| ≤ ln2/2, and 2^n assembled in the exponent bits). Inputs are clamped to
/// [−87, 88], where e^x is a normal f32; the relative error is below 2e-7 (tested against
/// f64 `exp` in `tests::exp_f32_is_accurate`).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer (|v| < 2^22).
    const ROUND: f32 = 12_582_912.0;
    // max/min rather than clamp: the same result here, and it compiles to maxps/minps.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * (r * r) + r + 1.0;
    // The integer n sits in the low mantissa bits of `shifted` (an integer conversion would
    // not vectorise): bits(ROUND + n) = bits(ROUND) + n.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    e_r * two_n
}

/// Independent accumulators per reduction, so that sums vectorise instead of forming one
/// serial chain of dependent additions: 16, one AVX-512 register of f32 (with 8, the
/// AVX-512 copies summed in 4-wide registers and scalars, and GroupNorm's forward was
/// 15–30% slower).
pub(crate) const LANES: usize = 16;

/// Σ xs, in `LANES` partial sums of T combined in f64.
#[inline(always)]
pub(crate) fn sum<T: Element>(xs: &[T]) -> f64 {
    let mut acc = [T::ZERO; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().map(|a| a.to_f64()).sum::<f64>() + rest.iter().map(|x| x.to_f64()).sum::<f64>()
}

/// Σ (xs − mean)², in `LANES` partial sums.
#[inline(always)]
pub(crate) fn sum_squared_deviations<T: Element>(xs: &[T], mean: f64) -> f64 {
    let m = T::from_f64(mean);
    let mut acc = [T::ZERO; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            let d = x - m;
            *a += d * d;
        }
    }
    acc.iter().map(|a| a.to_f64()).sum::<f64>()
        + rest
            .iter()
            .map(|&x| {
                let d = (x - m).to_f64();
                d * d
            })
            .sum::<f64>()
}

/// Σ a·b, in `LANES` partial sums.
#[inline(always)]
pub(crate) fn dot<T: Element>(a: &[T], b: &[T]) -> f64 {
    let mut acc = [T::ZERO; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().map(|a| a.to_f64()).sum::<f64>()
        + ra.iter()
            .zip(rb)
            .map(|(&x, &y)| (x * y).to_f64())
            .sum::<f64>()
}

/// max xs (xs non-empty), in `LANES` partial maxima.
#[inline(always)]
pub(crate) fn max<T: Element>(xs: &[T]) -> T {
    let mut acc = [xs[0]; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = a.max(x);
        }
    }
    rest.iter().chain(acc.iter()).fold(xs[0], |m, &x| m.max(x))
}

/// min xs (xs non-empty), in `LANES` partial minima.
#[inline(always)]
pub(crate) fn min<T: Element>(xs: &[T]) -> T {
    let mut acc = [xs[0]; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = a.min(x);
        }
    }
    rest.iter().chain(acc.iter()).fold(xs[0], |m, &x| m.min(x))
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    #[test]
    fn exp_f32_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let exact = f64::from(x).exp();
            let err = ((f64::from(exp_f32(x)) - exact) / exact).abs();
            worst = worst.max(err);
            x += 0.001_37;
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(-1000.0) < 1e-37);
        assert!(exp_f32(1000.0).is_finite());
    }
}
