//! The arithmetic of the training forward and backward.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use candle_nn::VarBuilder;
use ddpm_unet::{UNet, UNetConfig};

use crate::Result;

/// The dtype of the training forward and backward. The weights, the optimizer state, the
/// EMA and the loss stay in f32 in both cases ("f32 master weights").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: each step casts the f32 weights and the noisy input to bf16, runs
    /// the network and its backward in bf16, and casts the prediction back to f32 for the
    /// loss; the gradients arrive at the f32 weights through the casts' backward, in f32.
    /// For GPUs (tensor cores): candle's CPU matmul has no bf16, so [`crate::Trainer`]
    /// refuses it on the CPU.
    Bf16,
}

impl Precision {
    /// The dtype the network computes in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    /// The name used in configs: `"f32"` or `"bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// The forward of mixed-precision training: the network is built on `dtype` casts of the
/// f32 `weights`, run on the `dtype` cast of `x_t`, and its prediction is cast back to f32.
/// The casts are part of the graph, so `loss.backward()` delivers the gradients to the f32
/// weights, converted to f32 by the casts' backward: the f32 master weights and optimizer
/// never see `dtype`. Any float dtype the device computes in works (bf16 on CUDA; f16 on
/// the CPU, which the tests use).
pub fn mixed_precision_forward(
    unet_config: &UNetConfig,
    weights: &HashMap<String, Var>,
    dtype: DType,
    x_t: &Tensor,
    t: &Tensor,
    labels: Option<&Tensor>,
    train: bool,
) -> Result<Tensor> {
    let mut cast = HashMap::with_capacity(weights.len());
    for (name, var) in weights {
        cast.insert(name.clone(), var.as_tensor().to_dtype(dtype)?);
    }
    let device = x_t.device().clone();
    let unet = UNet::new(VarBuilder::from_tensors(cast, dtype, &device), unet_config)?;
    let prediction = unet.forward(&x_t.to_dtype(dtype)?, t, labels, train)?;
    Ok(prediction.to_dtype(DType::F32)?)
}
