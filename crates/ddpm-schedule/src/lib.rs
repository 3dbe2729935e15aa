//! Noise schedules for denoising diffusion probabilistic models.
//!
//! Pure f64 math with no tensor library, usable on its own: the variance schedules of
//! DDPM ([Ho et al. 2020](https://arxiv.org/abs/2006.11239)) and Improved DDPM
//! ([Nichol & Dhariwal 2021](https://arxiv.org/abs/2102.09672)), every coefficient the
//! forward process, the posterior and the samplers need, and respacing for samplers that
//! take fewer steps than the model was trained with.
//!
//! - [`BetaSchedule`]: the family (linear, scaled linear, cosine, sigmoid) and its parameters.
//! - [`NoiseSchedule`]: β, α, ᾱ, √ᾱ, √(1−ᾱ), the posterior variance β̃ and mean
//!   coefficients, SNR, for t = 1..=T (the paper's 1-based convention, documented on the type).
//! - [`Spacing`] and [`RespacedSchedule`]: S of the T steps, with β recomputed from ᾱ.
//!
//! ```
//! use ddpm_schedule::{BetaSchedule, NoiseSchedule, Spacing};
//!
//! let cosine = NoiseSchedule::new(BetaSchedule::cosine(), 1000)?;
//! // The forward process in closed form: x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε.
//! let (x0, eps) = (0.5, -1.2);
//! let x500 = cosine.sqrt_alpha_bar(500) * x0 + cosine.sqrt_one_minus_alpha_bar(500) * eps;
//! assert!(x500.is_finite());
//!
//! // A 50-step sampler keeps ᾱ at the kept steps.
//! let short = cosine.respace(Spacing::Even, 50)?;
//! assert_eq!(short.original_timestep(50), 1000);
//! assert_eq!(short.schedule().alpha_bar(50), cosine.alpha_bar(1000));
//! # Ok::<(), ddpm_schedule::ScheduleError>(())
//! ```
//!
//! With the `serde` feature, [`BetaSchedule`] and [`Spacing`] can be read from configs.
#![warn(missing_docs)]

mod beta_schedule;
mod error;
mod noise_schedule;
mod respacing;

pub use beta_schedule::BetaSchedule;
pub use error::ScheduleError;
pub use noise_schedule::NoiseSchedule;
pub use respacing::{RespacedSchedule, Spacing};
