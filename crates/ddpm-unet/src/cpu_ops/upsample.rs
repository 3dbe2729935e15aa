//! Nearest-neighbour doubling of (B, C, H, W) with its backward, parallel over planes:
//! y[2i + a, 2j + b] = x[i, j] for a, b ∈ {0, 1}; ∂L/∂x[i, j] = Σ_{a,b} ∂L/∂y[2i + a, 2j + b].
//!
//! candle 0.11's `upsample_nearest2d` backward overwrites instead of adding, and the
//! broadcast that replaces it elsewhere costs a strided copy forward and a strided reduction
//! backward (3–4% of a training step each).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::element::{contiguous, dispatch, Element};

fn forward<T: Element>(x: &[T], h: usize, w: usize) -> Vec<T> {
    let mut y = vec![T::ZERO; 4 * x.len()];
    y.par_chunks_mut(4 * h * w)
        .zip(x.par_chunks(h * w))
        .for_each(|(y_p, x_p)| {
            for (rows, x_row) in y_p.chunks_mut(4 * w).zip(x_p.chunks(w)) {
                let (top, bottom) = rows.split_at_mut(2 * w);
                for (pair, &v) in top.chunks_mut(2).zip(x_row) {
                    pair[0] = v;
                    pair[1] = v;
                }
                bottom.copy_from_slice(top);
            }
        });
    y
}

fn backward<T: Element>(grad: &[T], h: usize, w: usize) -> Vec<T> {
    let mut dx = vec![T::ZERO; grad.len() / 4];
    dx.par_chunks_mut(h * w)
        .zip(grad.par_chunks(4 * h * w))
        .for_each(|(dx_p, g_p)| {
            for (dx_row, rows) in dx_p.chunks_mut(w).zip(g_p.chunks(4 * w)) {
                let (top, bottom) = rows.split_at(2 * w);
                for ((d, t), b) in dx_row.iter_mut().zip(top.chunks(2)).zip(bottom.chunks(2)) {
                    *d = (t[0] + t[1]) + (b[0] + b[1]);
                }
            }
        });
    dx
}

struct Upsample2x;

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "ddpm-upsample-nearest-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        super::profile::time(
            "upsample",
            || format!("{:?}", layout.dims()),
            || {
                dispatch!(storage, "ddpm-upsample-nearest-2x", |T| {
                    let x = contiguous::<T>(storage, layout, "ddpm-upsample-nearest-2x")?;
                    Ok((
                        T::storage(forward(x, h, w)),
                        Shape::from((b, c, 2 * h, 2 * w)),
                    ))
                })
            },
        )
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?.apply_op1_no_bwd(&Upsample2xBackward)?,
        ))
    }
}

/// ∂L/∂x from ∂L/∂y (B, C, 2H, 2W).
struct Upsample2xBackward;

impl CustomOp1 for Upsample2xBackward {
    fn name(&self) -> &'static str {
        "ddpm-upsample-nearest-2x-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h2, w2) = layout.shape().dims4()?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            candle_core::bail!("upsample backward: odd gradient size {h2}×{w2}");
        }
        let (h, w) = (h2 / 2, w2 / 2);
        super::profile::time(
            "upsample backward",
            || format!("{:?}", layout.dims()),
            || {
                dispatch!(storage, "ddpm-upsample-nearest-2x-backward", |T| {
                    let g = contiguous::<T>(storage, layout, "ddpm-upsample-nearest-2x-backward")?;
                    Ok((T::storage(backward(g, h, w)), Shape::from((b, c, h, w))))
                })
            },
        )
    }
}

/// Nearest-neighbour doubling of x (B, C, H, W) to (B, C, 2H, 2W): the kernel on the CPU in
/// f32/f64; elsewhere a broadcast, whose backward sums the four copies' gradients.
pub fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    if super::applies_to(x) {
        return x.contiguous()?.apply_op1(Upsample2x);
    }
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}
