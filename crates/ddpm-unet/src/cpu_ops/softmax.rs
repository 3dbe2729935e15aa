//! softmax(s·x) over the last dimension in one pass per row, with its backward, parallel over
//! rows: y_i = e^(s·x_i − m)/Σ_j e^(s·x_j − m), m = max_j s·x_j;
//! ∂L/∂x_i = s·y_i·(g_i − Σ_j g_j·y_j).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::element::{self, contiguous, dispatch, Element};
use super::simd::vectorized_fn;

/// Rows per parallel task (keeps tasks large enough to amortise scheduling).
const ROWS_PER_TASK: usize = 64;

/// One row, in place: x ← softmax(s·x), shifted by the row maximum of s·x; f32 rows on
/// AVX-512 CPUs by [the intrinsics kernel](super::avx512::softmax_row) (2.5× faster on rows of
/// 196, where the vectorised loop below leaves a 4-element scalar tail and no fused
/// multiply-adds).
fn softmax_row<T: Element>(row: &mut [T], scale: f64) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        if let Some(row) = T::as_f32_mut(row) {
            // SAFETY: `available` confirmed AVX-512F.
            unsafe { super::avx512::softmax_row(row, scale as f32) };
            return;
        }
    }
    softmax_row_vectorized(row, scale)
}

vectorized_fn!(
    /// [`softmax_row`] for any element type, through the compiler's vectorisation.
    fn softmax_row_vectorized<T: Element>(row: &mut [T], scale: f64) => softmax_row_generic {
        let s = T::from_f64(scale);
        // max s·x is s·max x for s ≥ 0, s·min x otherwise.
        let shift = if scale >= 0.0 {
            s * element::max(row)
        } else {
            s * element::min(row)
        };
        for x in row.iter_mut() {
            *x = (s * *x - shift).exp();
        }
        let inv = T::from_f64(1.0 / element::sum(row));
        for x in row.iter_mut() {
            *x = *x * inv;
        }
    }
);

/// One row's backward, in place: g ← s·y ⊙ (g − g·y), for y = softmax(s·x); f32 rows on
/// AVX-512 CPUs by [the intrinsics kernel](super::avx512::softmax_row_backward).
fn softmax_row_backward<T: Element>(grad: &mut [T], y: &[T], scale: f64) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        if let (Some(grad), Some(y)) = (T::as_f32_mut(grad), T::as_f32(y)) {
            // SAFETY: `available` confirmed AVX-512F; the kernel checks the lengths.
            unsafe { super::avx512::softmax_row_backward(grad, y, scale as f32) };
            return;
        }
    }
    softmax_row_backward_vectorized(grad, y, scale)
}

vectorized_fn!(
    /// [`softmax_row_backward`] for any element type, through the compiler's vectorisation.
    fn softmax_row_backward_vectorized<T: Element>(grad: &mut [T], y: &[T], scale: f64)
        => softmax_row_backward_generic {
        let dot = T::from_f64(element::dot(grad, y));
        let s = T::from_f64(scale);
        for (g, &yv) in grad.iter_mut().zip(y) {
            *g = s * yv * (*g - dot);
        }
    }
);

fn forward<T: Element>(x: &[T], cols: usize, scale: f64) -> Vec<T> {
    let mut y = x.to_vec();
    y.par_chunks_mut(cols * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_mut(cols) {
            softmax_row(row, scale);
        }
    });
    y
}

fn backward<T: Element>(y: &[T], grad: &[T], cols: usize, scale: f64) -> Vec<T> {
    let mut dx = grad.to_vec();
    dx.par_chunks_mut(cols * ROWS_PER_TASK)
        .zip(y.par_chunks(cols * ROWS_PER_TASK))
        .for_each(|(dx_rows, y_rows)| {
            for (dx, y) in dx_rows.chunks_mut(cols).zip(y_rows.chunks(cols)) {
                softmax_row_backward(dx, y, scale);
            }
        });
    dx
}

struct Softmax {
    scale: f64,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "ddpm-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = layout.dims().last().copied().unwrap_or(1).max(1);
        super::profile::time(
            "softmax",
            || format!("{:?}", layout.dims()),
            || {
                dispatch!(storage, "ddpm-softmax", |T| {
                    let x = contiguous::<T>(storage, layout, "ddpm-softmax")?;
                    Ok((
                        T::storage(forward(x, cols, self.scale)),
                        layout.shape().clone(),
                    ))
                })
            },
        )
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx =
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward { scale: self.scale })?;
        Ok(Some(dx))
    }
}

/// ∂L/∂x on (y, grad).
struct SoftmaxBackward {
    scale: f64,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "ddpm-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "softmax backward: shapes {:?} and {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let cols = l1.dims().last().copied().unwrap_or(1).max(1);
        super::profile::time(
            "softmax backward",
            || format!("{:?}", l1.dims()),
            || {
                dispatch!(s1, "ddpm-softmax-backward", |T| {
                    let y = contiguous::<T>(s1, l1, "ddpm-softmax-backward")?;
                    let g = contiguous::<T>(s2, l2, "ddpm-softmax-backward")?;
                    Ok((
                        T::storage(backward(y, g, cols, self.scale)),
                        l1.shape().clone(),
                    ))
                })
            },
        )
    }
}

/// softmax(scale·x) over the last dimension: the fused kernel on the CPU in f32/f64;
/// elsewhere candle's ops, composed so that every one has a backward pass (candle 0.11's
/// fused `softmax_last_dim` records none), with the row maximum detached (softmax does not
/// depend on it, so neither does its gradient).
pub fn softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    if super::applies_to(x) {
        return x.contiguous()?.apply_op1(Softmax { scale });
    }
    let x = if scale == 1.0 {
        x.clone()
    } else {
        (x * scale)?
    };
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
