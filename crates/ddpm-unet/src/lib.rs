//! The U-Net of DDPM ([Ho et al. 2020](https://arxiv.org/abs/2006.11239), section 4 and
//! appendix B) in [candle](https://github.com/huggingface/candle): residual blocks with
//! GroupNorm, self-attention at chosen resolutions, sinusoidal time embeddings, optional
//! class embeddings for classifier-free guidance.
//!
//! The module tree and parameter names are those of diffusers' `UNet2DModel`, so
//! [`UNet::from_diffusers`] loads diffusers model directories (such as the converted paper
//! checkpoint `google/ddpm-cifar10-32`) and [`UNet::save_diffusers`] writes directories
//! diffusers loads.
//!
//! Every operation on the path has a backward pass: softmax and nearest upsampling are
//! written with differentiable ops because candle 0.11's fused `softmax_last_dim` records
//! no gradient and `upsample_nearest2d`'s backward overwrites instead of summing.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use ddpm_unet::{UNet, UNetConfig};
//!
//! let (unet, varmap) = UNet::init(&UNetConfig::fashion_mnist(), DType::F32, &Device::Cpu)?;
//! let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
//! let t = Tensor::new(&[0u32, 999], &Device::Cpu)?;
//! let eps = unet.forward(&x, &t, None, false)?;
//! assert_eq!(eps.dims(), &[2, 1, 28, 28]);
//! # Ok::<(), ddpm_unet::UNetError>(())
//! ```
#![warn(missing_docs)]

mod attention;
mod blocks;
mod config;
pub mod cpu_ops;
mod embeddings;
mod error;
mod layers;
mod resample;
mod resnet;
mod unet;

pub use attention::{softmax_last_dim, SpatialAttention};
pub use blocks::{DownBlock, MidBlock, UpBlock, UpChannels};
pub use config::{DownBlockKind, UNetConfig, UpBlockKind};
pub use embeddings::{timestep_embedding, TimestepEmbedding};
pub use error::{Result, UNetError};
pub use layers::{Conv2d, GroupNorm};
pub use resample::{upsample_nearest_2x, Downsample2D, Upsample2D};
pub use resnet::{ResnetBlock2D, ResnetConfig};
pub use unet::{load_weights, parameter_count, UNet, CONFIG_FILE, WEIGHTS_FILE};
