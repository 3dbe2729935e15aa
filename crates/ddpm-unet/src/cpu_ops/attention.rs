//! Scaled dot-product attention, O = softmax(s·Q·Kᵀ)·V, per (sample, head) in parallel, each
//! with single-threaded gemms; the N×N weights are recomputed in the backward pass instead of
//! stored (as FlashAttention does), so the op holds no (G, N, N) tensor between passes.
//!
//! Q, K, V and O are (G, N, d), or (G, d, N) "channels first".
//!
//! With P = softmax(s·Q·Kᵀ) and upstream gradient dO:
//! dV = Pᵀ·dO, dP = dO·Vᵀ, dS = s·P ⊙ (dP − rowsum(dP ⊙ P)), dQ = dS·K, dK = dSᵀ·Q.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv2d::matmul;
use super::element::{contiguous, dispatch, with_scratch, Element};
use super::softmax::{softmax_row, softmax_row_backward};

#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Independent (sample, head) problems.
    groups: usize,
    /// Tokens.
    n: usize,
    /// Channels per head.
    d: usize,
    /// Q, K, V and O are stored (G, d, N) instead of (G, N, d).
    channels_first: bool,
}

impl Geometry {
    fn new(q: &Shape, k: &Shape, v: &Shape, channels_first: bool) -> Result<Self> {
        let (groups, a, b) = q.dims3()?;
        if k.dims() != q.dims() || v.dims() != q.dims() {
            candle_core::bail!(
                "attention: q {:?}, k {:?} and v {:?} must have one shape",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        let (n, d) = if channels_first { (b, a) } else { (a, b) };
        Ok(Self {
            groups,
            n,
            d,
            channels_first,
        })
    }
    fn size(&self) -> usize {
        self.n * self.d
    }
    /// (row, column) strides of a group's N×d matrix (Q, K, V, O or their gradients).
    fn tokens(&self) -> (usize, usize) {
        if self.channels_first {
            (1, self.n)
        } else {
            (self.d, 1)
        }
    }
    /// (row, column) strides of its d×N transpose.
    fn tokens_t(&self) -> (usize, usize) {
        let (rs, cs) = self.tokens();
        (cs, rs)
    }
}

/// dst (an N×d matrix in the geometry's layout) = A (N×k) · B (k×d). Channels first, dst is
/// stored as its d×N transpose, so the product computed is dstᵀ = Bᵀ·Aᵀ.
fn into_tokens<T: Element>(
    g: &Geometry,
    dst: &mut [T],
    k: usize,
    a: (&[T], (usize, usize)),
    b: (&[T], (usize, usize)),
) {
    let ((a, (a_rs, a_cs)), (b, (b_rs, b_cs))) = (a, b);
    if g.channels_first {
        matmul(
            g.d,
            g.n,
            k,
            dst,
            false,
            b,
            (b_cs, b_rs),
            a,
            (a_cs, a_rs),
            Parallelism::None,
        );
    } else {
        matmul(
            g.n,
            g.d,
            k,
            dst,
            false,
            a,
            (a_rs, a_cs),
            b,
            (b_rs, b_cs),
            Parallelism::None,
        );
    }
}

/// P = softmax(s·Q·Kᵀ) into `p` (N×N).
fn weights<T: Element>(g: &Geometry, q: &[T], k: &[T], scale: f64, p: &mut [T]) {
    let (n, d) = (g.n, g.d);
    matmul(
        n,
        n,
        d,
        p,
        false,
        q,
        g.tokens(),
        k,
        g.tokens_t(),
        Parallelism::None,
    );
    for row in p.chunks_mut(n) {
        softmax_row(row, scale);
    }
}

fn forward<T: Element>(g: &Geometry, q: &[T], k: &[T], v: &[T], scale: f64) -> Vec<T> {
    let (n, size) = (g.n, g.size());
    let mut out = vec![T::ZERO; g.groups * size];
    // The weights P live in this thread's reused scratch (`weights` writes all of it).
    out.par_chunks_mut(size).enumerate().for_each(|(i, o)| {
        with_scratch(n * n, |p| {
            let range = i * size..(i + 1) * size;
            weights(g, &q[range.clone()], &k[range.clone()], scale, p);
            // O = P·V.
            into_tokens(g, o, n, (p, (n, 1)), (&v[range], g.tokens()));
        })
    });
    out
}

/// [dQ, dK, dV], each laid out as Q.
fn backward<T: Element>(g: &Geometry, q: &[T], k: &[T], v: &[T], grad: &[T], scale: f64) -> Vec<T> {
    let (n, d, size) = (g.n, g.d, g.size());
    let total = g.groups * size;
    let mut packed = vec![T::ZERO; 3 * total];
    let (dq, rest) = packed.split_at_mut(total);
    let (dk, dv) = rest.split_at_mut(total);
    dq.par_chunks_mut(size)
        .zip(dk.par_chunks_mut(size).zip(dv.par_chunks_mut(size)))
        .enumerate()
        .for_each(|(i, (dq_i, (dk_i, dv_i)))| {
            // P and dP in this thread's reused scratch; both are written before they are read.
            with_scratch(2 * n * n, |scratch| {
                let (p, dp) = scratch.split_at_mut(n * n);
                let range = i * size..(i + 1) * size;
                let (q_i, k_i, v_i, do_i) = (
                    &q[range.clone()],
                    &k[range.clone()],
                    &v[range.clone()],
                    &grad[range],
                );
                weights(g, q_i, k_i, scale, p);
                // dV = Pᵀ·dO; dP = dO·Vᵀ.
                into_tokens(g, dv_i, n, (p, (1, n)), (do_i, g.tokens()));
                matmul(
                    n,
                    n,
                    d,
                    dp,
                    false,
                    do_i,
                    g.tokens(),
                    v_i,
                    g.tokens_t(),
                    Parallelism::None,
                );
                // dS = s·P ⊙ (dP − rowsum(dP ⊙ P)), in place of dP.
                for (dp_row, p_row) in dp.chunks_mut(n).zip(p.chunks(n)) {
                    softmax_row_backward(dp_row, p_row, scale);
                }
                // dQ = dS·K; dK = dSᵀ·Q.
                into_tokens(g, dq_i, n, (dp, (n, 1)), (k_i, g.tokens()));
                into_tokens(g, dk_i, n, (dp, (1, n)), (q_i, g.tokens()));
            })
        });
    packed
}

struct Attention {
    scale: f64,
    channels_first: bool,
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
        let g = Geometry::new(l1.shape(), l2.shape(), l3.shape(), self.channels_first)?;
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
            &AttentionBackward {
                scale: self.scale,
                channels_first: self.channels_first,
            },
        )?;
        let n = q.elem_count();
        let part = |i: usize| packed.narrow(0, i * n, n)?.reshape(q.shape());
        Ok((Some(part(0)?), Some(part(1)?), Some(part(2)?)))
    }
}

/// [dQ, dK, dV] packed, on ([Q, K] stacked, V, dO).
struct AttentionBackward {
    scale: f64,
    channels_first: bool,
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
        let g = Geometry::new(l2.shape(), l2.shape(), l3.shape(), self.channels_first)?;
        if l1.dims() != [&[2], l2.dims()].concat() {
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
        let op = Attention {
            scale,
            channels_first: false,
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
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

/// [`attention`] on Q, K, V of shape (G, d, N), channels first, returning (G, d, N): the
/// layout of a (B, C, H, W) feature map viewed as (B·heads, C/heads, H·W), so that the
/// projections around it can stay 1×1 convolutions with no transposed copies. The fused
/// kernel on the CPU in f32/f64 (the same products with transposed strides); elsewhere
/// [`attention`] between transposes.
pub fn attention_channels_first(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if super::applies_to(q) {
        let op = Attention {
            scale,
            channels_first: true,
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    attention(&q.t()?, &k.t()?, &v.t()?, scale)?.t()
}
