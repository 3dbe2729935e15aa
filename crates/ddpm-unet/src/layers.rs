//! The convolution and GroupNorm layers of the U-Net: candle-nn's parameters (same names,
//! same initialisation), run through [`crate::cpu_ops`]'s kernels on the CPU.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

use crate::cpu_ops;

/// A 2-D convolution with bias, symmetric padding and a stride (`weight`, `bias`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Loads or creates `weight` (c_out, c_in, k, k) and `bias` (c_out) under `vb`, with
    /// candle-nn's initialisation.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let config = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let conv = candle_nn::conv2d(c_in, c_out, kernel, config, vb)?;
        Ok(Self {
            weight: conv.weight().clone(),
            bias: conv.bias().cloned(),
            stride,
            padding,
        })
    }

    /// y = w ⋆ x + b + t[:, :, None, None], for t (B, c_out): a bias per sample and channel
    /// (the time embedding of a residual block) added by the convolution itself.
    pub fn forward_with_sample_bias(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let bias = match &self.bias {
            Some(b) => t.broadcast_add(b)?,
            None => t.clone(),
        };
        cpu_ops::conv2d(x, &self.weight, Some(&bias), self.stride, self.padding)
    }

    /// y = w ⋆ x + b + r, for r of y's shape (a residual block's skip path), added by the
    /// convolution as it writes y.
    pub fn forward_residual(&self, x: &Tensor, r: &Tensor) -> Result<Tensor> {
        cpu_ops::conv2d_residual(
            x,
            &self.weight,
            self.bias.as_ref(),
            r,
            self.stride,
            self.padding,
        )
    }
}

impl Module for Conv2d {
    /// y = w ⋆ x + b.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        cpu_ops::conv2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
        )
    }
}

/// GroupNorm with per-channel affine parameters (`weight` γ, `bias` β).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads or creates γ (ones) and β (zeros) of `channels` under `vb`.
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {groups} groups do not divide {channels} channels");
        }
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
            groups,
            eps,
        })
    }

    /// SiLU(GroupNorm(x)), fused.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        cpu_ops::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, true)
    }
}

impl Module for GroupNorm {
    /// γ·(x − μ)/√(σ² + ε) + β over each group of channels of each sample.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        cpu_ops::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }
}
