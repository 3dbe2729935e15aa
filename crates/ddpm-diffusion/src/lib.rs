//! Gaussian diffusion on [candle](https://github.com/huggingface/candle) tensors.
//!
//! The forward process, the training loss and the samplers of DDPM
//! ([Ho et al. 2020](https://arxiv.org/abs/2006.11239)), with DDIM
//! ([Song et al. 2021](https://arxiv.org/abs/2010.02502)), respaced sampling
//! ([Nichol & Dhariwal 2021](https://arxiv.org/abs/2102.09672)), x_0- and v-prediction
//! ([Salimans & Ho 2022](https://arxiv.org/abs/2202.00512)), Min-SNR-γ weighting
//! ([Hang et al. 2023](https://arxiv.org/abs/2303.09556)) and classifier-free guidance
//! ([Ho & Salimans 2022](https://arxiv.org/abs/2207.12598)).
//!
//! Nothing here knows a network: everything takes a [`Denoiser`], which any
//! `Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>` is, so an analytic oracle can
//! stand in for a model. The schedule math lives in [`ddpm_schedule`].
//!
//! **Timesteps.** This crate's API speaks the paper's t = 1..=T; the network is fed the
//! 0-based index t − 1, as diffusers and the DDPM release do.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use ddpm_diffusion::{GaussianDiffusion, NoiseRng, SampleOptions, Sampler};
//! use ddpm_schedule::{BetaSchedule, NoiseSchedule, Spacing};
//!
//! let schedule = NoiseSchedule::new(BetaSchedule::cosine(), 1000)?;
//! let diffusion = GaussianDiffusion::epsilon(schedule, &Device::Cpu)?;
//! // A stand-in network that predicts no noise.
//! let model = |x: &Tensor, _t: &Tensor| x.zeros_like();
//! let mut rng = NoiseRng::new(0);
//! let ddim = Sampler::Ddim { steps: 10, spacing: Spacing::Even, eta: 0.0 };
//! let out = diffusion.sample(&model, &ddim, (4, 1, 8, 8), &mut rng, SampleOptions::default(), &mut |_, _| {})?;
//! assert_eq!(out.images.dims(), &[4, 1, 8, 8]);
//! # Ok::<(), ddpm_diffusion::DiffusionError>(())
//! ```
#![warn(missing_docs)]

mod denoiser;
mod error;
mod gaussian_diffusion;
mod guidance;
mod noise_rng;
mod objective;
mod sampler;
mod training;

pub use denoiser::{ClassConditionalDenoiser, Denoiser};
pub use error::{DiffusionError, Result};
pub use gaussian_diffusion::{GaussianDiffusion, Prediction};
pub use guidance::ClassifierFreeGuidance;
pub use noise_rng::{NoiseRng, NoiseRngState};
pub use objective::{LossWeighting, Objective};
pub use sampler::{ReverseVariance, SampleOptions, Sampler, Samples, Snapshot};
pub use training::TrainingBatch;
