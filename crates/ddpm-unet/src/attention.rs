//! Spatial self-attention (Ho et al. 2020 use it at 16×16), diffusers' `Attention` as built
//! for UNet2DModel's blocks: GroupNorm, one linear map each for q, k, v and the output,
//! a residual connection.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::layers::GroupNorm;

/// out = x + to_out(softmax(q·kᵀ/√d)·v) over the H·W positions, with q, k, v linear maps of
/// group_norm(x) and `heads` heads of d = C/heads channels.
#[derive(Debug, Clone)]
pub struct SpatialAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    span: tracing::Span,
}

impl SpatialAttention {
    /// Attention over `channels` channels in heads of `head_dim`, weights under `vb`
    /// (`group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`).
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        head_dim: usize,
        groups: usize,
        eps: f64,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::new(groups, channels, eps, vb.pp("group_norm"))?,
            to_q: candle_nn::linear(channels, channels, vb.pp("to_q"))?,
            to_k: candle_nn::linear(channels, channels, vb.pp("to_k"))?,
            to_v: candle_nn::linear(channels, channels, vb.pp("to_v"))?,
            to_out: candle_nn::linear(channels, channels, vb.pp("to_out").pp("0"))?,
            heads: channels / head_dim,
            span: tracing::span!(tracing::Level::TRACE, "attention"),
        })
    }
}

/// softmax over the last dimension (see [`crate::cpu_ops::softmax_last_dim`]).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    crate::cpu_ops::softmax_last_dim(x, 1.0)
}

impl SpatialAttention {
    /// The same block on the (B, C, H, W) map as it is: the projections are 1×1 convolutions
    /// (the linear map applied at every position), q, k and v one convolution with their
    /// weights stacked, whose (B, 3C, H·W) output is the packed channels-first layout of
    /// [`attention_qkv`](crate::cpu_ops::attention_qkv). No transposed copy is made, forward
    /// or backward; the gradient of q, k and v comes back packed, so their input gradient is
    /// one product over 3C channels; and the biases' gradients are sums over contiguous rows.
    fn forward_channels_first(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let d = c / self.heads;
        let normed = self.group_norm.forward(x)?;
        // q, k and v from one 1×1 convolution whose weight stacks the three projections.
        let weight = Tensor::cat(
            &[self.to_q.weight(), self.to_k.weight(), self.to_v.weight()],
            0,
        )?
        .reshape((3 * c, c, 1, 1))?;
        let biases = [self.to_q.bias(), self.to_k.bias(), self.to_v.bias()];
        let bias = if biases.iter().all(Option::is_none) {
            None
        } else {
            // A projection without a bias contributes zeros.
            let parts = biases
                .iter()
                .map(|b| match b {
                    Some(b) => Ok((*b).clone()),
                    None => Tensor::zeros(c, x.dtype(), x.device()),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        };
        let qkv = crate::cpu_ops::conv2d(&normed, &weight, bias.as_ref(), 1, 0)?.reshape((
            b,
            3 * c,
            h * w,
        ))?;
        let attended = crate::cpu_ops::attention_qkv(&qkv, self.heads, 1.0 / (d as f64).sqrt())?
            .reshape((b, c, h, w))?;
        let out_weight = self.to_out.weight().reshape((c, c, 1, 1))?;
        // x + the output projection, the sum written by the projection.
        crate::cpu_ops::conv2d_residual(&attended, &out_weight, self.to_out.bias(), x, 1, 0)
    }
}

impl Module for SpatialAttention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        if crate::cpu_ops::applies_to(x) {
            return self.forward_channels_first(x);
        }
        let (b, c, h, w) = x.dims4()?;
        let (heads, d) = (self.heads, c / self.heads);
        // The projections run on one (B·HW, C) matrix: a single gemm each, where a 3-D input
        // would make candle's Linear run B small ones (and candle 0.11's Linear returns wrong
        // numbers, without an error, on a transposed 3-D layout).
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * h * w, c))?; // (B·HW, C)
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, h * w, heads, d))?
                .transpose(1, 2)?
                .contiguous() // (B, heads, HW, d)
        };
        let q = split(self.to_q.forward(&tokens)?)?;
        let k = split(self.to_k.forward(&tokens)?)?;
        let v = split(self.to_v.forward(&tokens)?)?;
        let attended = crate::cpu_ops::attention(
            &q.reshape((b * heads, h * w, d))?,
            &k.reshape((b * heads, h * w, d))?,
            &v.reshape((b * heads, h * w, d))?,
            1.0 / (d as f64).sqrt(),
        )?
        .reshape((b, heads, h * w, d))?;
        let merged = attended.transpose(1, 2)?.reshape((b * h * w, c))?;
        let out = self
            .to_out
            .forward(&merged)?
            .reshape((b, h * w, c))?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        x + out
    }
}
