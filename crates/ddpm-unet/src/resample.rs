//! Downsampling by a stride-2 convolution and upsampling by nearest-neighbour doubling
//! followed by a convolution (diffusers' `Downsample2D` and `Upsample2D` with `use_conv`).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::layers::Conv2d;

use crate::resnet::conv3x3;

/// A 3×3 convolution with stride 2. With padding 0, the input is first padded by one
/// pixel on the right and bottom (as the DDPM release and diffusers do).
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    asymmetric_pad: bool,
}

impl Downsample2D {
    /// Weights under `vb` (`conv`).
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> candle_core::Result<Self> {
        Ok(Self {
            conv: conv3x3(vb.pp("conv"), channels, channels, 2, padding)?,
            asymmetric_pad: padding == 0,
        })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.asymmetric_pad {
            let x = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

pub use crate::cpu_ops::upsample_nearest_2x;

/// Nearest-neighbour doubling, then a 3×3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Weights under `vb` (`conv`).
    pub fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        Ok(Self {
            conv: conv3x3(vb.pp("conv"), channels, channels, 1, 1)?,
        })
    }
}

impl Module for Upsample2D {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv.forward(&upsample_nearest_2x(x)?)
    }
}
