//! Respacing: sampling with S < T steps by keeping a subsequence of the timesteps.

use crate::{NoiseSchedule, ScheduleError};

/// How to choose S of the T timesteps.
///
/// Each variant is stated as the 0-based indices k = t − 1 it keeps, as the reference
/// implementations state them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Spacing {
    /// Improved DDPM's `space_timesteps` with one section:
    /// k_i = round_half_even(i·(T − 1)/(S − 1)), i = 0..S, so the first and last steps are
    /// kept (diffusers' "linspace" spacing).
    #[default]
    Even,
    /// diffusers' "leading": k_i = i·⌊T/S⌋, i = 0..S (DDIM's original choice).
    Leading,
    /// diffusers' "trailing": k = round(T − i·T/S) − 1, i = 0..S, so step T is always
    /// kept (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed").
    Trailing,
}

impl Spacing {
    /// The kept steps as the paper's 1-based t, strictly increasing.
    ///
    /// Errors unless 1 ≤ S ≤ T.
    pub fn timesteps(self, timesteps: usize, steps: usize) -> Result<Vec<usize>, ScheduleError> {
        if steps == 0 || steps > timesteps {
            return Err(ScheduleError::InvalidRespacing {
                requested: steps,
                timesteps,
            });
        }
        let (big_t, s) = (timesteps as f64, steps as f64);
        let zero_based: Vec<usize> = match self {
            Self::Even => {
                let stride = if steps == 1 {
                    0.0
                } else {
                    (big_t - 1.0) / (s - 1.0)
                };
                (0..steps)
                    .map(|i| (i as f64 * stride).round_ties_even() as usize)
                    .collect()
            }
            Self::Leading => {
                let ratio = timesteps / steps;
                (0..steps).map(|i| i * ratio).collect()
            }
            Self::Trailing => {
                let ratio = big_t / s;
                (0..steps)
                    .rev()
                    .map(|i| (big_t - i as f64 * ratio).round_ties_even() as usize - 1)
                    .collect()
            }
        };
        Ok(zero_based.into_iter().map(|k| k + 1).collect())
    }
}

/// A schedule over a subsequence τ_1 < … < τ_S of the original steps (Nichol & Dhariwal
/// 2021, section 4): it keeps ᾱ at the kept steps and recomputes
/// β_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}} (with ᾱ_{τ_0} = 1), so that sampling over S steps is an
/// exact diffusion process of its own.
///
/// α_i = ᾱ_{τ_i}/ᾱ_{τ_{i−1}} is kept exact; β_i = 1 − α_i can round to 1.0 when a kept step
/// spans almost all of the signal (α_i < 1e-16), which the samplers tolerate since they
/// divide by √α, never by 1 − β.
///
/// Its [`schedule`](Self::schedule) is indexed by the new step i = 1..=S; the network
/// must still be told the original timestep, [`original_timestep(i)`](Self::original_timestep).
#[derive(Debug, Clone, PartialEq)]
pub struct RespacedSchedule {
    schedule: NoiseSchedule,
    original_timesteps: Vec<usize>,
}

impl RespacedSchedule {
    /// The schedule over the S kept steps, indexed by i = 1..=S.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The original (1-based) timestep τ_i of new step i; panics unless 1 ≤ i ≤ S.
    pub fn original_timestep(&self, i: usize) -> usize {
        let steps = self.original_timesteps.len();
        assert!(
            (1..=steps).contains(&i),
            "respaced step i = {i} is outside 1..={steps}"
        );
        self.original_timesteps[i - 1]
    }

    /// All τ_i, strictly increasing (index i − 1 holds τ_i).
    pub fn original_timesteps(&self) -> &[usize] {
        &self.original_timesteps
    }

    /// S, the number of kept steps.
    pub fn num_steps(&self) -> usize {
        self.original_timesteps.len()
    }
}

impl NoiseSchedule {
    /// Keeps `steps` of the T steps, chosen by `spacing`. See [`RespacedSchedule`].
    ///
    /// Errors unless 1 ≤ steps ≤ T.
    pub fn respace(
        &self,
        spacing: Spacing,
        steps: usize,
    ) -> Result<RespacedSchedule, ScheduleError> {
        self.respace_to(&spacing.timesteps(self.num_timesteps(), steps)?)
    }

    /// Keeps exactly the given 1-based timesteps, which must be strictly increasing and
    /// lie in 1..=T. See [`RespacedSchedule`].
    pub fn respace_to(&self, kept: &[usize]) -> Result<RespacedSchedule, ScheduleError> {
        let timesteps = self.num_timesteps();
        if kept.is_empty() {
            return Err(ScheduleError::InvalidRespacing {
                requested: 0,
                timesteps,
            });
        }
        let mut previous = 0;
        for (position, &t) in kept.iter().enumerate() {
            if t <= previous || t > timesteps {
                return Err(ScheduleError::InvalidKeptTimestep {
                    position,
                    value: t,
                    timesteps,
                });
            }
            previous = t;
        }
        let alpha_bars: Vec<f64> = kept.iter().map(|&t| self.alpha_bar(t)).collect();
        // α_i = ᾱ_{τ_i}/ᾱ_{τ_{i−1}} directly, so ᾱ stays exact even where β_i ≈ 1.
        let alphas: Vec<f64> = alpha_bars
            .iter()
            .enumerate()
            .map(|(i, ab)| ab / if i == 0 { 1.0 } else { alpha_bars[i - 1] })
            .collect();
        let betas = alphas.iter().map(|alpha| 1.0 - alpha).collect();
        Ok(RespacedSchedule {
            schedule: NoiseSchedule::from_parts(betas, alphas, alpha_bars),
            original_timesteps: kept.to_vec(),
        })
    }
}
