//! `[sampling]`: how images are drawn from a trained model.

use anyhow::{bail, Result};
use ddpm_diffusion::{ReverseVariance, Sampler};
use ddpm_schedule::Spacing;
use serde::{Deserialize, Serialize};

/// The reverse process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Ancestral sampling (Ho et al. 2020), over all T steps or a respaced subset.
    Ddpm,
    /// DDIM (Song et al. 2021): deterministic at η = 0, few steps.
    Ddim,
}

impl SamplerKind {
    /// The name in configs, reports and sample files: `"ddpm"` or `"ddim"`.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
        }
    }
}

/// `[sampling]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// `"ddpm"` or `"ddim"`.
    pub sampler: SamplerKind,
    /// Steps of the sampler; DDPM without it uses all T, DDIM defaults to 50.
    pub steps: Option<usize>,
    /// DDIM's η: 0 is deterministic, 1 has DDPM's variance.
    pub eta: f64,
    /// DDPM's reverse variance σ_t²: `"beta"` (β_t) or `"posterior_variance"` (β̃_t).
    pub variance: ReverseVariance,
    /// How a respaced sampler picks its timesteps: `"even"`, `"leading"` or `"trailing"`.
    pub spacing: Spacing,
    /// Clip the predicted x̂_0 to [−1, 1] at every step.
    pub clip_x0: bool,
    /// Images in the grids written during training.
    pub count: usize,
    /// Seed of the noise of those grids (the same images are followed across the run).
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Ddim,
            steps: None,
            eta: 0.0,
            variance: ReverseVariance::Beta,
            spacing: Spacing::Even,
            clip_x0: true,
            count: 64,
            seed: 0,
        }
    }
}

/// DDIM's steps when none are given.
pub const DEFAULT_DDIM_STEPS: usize = 50;

impl SamplingConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self, timesteps: usize) -> Result<()> {
        if let Some(steps) = self.steps {
            if steps == 0 || steps > timesteps {
                bail!("sampling.steps = {steps}: expected 1 to diffusion.timesteps = {timesteps}");
            }
        }
        if !(self.eta.is_finite() && self.eta >= 0.0) {
            bail!("sampling.eta = {}: expected a number ≥ 0", self.eta);
        }
        if !(1..=4096).contains(&self.count) {
            bail!("sampling.count = {}: expected 1 to 4096", self.count);
        }
        Ok(())
    }

    /// The sampler, with steps clamped to T.
    pub fn sampler(&self, timesteps: usize) -> Sampler {
        match self.sampler {
            SamplerKind::Ddpm => Sampler::Ddpm {
                steps: self.steps.filter(|&s| s < timesteps),
                spacing: self.spacing,
                variance: self.variance,
            },
            SamplerKind::Ddim => Sampler::Ddim {
                steps: self.steps.unwrap_or(DEFAULT_DDIM_STEPS).min(timesteps),
                spacing: self.spacing,
                eta: self.eta,
            },
        }
    }
}

/// The sampler options of `ddpm sample` and `ddpm eval`, each overriding the model config's.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SamplerArgs {
    /// The reverse process (default: the one the model's config names).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    /// Sampler steps (DDPM default: all T; DDIM default: 50).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM's η (0: deterministic).
    #[arg(long)]
    pub eta: Option<f64>,
}

impl SamplerArgs {
    /// `config` with these overrides, checked against T. Choosing a different sampler drops
    /// the configured step count, so that the new sampler's default applies.
    pub fn apply(&self, config: &SamplingConfig, timesteps: usize) -> Result<SamplingConfig> {
        let mut sampling = config.clone();
        if let Some(kind) = self.sampler {
            if kind != sampling.sampler {
                sampling.steps = None;
            }
            sampling.sampler = kind;
        }
        if self.steps.is_some() {
            sampling.steps = self.steps;
        }
        if let Some(eta) = self.eta {
            sampling.eta = eta;
        }
        sampling.validate(timesteps)?;
        Ok(sampling)
    }
}

impl SamplingConfig {
    /// Network evaluations per image of [`sampler`](Self::sampler).
    pub fn step_count(&self, timesteps: usize) -> usize {
        match self.sampler(timesteps) {
            Sampler::Ddpm { steps, .. } => steps.unwrap_or(timesteps),
            Sampler::Ddim { steps, .. } => steps,
        }
    }
}
