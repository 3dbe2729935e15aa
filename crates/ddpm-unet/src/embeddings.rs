//! Sinusoidal timestep embeddings (Vaswani et al. 2017; Ho et al. 2020, section 4) and the
//! MLP that follows them.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// The sinusoidal embedding of timesteps, diffusers' `get_timestep_embedding`:
/// with h = dim/2 and frequencies ω_i = exp(−ln(10000)·i/(h − freq_shift)), i = 0..h,
/// emb(t) = [sin(t·ω), cos(t·ω)], or [cos(t·ω), sin(t·ω)] when `flip_sin_to_cos`.
///
/// `t` holds any numeric timesteps, shape (B,); the result is f32 (B, dim).
pub fn timestep_embedding(
    t: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: usize,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let device: &Device = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - freq_shift as f64)).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), device)?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[&cos, &sin], 1)?
    } else {
        Tensor::cat(&[&sin, &cos], 1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// diffusers' `TimestepEmbedding`: linear_1 → SiLU → linear_2.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// `in_dim` → `out_dim` → `out_dim`, weights under `vb` (`linear_1`, `linear_2`).
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(xs)?.silu()?)
    }
}
