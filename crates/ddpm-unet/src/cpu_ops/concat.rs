//! Concatenation of two (B, C, H, W) tensors along the channels, y_n = [a_n; b_n] for each
//! sample n, parallel over the samples, with a backward that hands each input its part of
//! ∂L/∂y as a contiguous tensor of its own: ∂L/∂a_n = (∂L/∂y_n)[..C_a], ∂L/∂b_n =
//! (∂L/∂y_n)[C_a..].
//!
//! candle 0.11's `Tensor::cat` copies on one thread, and its backward gives each input a
//! strided view of ∂L/∂y that the gradient store then copies, again on one thread, to make it
//! contiguous. The U-Net's up path concatenates every skip connection (session 14: the two
//! copies took 1.3% of a training step's samples, on one core while the other waited).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::element::{contiguous, dispatch, Element};

/// Elements per sample of a (B, C, H, W) shape: C·H·W.
fn per_sample(shape: &Shape) -> Result<usize> {
    let (_, c, h, w) = shape.dims4()?;
    Ok(c * h * w)
}

/// Copies `src` into `dst`, which may be uninitialised, of the same length.
fn write<T: Element>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: both hold src.len() elements, and dst (a unique borrow) does not overlap src;
    // MaybeUninit<T> has T's layout.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<T>(), src.len()) };
}

/// [a_n; b_n] for each sample, `a_per` and `b_per` elements a sample.
fn forward<T: Element>(a: &[T], a_per: usize, b: &[T], b_per: usize) -> Vec<T> {
    let len = a.len() + b.len();
    let mut y = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(a_per + b_per)
        .zip(a.par_chunks(a_per).zip(b.par_chunks(b_per)))
        .for_each(|(y_n, (a_n, b_n))| {
            let (first, second) = y_n.split_at_mut(a_per);
            write(first, a_n);
            write(second, b_n);
        });
    // SAFETY: the samples' chunks cover all len elements, each written whole above (a_n and
    // b_n hold a_per and b_per elements, since both inputs have the same batch).
    unsafe { y.set_len(len) };
    y
}

/// Elements `start..start + part` of each sample of `per` elements.
fn slice<T: Element>(g: &[T], per: usize, start: usize, part: usize) -> Vec<T> {
    let len = g.len() / per * part;
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(part)
        .zip(g.par_chunks(per))
        .for_each(|(out_n, g_n)| {
            write(out_n, &g_n[start..start + part]);
        });
    // SAFETY: one chunk of `part` elements per sample, each written whole above.
    unsafe { out.set_len(len) };
    out
}

struct Concat;

impl CustomOp2 for Concat {
    fn name(&self) -> &'static str {
        "ddpm-concat-channels"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((b, c1, h, w), (b2, c2, h2, w2)) = (l1.shape().dims4()?, l2.shape().dims4()?);
        if (b, h, w) != (b2, h2, w2) {
            candle_core::bail!(
                "concat: {:?} and {:?} differ in more than their channels",
                l1.dims(),
                l2.dims()
            );
        }
        dispatch!(s1, "ddpm-concat-channels", |T| {
            let a = contiguous::<T>(s1, l1, "ddpm-concat-channels")?;
            let other = contiguous::<T>(s2, l2, "ddpm-concat-channels")?;
            let y = forward(a, c1 * h * w, other, c2 * h * w);
            Ok((T::storage(y), Shape::from((b, c1 + c2, h, w))))
        })
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (a_per, b_per) = (per_sample(a.shape())?, per_sample(b.shape())?);
        let grad = grad.contiguous()?;
        let part = |start: usize, part: usize, shape: &Shape| -> Result<Tensor> {
            grad.apply_op1_no_bwd(&Slice {
                start,
                part,
                shape: shape.clone(),
            })
        };
        Ok((
            Some(part(0, a_per, a.shape())?),
            Some(part(a_per, b_per, b.shape())?),
        ))
    }
}

/// One input's part of the concatenation's gradient: elements `start..start + part` of each
/// sample, as a tensor of `shape`.
struct Slice {
    start: usize,
    part: usize,
    shape: Shape,
}

impl CustomOp1 for Slice {
    fn name(&self) -> &'static str {
        "ddpm-concat-channels-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let per = per_sample(layout.shape())?;
        if self.start + self.part > per || self.part * layout.dims()[0] != self.shape.elem_count() {
            candle_core::bail!(
                "concat backward: {:?} has no part {}..{} of {:?}",
                layout.dims(),
                self.start,
                self.start + self.part,
                self.shape.dims()
            );
        }
        dispatch!(storage, "ddpm-concat-channels-backward", |T| {
            let g = contiguous::<T>(storage, layout, "ddpm-concat-channels-backward")?;
            Ok((
                T::storage(slice(g, per, self.start, self.part)),
                self.shape.clone(),
            ))
        })
    }
}

/// [a; b] along the channels of two (B, C, H, W) tensors that differ only in C: on the CPU
/// in f32/f64 the parallel op above; elsewhere (and for empty tensors) `Tensor::cat`.
pub fn concat_channels(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let both = |f: fn(&Tensor) -> bool| f(a) && f(b);
    if super::applies_to(a)
        && a.dtype() == b.dtype()
        && both(|t| t.rank() == 4 && t.elem_count() > 0)
    {
        return a.contiguous()?.apply_op2(&b.contiguous()?, Concat);
    }
    Tensor::cat(&[a, b], 1)
}
