//! The residual block of the DDPM U-Net (Ho et al. 2020, appendix B; PixelCNN++'s
//! backbone with GroupNorm), diffusers' `ResnetBlock2D` with "default" time conditioning.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::layers::{Conv2d, GroupNorm};

/// h = conv1(SiLU(norm1(x))) + time_emb_proj(SiLU(temb))[:, :, None, None];
/// h = conv2(dropout(SiLU(norm2(h)))); out = shortcut(x) + h, where the shortcut is a 1×1
/// convolution when the widths differ and the identity otherwise.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    dropout: f64,
    span: tracing::Span,
}

/// Sizes of a [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm ε.
    pub eps: f64,
    /// Dropout probability during training.
    pub dropout: f64,
}

pub(crate) fn conv3x3(
    vb: VarBuilder,
    c_in: usize,
    c_out: usize,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Conv2d> {
    Conv2d::new(c_in, c_out, 3, stride, padding, vb)
}

impl ResnetBlock2D {
    /// The block with weights under `vb` (`norm1`, `conv1`, `time_emb_proj`, `norm2`,
    /// `conv2`, `conv_shortcut`).
    pub fn new(vb: VarBuilder, cfg: ResnetConfig) -> candle_core::Result<Self> {
        let (c_in, c_out) = (cfg.in_channels, cfg.out_channels);
        let conv_shortcut = if c_in != c_out {
            Some(Conv2d::new(c_in, c_out, 1, 1, 0, vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::new(cfg.groups, c_in, cfg.eps, vb.pp("norm1"))?,
            conv1: conv3x3(vb.pp("conv1"), c_in, c_out, 1, 1)?,
            time_emb_proj: candle_nn::linear(cfg.temb_channels, c_out, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(cfg.groups, c_out, cfg.eps, vb.pp("norm2"))?,
            conv2: conv3x3(vb.pp("conv2"), c_out, c_out, 1, 1)?,
            conv_shortcut,
            dropout: cfg.dropout,
            span: tracing::span!(tracing::Level::TRACE, "resnet"),
        })
    }

    /// The block applied to `x` (B, C, H, W) with time embedding `temb` (B, E); dropout
    /// only when `train`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let t = self.time_emb_proj.forward(&temb.silu()?)?;
        let h = self
            .conv1
            .forward_with_sample_bias(&self.norm1.forward_silu(x)?, &t)?;
        let mut h = self.norm2.forward_silu(&h)?;
        if train && self.dropout > 0.0 {
            h = candle_nn::ops::dropout(&h, self.dropout as f32)?;
        }
        // shortcut(x) + conv2(h), the sum written by conv2.
        match &self.conv_shortcut {
            Some(conv) => self.conv2.forward_residual(&h, &conv.forward(x)?),
            None => self.conv2.forward_residual(&h, x),
        }
    }
}
