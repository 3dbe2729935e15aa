//! `[diffusion]`: the forward process and the training objective.

use anyhow::{bail, Result};
use ddpm_diffusion::{LossWeighting, Objective};
use ddpm_schedule::{BetaSchedule, NoiseSchedule};
use serde::{Deserialize, Serialize};

/// `[diffusion]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Steps T of the forward process.
    pub timesteps: usize,
    /// The β schedule, a table with `kind` = `"linear"` (`beta_start`, `beta_end`),
    /// `"scaled_linear"`, `"cosine"` (`s`, `max_beta`) or `"sigmoid"`.
    pub schedule: BetaSchedule,
    /// What the network predicts: `"epsilon"` (the paper), `"x0"` or `"v"`.
    pub objective: Objective,
    /// Per-timestep loss weights: `{ kind = "uniform" }` (L_simple) or
    /// `{ kind = "min_snr", gamma = 5.0 }`.
    pub loss_weighting: LossWeighting,
}

impl Default for DiffusionConfig {
    /// The paper's: linear β from 1e-4 to 0.02 over T = 1000, ε-prediction, L_simple.
    fn default() -> Self {
        Self {
            timesteps: 1000,
            schedule: BetaSchedule::linear(),
            objective: Objective::Epsilon,
            loss_weighting: LossWeighting::Uniform,
        }
    }
}

impl DiffusionConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<()> {
        if !(1..=100_000).contains(&self.timesteps) {
            bail!(
                "diffusion.timesteps = {}: expected 1 to 100000",
                self.timesteps
            );
        }
        self.noise_schedule()?;
        if let LossWeighting::MinSnr { gamma } = self.loss_weighting {
            if !(gamma.is_finite() && gamma > 0.0) {
                bail!("diffusion.loss_weighting.gamma = {gamma}: expected > 0");
            }
        }
        Ok(())
    }

    /// The schedule's coefficients.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(self.schedule, self.timesteps)
            .map_err(|e| anyhow::anyhow!("diffusion.schedule: {e}"))
    }
}
