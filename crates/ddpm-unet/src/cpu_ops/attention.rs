//! Scaled dot-product attention, O = softmax(s·Q·Kᵀ)·V, per (sample, head) in parallel, each
//! with single-threaded gemms; the N×N weights are recomputed in the backward pass instead of
//! stored (as FlashAttention does), so the op holds no (G, N, N) tensor between passes.
//!
//! With P = softmax(s·Q·Kᵀ) and upstream gradient dO:
//! dV = Pᵀ·dO, dP = dO·Vᵀ, dS = s·P ⊙ (dP − rowsum(dP ⊙ P)), dQ = dS·K, dK = dSᵀ·Q.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv2d::matmul;
use super::element::{contiguous, dispatch, Element};
use super::softmax::{softmax_row, softmax_row_backward};

#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Independent (sample, head) problems.
    groups: usize,
    /// Tokens.
    n: usize,
    /// Channels per head.
    d: usize,
}

impl Geometry {
    fn new(q: &Shape, k: &Shape, v: &Shape) -> Result<Self> {
        let (groups, n, d) = q.dims3()?;
        if k.dims() != q.dims() || v.dims() != q.dims() {
            candle_core::bail!(
                "attention: q {:?}, k {:?} and v {:?} must have one shape",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        Ok(Self { groups, n, d })
    }
    fn size(&self) -> usize {
        self.n * self.d
    }
}

/// P = softmax(s·Q·Kᵀ) into `p` (N×N).
fn weights<T: Element>(g: &Geometry, q: &[T], k: &[T], scale: f64, p: &mut [T]) {
    let (n, d) = (g.n, g.d);
    matmul(n, n, d, p, false, q, (d, 1), k, (1, d), Parallelism::None);
    for row in p.chunks_mut(n) {
        softmax_row(row, scale);
    }
}

fn forward<T: Element>(g: &Geometry, q: &[T], k: &[T], v: &[T], scale: f64) -> Vec<T> {
    let (n, d, size) = (g.n, g.d, g.size());
    let mut out = vec![T::ZERO; g.groups * size];
    out.par_chunks_mut(size).enumerate().for_each_init(
        || vec![T::ZERO; n * n],
        |p, (i, o)| {
            let range = i * size..(i + 1) * size;
            weights(g, &q[range.clone()], &k[range.clone()], scale, p);
            matmul(
                n,
                d,
                n,
                o,
                false,
                p,
                (n, 1),
                &v[range],
                (d, 1),
                Parallelism::None,
            );
        },
    );
    out
}

/// [dQ, dK, dV], each (G, N, d).
fn backward<T: Element>(g: &Geometry, q: &[T], k: &[T], v: &[T], grad: &[T], scale: f64) -> Vec<T> {
    let (n, d, size) = (g.n, g.d, g.size());
    let total = g.groups * size;
    let mut packed = vec![T::ZERO; 3 * total];
    let (dq, rest) = packed.split_at_mut(total);
    let (dk, dv) = rest.split_at_mut(total);
    dq.par_chunks_mut(size)
        .zip(dk.par_chunks_mut(size).zip(dv.par_chunks_mut(size)))
        .enumerate()
        .for_each_init(
            || (vec![T::ZERO; n * n], vec![T::ZERO; n * n]),
            |(p, dp), (i, (dq_i, (dk_i, dv_i)))| {
                let range = i * size..(i + 1) * size;
                let (q_i, k_i, v_i, do_i) = (
                    &q[range.clone()],
                    &k[range.clone()],
                    &v[range.clone()],
                    &grad[range],
                );
                weights(g, q_i, k_i, scale, p);
                // dV = Pᵀ·dO; dP = dO·Vᵀ.
                matmul(
                    n,
                    d,
                    n,
                    dv_i,
                    false,
                    p,
                    (1, n),
                    do_i,
                    (d, 1),
                    Parallelism::None,
                );
                matmul(
                    n,
                    n,
                    d,
                    dp,
                    false,
                    do_i,
                    (d, 1),
                    v_i,
                    (1, d),
                    Parallelism::None,
                );
                // dS = s·P ⊙ (dP − rowsum(dP ⊙ P)), in place of dP.
                for (dp_row, p_row) in dp.chunks_mut(n).zip(p.chunks(n)) {
                    softmax_row_backward(dp_row, p_row, scale);
                }
                // dQ = dS·K; dK = dSᵀ·Q.
                matmul(
                    n,
                    d,
                    n,
                    dq_i,
                    false,
                    dp,
                    (n, 1),
                    k_i,
                    (d, 1),
                    Parallelism::None,
                );
                matmul(
                    n,
                    d,
                    n,
                    dk_i,
                    false,
                    dp,
                    (1, n),
                    q_i,
                    (d, 1),
                    Parallelism::None,
                );
            },
        );
    packed
}

struct Attention {
    scale: f64,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "ddpm-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.shape(), l2.shape(), l3.shape())?;
        dispatch!(s1, "ddpm-attention", |T| {
            let q = contiguous::<T>(s1, l1, "ddpm-attention")?;
            let k = contiguous::<T>(s2, l2, "ddpm-attention")?;
            let v = contiguous::<T>(s3, l3, "ddpm-attention")?;
            Ok((
                T::storage(forward(&g, q, k, v, self.scale)),
                l1.shape().clone(),
            ))
        })
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let qk = Tensor::stack(&[q, k], 0)?;
        let packed = qk.apply_op3_no_bwd(
            v,
            &grad.contiguous()?,
            &AttentionBackward { scale: self.scale },
        )?;
        let n = q.elem_count();
        let part = |i: usize| packed.narrow(0, i * n, n)?.reshape(q.shape());
        Ok((Some(part(0)?), Some(part(1)?), Some(part(2)?)))
    }
}

/// [dQ, dK, dV] packed, on ([Q, K] stacked, V, dO).
struct AttentionBackward {
    scale: f64,
}

impl CustomOp3 for AttentionBackward {
    fn name(&self) -> &'static str {
        "ddpm-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l2.shape(), l2.shape(), l3.shape())?;
        if l1.dims() != [2, g.groups, g.n, g.d] {
            candle_core::bail!("attention backward: stacked q, k of shape {:?}", l1.dims());
        }
        dispatch!(s1, "ddpm-attention-backward", |T| {
            let qk = contiguous::<T>(s1, l1, "ddpm-attention-backward")?;
            let v = contiguous::<T>(s2, l2, "ddpm-attention-backward")?;
            let grad = contiguous::<T>(s3, l3, "ddpm-attention-backward")?;
            let (q, k) = qk.split_at(g.groups * g.size());
            let packed = backward(&g, q, k, v, grad, self.scale);
            let len = packed.len();
            Ok((T::storage(packed), Shape::from(len)))
        })
    }
}

/// softmax(scale·Q·Kᵀ)·V for Q, K, V of shape (G, N, d) (G = batch × heads): the fused
/// kernel on the CPU in f32/f64; elsewhere candle's matmuls around
/// [`softmax_last_dim`](super::softmax_last_dim), with the scores and softmax in f32 for
/// half-precision inputs (diffusers' `upcast_softmax`).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if super::applies_to(q) {
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, Attention { scale });
    }
    let dtype = q.dtype();
    let work = match dtype {
        candle_core::DType::F16 | candle_core::DType::BF16 => candle_core::DType::F32,
        other => other,
    };
    let scores = q.to_dtype(work)?.matmul(&k.to_dtype(work)?.t()?)?;
    let weights = super::softmax_last_dim(&scores, scale)?.to_dtype(dtype)?;
    weights.matmul(v)
}
