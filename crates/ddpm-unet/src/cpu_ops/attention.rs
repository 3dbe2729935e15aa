//! Scaled dot-product attention, O = softmax(s·Q·Kᵀ)·V, per (sample, head) in parallel, each
//! single-threaded on its weights stored transposed ([`attention_kernels`]); the N×N weights
//! are recomputed in the backward pass instead of stored (as FlashAttention does), so the op
//! holds no (G, N, N) tensor between passes.
//!
//! The kernel takes Q, K and V packed channels first in one (B, 3·heads·d, N) tensor, the
//! output of a single 1×1 convolution for the three projections, and its backward writes
//! their gradients packed the same way, so the projections' backward is one convolution
//! backward too (and candle sums no separate input gradients).
//!
//! With P = softmax(s·Q·Kᵀ) and upstream gradient dO:
//! dV = Pᵀ·dO, dP = dO·Vᵀ, dS = s·P ⊙ (dP − rowsum(dP ⊙ P)), dQ = dS·K, dK = dSᵀ·Q.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention_kernels;
use super::element::{contiguous, dispatch, with_scratch, Element};

/// The shapes of one attention: Q, K and V packed channels first in one (B, 3·heads·d, N)
/// tensor, the layout of a 1×1 convolution's output with the q, k and v channels stacked,
/// and O (B, heads·d, N).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    heads: usize,
    /// Tokens.
    n: usize,
    /// Channels per head.
    d: usize,
}

impl Geometry {
    fn new(qkv: &Shape, heads: usize) -> Result<Self> {
        let (batch, channels, n) = qkv.dims3()?;
        if heads == 0 || channels % (3 * heads) != 0 {
            candle_core::bail!(
                "attention: {channels} packed q, k, v channels do not split into 3 × {heads} heads"
            );
        }
        Ok(Self {
            batch,
            heads,
            n,
            d: channels / (3 * heads),
        })
    }
    /// Elements of one head's N×d matrix.
    fn size(&self) -> usize {
        self.n * self.d
    }
    /// Elements of one sample's Q (or K, V, O): heads·d·N.
    fn per_sample(&self) -> usize {
        self.heads * self.size()
    }
    /// The shape for [`super::profile`].
    fn label(&self) -> String {
        format!(
            "{} heads of {} channels, {} tokens, batch {}",
            self.heads, self.d, self.n, self.batch
        )
    }
    fn out_shape(&self) -> Shape {
        Shape::from((self.batch, self.heads * self.d, self.n))
    }
}

/// Head h's Q, K and V within one sample's packed (3·heads·d, N) block.
fn head<'a, T>(g: &Geometry, sample: &'a [T], h: usize) -> (&'a [T], &'a [T], &'a [T]) {
    let (size, per) = (g.size(), g.per_sample());
    let at = |part: usize| &sample[part * per + h * size..][..size];
    (at(0), at(1), at(2))
}

fn forward<T: Element>(g: &Geometry, qkv: &[T], scale: f64) -> Vec<T> {
    let (n, size, ld) = (g.n, g.size(), attention_kernels::leading(g.n));
    // Written head by head into uninitialised capacity (`mix` writes all of each head's O).
    let len = g.batch * g.per_sample();
    let mut out = Vec::with_capacity(len);
    // The weights live in this thread's reused scratch (`softmax_weights_t` writes them and
    // the sums' reciprocals).
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(size)
        .enumerate()
        .for_each(|(i, o)| {
            let (b, h) = (i / g.heads, i % g.heads);
            let (q, k, v) = head(g, &qkv[b * 3 * g.per_sample()..], h);
            with_scratch(n * ld + ld, |scratch| {
                // Unnormalised weights, and the reciprocals of their sums for O.
                let (pt, inv) = scratch.split_at_mut(n * ld);
                attention_kernels::softmax_weights_t((n, g.d), q, k, scale, pt, ld, Some(inv));
                // O = P·V.
                attention_kernels::mix(n, g.d, pt, ld, v, o, Some(inv));
            })
        });
    // SAFETY: every head's O was written by `mix`.
    unsafe { out.set_len(len) };
    out
}

/// ∂L/∂(Q, K, V), packed like the input.
fn backward<T: Element>(g: &Geometry, qkv: &[T], grad: &[T], scale: f64) -> Vec<T> {
    let (n, d, size, per) = (g.n, g.d, g.size(), g.per_sample());
    let ld = attention_kernels::leading(n);
    // Uninitialised, as in the forward: `mix` writes all of each head's dQ, dK and dV.
    let len = g.batch * 3 * per;
    let mut packed = Vec::with_capacity(len);
    packed.spare_capacity_mut()[..len]
        .par_chunks_mut(3 * per)
        .zip(qkv.par_chunks(3 * per))
        .zip(grad.par_chunks(per))
        .for_each(|((d_sample, sample), do_sample)| {
            let (dq, rest) = d_sample.split_at_mut(per);
            let (dk, dv) = rest.split_at_mut(per);
            for (h, ((dq_i, dk_i), dv_i)) in dq
                .chunks_mut(size)
                .zip(dk.chunks_mut(size))
                .zip(dv.chunks_mut(size))
                .enumerate()
            {
                let (q_i, k_i, v_i) = head(g, sample, h);
                let do_i = &do_sample[h * size..][..size];
                // Pᵀ, dPᵀ (then dSᵀ) and one of P or dS by rows, in this thread's reused
                // scratch; each is written before it is read.
                with_scratch(3 * n * ld, |scratch| {
                    let (pt, rest) = scratch.split_at_mut(n * ld);
                    let (dpt, rows) = rest.split_at_mut(n * ld);
                    attention_kernels::softmax_weights_t((n, d), q_i, k_i, scale, pt, ld, None);
                    // dV = Pᵀ·dO, i.e. dVᵀ (channels first) from P by rows.
                    attention_kernels::transpose(pt, rows, n, ld);
                    attention_kernels::mix(n, d, rows, ld, do_i, dv_i, None);
                    // dPᵀ = (dO·Vᵀ)ᵀ, then dSᵀ = (s·P ⊙ (dP − rowsum(dP ⊙ P)))ᵀ in place.
                    attention_kernels::scores_t(n, d, do_i, v_i, dpt, ld);
                    attention_kernels::softmax_columns_backward(dpt, pt, n, ld, scale);
                    // dQ = dS·K; dK = dSᵀ·Q from dS by rows.
                    attention_kernels::mix(n, d, dpt, ld, k_i, dq_i, None);
                    attention_kernels::transpose(dpt, rows, n, ld);
                    attention_kernels::mix(n, d, rows, ld, q_i, dk_i, None);
                })
            }
        });
    // SAFETY: every head's dQ, dK and dV was written by `mix`.
    unsafe { packed.set_len(len) };
    packed
}

struct Attention {
    heads: usize,
    scale: f64,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "ddpm-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(layout.shape(), self.heads)?;
        super::profile::time(
            "attention",
            || g.label(),
            || {
                dispatch!(storage, "ddpm-attention", |T| {
                    let qkv = contiguous::<T>(storage, layout, "ddpm-attention")?;
                    Ok((T::storage(forward(&g, qkv, self.scale)), g.out_shape()))
                })
            },
        )
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = AttentionBackward {
            heads: self.heads,
            scale: self.scale,
        };
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// ∂L/∂(Q, K, V), packed like the input, on (packed Q, K, V; dO).
struct AttentionBackward {
    heads: usize,
    scale: f64,
}

impl CustomOp2 for AttentionBackward {
    fn name(&self) -> &'static str {
        "ddpm-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.shape(), self.heads)?;
        if l2.shape() != &g.out_shape() {
            candle_core::bail!(
                "attention backward: output gradient {:?}, expected {:?}",
                l2.dims(),
                g.out_shape().dims()
            );
        }
        super::profile::time(
            "attention backward",
            || g.label(),
            || {
                dispatch!(s1, "ddpm-attention-backward", |T| {
                    let qkv = contiguous::<T>(s1, l1, "ddpm-attention-backward")?;
                    let grad = contiguous::<T>(s2, l2, "ddpm-attention-backward")?;
                    Ok((
                        T::storage(backward(&g, qkv, grad, self.scale)),
                        l1.shape().clone(),
                    ))
                })
            },
        )
    }
}

/// Multi-head attention on Q, K and V packed channels first: `qkv` is (B, 3·heads·d, N),
/// the q, k and v channels stacked (the output of one 1×1 convolution whose weight stacks
/// the three projections), and the result is (B, heads·d, N), head h in channels
/// h·d..(h + 1)·d: O_h = V_h·softmax(s·Q_hᵀ·K_h)ᵀ with Q_h, K_h, V_h (d, N). The fused
/// kernel on the CPU in f32/f64, whose backward writes the packed gradient of `qkv` in
/// one buffer; elsewhere [`attention`] on the unpacked heads.
pub fn attention_qkv(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let g = Geometry::new(qkv.shape(), heads)?;
    if super::applies_to(qkv) {
        return qkv.contiguous()?.apply_op1(Attention { heads, scale });
    }
    let (b, c) = (g.batch, g.heads * g.d);
    let part = |i: usize| -> Result<Tensor> {
        qkv.narrow(1, i * c, c)?.reshape((b * heads, g.d, g.n))?.t()
    };
    attention(&part(0)?, &part(1)?, &part(2)?, scale)?
        .t()?
        .reshape((b, c, g.n))
}

/// softmax(scale·Q·Kᵀ)·V for Q, K, V of shape (G, N, d) (G = batch × heads): on the CPU
/// in f32/f64 the fused kernel of [`attention_qkv`] (one head per group, on a channels-first
/// copy of the three); elsewhere candle's matmuls around
/// [`softmax_last_dim`](super::softmax_last_dim), with the scores and softmax in f32 for
/// half-precision inputs (diffusers' `upcast_softmax`).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if super::applies_to(q) {
        return attention_channels_first(&q.t()?, &k.t()?, &v.t()?, scale)?.t();
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

/// [`attention`] on Q, K, V of shape (G, d, N), channels first, returning (G, d, N). On the
/// CPU in f32/f64 the three are packed into one (G, 3·d, N) tensor for [`attention_qkv`]
/// with one head; elsewhere [`attention`] between transposes.
pub fn attention_channels_first(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if super::applies_to(q) {
        return attention_qkv(&Tensor::cat(&[q, k, v], 1)?, 1, scale);
    }
    attention(&q.t()?, &k.t()?, &v.t()?, scale)?.t()
}
