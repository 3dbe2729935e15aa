//! The reverse process: ancestral DDPM and DDIM sampling.

use candle_core::{DType, Shape, Tensor};
use ddpm_schedule::{NoiseSchedule, Spacing};

use crate::{Denoiser, DiffusionError, GaussianDiffusion, NoiseRng, Prediction, Result};

/// The variance σ_t² of the DDPM reverse step p(x_{t−1} | x_t).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum ReverseVariance {
    /// σ_t² = β_t, the upper bound (the paper's default, used for its samples).
    #[default]
    Beta,
    /// σ_t² = β̃_t = β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t), the lower bound.
    PosteriorVariance,
}

/// How to run the reverse process.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum Sampler {
    /// Ancestral sampling (Ho et al. 2020, algorithm 2):
    /// x_{t−1} = (x_t − (1 − α_t)/√(1 − ᾱ_t)·ε_θ(x_t, t))/√α_t + σ_t·z, z = 0 at t = 1,
    /// over all T steps or over a respaced subsequence (Nichol & Dhariwal 2021, §4).
    Ddpm {
        /// Number of steps S; `None` runs all T.
        steps: Option<usize>,
        /// Which S steps, when respaced.
        #[cfg_attr(feature = "serde", serde(default))]
        spacing: Spacing,
        /// σ_t² = β_t or β̃_t.
        #[cfg_attr(feature = "serde", serde(default))]
        variance: ReverseVariance,
    },
    /// DDIM (Song et al. 2021, eq. 12) over S respaced steps:
    /// x_{t'} = √ᾱ_{t'}·x̂_0 + √(1 − ᾱ_{t'} − σ²)·ε̂ + σ·z, with
    /// σ = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'}); η = 0 is deterministic and
    /// η = 1 is DDPM's posterior variance.
    Ddim {
        /// Number of steps S.
        steps: usize,
        /// Which S steps.
        #[cfg_attr(feature = "serde", serde(default))]
        spacing: Spacing,
        /// η ≥ 0.
        eta: f64,
    },
}

impl Default for Sampler {
    /// The paper's sampler: DDPM over all T steps with σ_t² = β_t.
    fn default() -> Self {
        Self::Ddpm {
            steps: None,
            spacing: Spacing::Even,
            variance: ReverseVariance::Beta,
        }
    }
}

/// Options of [`GaussianDiffusion::sample`] beyond the sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleOptions {
    /// Clip the implied x̂_0 to [−1, 1] at every step (data scaled to [−1, 1]).
    pub clip_x0: bool,
    /// How many intermediate x_t to keep for a progression figure, evenly spaced over the
    /// loop, the pure noise x_T first and the final sample last; 0 keeps none.
    pub snapshots: usize,
}

/// One intermediate state of the reverse process.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The paper's timestep t of the state (T for the initial noise, 0 for the sample).
    pub t: usize,
    /// x_t.
    pub x: Tensor,
}

/// The result of sampling.
#[derive(Debug, Clone)]
pub struct Samples {
    /// The samples x_0.
    pub images: Tensor,
    /// The kept intermediate states, from x_T to x_0 (empty unless asked for).
    pub snapshots: Vec<Snapshot>,
}

/// One step of the plan: the state's coefficients in the (possibly respaced) schedule.
struct PlannedStep {
    /// The original timestep, for the network and the snapshots.
    t: usize,
    /// The timestep the step leads to (0 at the end).
    t_prev: usize,
    alpha: f64,
    alpha_bar: f64,
    alpha_bar_prev: f64,
    beta: f64,
    posterior_variance: f64,
}

fn plan(schedule: &NoiseSchedule, original: &[usize]) -> Vec<PlannedStep> {
    (1..=schedule.num_timesteps())
        .rev()
        .map(|i| PlannedStep {
            t: original[i - 1],
            t_prev: if i == 1 { 0 } else { original[i - 2] },
            alpha: schedule.alpha(i),
            alpha_bar: schedule.alpha_bar(i),
            alpha_bar_prev: schedule.alpha_bar_prev(i),
            beta: schedule.beta(i),
            posterior_variance: schedule.posterior_variance(i),
        })
        .collect()
}

impl GaussianDiffusion {
    /// One ancestral DDPM step at the paper's step `t` of this schedule, from the network's
    /// ε̂ (already converted from its objective):
    /// x_{t−1} = (x_t − (1 − α_t)/√(1 − ᾱ_t)·ε̂)/√α_t + σ_t·z, with z = `noise` for t > 1 and
    /// z = 0 at t = 1. Exposed so the step can be checked against hand computation.
    pub fn ddpm_step(
        &self,
        x_t: &Tensor,
        t: usize,
        eps: &Tensor,
        variance: ReverseVariance,
        noise: &Tensor,
    ) -> Result<Tensor> {
        let s = self.schedule();
        if t == 0 || t > s.num_timesteps() {
            return Err(DiffusionError::TimestepOutOfRange {
                value: t as u32,
                timesteps: s.num_timesteps(),
            });
        }
        let step = PlannedStep {
            t,
            t_prev: t - 1,
            alpha: s.alpha(t),
            alpha_bar: s.alpha_bar(t),
            alpha_bar_prev: s.alpha_bar_prev(t),
            beta: s.beta(t),
            posterior_variance: s.posterior_variance(t),
        };
        ddpm_update(x_t, &step, eps, variance, noise)
    }

    /// Samples a batch of `shape` (B, C, H, W or any (B, …)) from noise with `model`.
    ///
    /// Every random draw (x_T and each step's z) comes from `rng`, so the same seed gives
    /// bit-identical samples. `progress(done, total)` is called after each step. The model's
    /// output is detached from autograd at each step, so the samples carry no graph.
    pub fn sample(
        &self,
        model: &impl Denoiser,
        sampler: &Sampler,
        shape: impl Into<Shape>,
        rng: &mut NoiseRng,
        options: SampleOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Samples> {
        let x_start = rng.randn(shape, self.device())?;
        self.sample_from(model, sampler, x_start, rng, options, progress)
    }

    /// Runs the reverse process from a given x_T (or, for a respaced sampler, from a state
    /// at its first kept timestep); see [`sample`](Self::sample).
    pub fn sample_from(
        &self,
        model: &impl Denoiser,
        sampler: &Sampler,
        x_start: Tensor,
        rng: &mut NoiseRng,
        options: SampleOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Samples> {
        let shape = x_start.shape().clone();
        let batch = x_start.dim(0)?;
        let (steps, spacing) = match *sampler {
            Sampler::Ddpm { steps, spacing, .. } => (steps, spacing),
            Sampler::Ddim {
                steps,
                spacing,
                eta,
            } => {
                if !(eta.is_finite() && eta >= 0.0) {
                    return Err(DiffusionError::InvalidOption {
                        name: "eta",
                        reason: format!("η = {eta} must be finite and non-negative"),
                    });
                }
                (Some(steps), spacing)
            }
        };
        let steps = match steps {
            None => plan(
                self.schedule(),
                &(1..=self.num_timesteps()).collect::<Vec<_>>(),
            ),
            Some(n) => {
                let respaced = self.schedule().respace(spacing, n)?;
                plan(respaced.schedule(), respaced.original_timesteps())
            }
        };
        let total = steps.len();
        let keep = snapshot_points(options.snapshots, total);
        let mut snapshots = Vec::with_capacity(keep.len());

        let mut x = x_start.to_dtype(DType::F32)?;
        if keep.first() == Some(&0) {
            snapshots.push(Snapshot {
                t: steps[0].t,
                x: x.clone(),
            });
        }
        for (done, step) in steps.iter().enumerate() {
            let _span = tracing::trace_span!("reverse_step", t = step.t).entered();
            let model_t = Tensor::full(step.t as u32 - 1, batch, self.device())?;
            // Sampling never needs gradients: a model whose weights are candle `Var`s would
            // otherwise chain every step's graph onto the next, keeping all activations of
            // all steps alive (13 GB for 100 steps of 8 images of the fashion-mnist model).
            let output = model.predict(&x, &model_t)?.detach().to_dtype(DType::F32)?;
            let pred = Prediction::from_model_output(
                self.objective(),
                &x,
                &output,
                step.alpha_bar,
                options.clip_x0,
            )?;
            x = match *sampler {
                Sampler::Ddpm { variance, .. } => {
                    let z = if step.t_prev == 0 {
                        x.zeros_like()?
                    } else {
                        rng.randn(shape.clone(), self.device())?
                    };
                    ddpm_update(&x, step, &pred.eps, variance, &z)?
                }
                Sampler::Ddim { eta, .. } => ddim_update(step, &pred, eta, rng)?,
            };
            if keep.contains(&(done + 1)) {
                snapshots.push(Snapshot {
                    t: step.t_prev,
                    x: x.clone(),
                });
            }
            progress(done + 1, total);
        }
        Ok(Samples {
            images: x,
            snapshots,
        })
    }
}

/// The paper's reverse step with the step's coefficients.
fn ddpm_update(
    x_t: &Tensor,
    step: &PlannedStep,
    eps: &Tensor,
    variance: ReverseVariance,
    noise: &Tensor,
) -> Result<Tensor> {
    let eps_coef = (1.0 - step.alpha) / (1.0 - step.alpha_bar).sqrt();
    let mean = ((x_t - eps.affine(eps_coef, 0.0)?)? / step.alpha.sqrt())?;
    if step.t_prev == 0 {
        return Ok(mean);
    }
    let sigma = match variance {
        ReverseVariance::Beta => step.beta.sqrt(),
        ReverseVariance::PosteriorVariance => step.posterior_variance.sqrt(),
    };
    Ok((mean + noise.affine(sigma, 0.0)?)?)
}

/// DDIM's update from (ε̂, x̂_0) to the previous kept step.
fn ddim_update(
    step: &PlannedStep,
    pred: &Prediction,
    eta: f64,
    rng: &mut NoiseRng,
) -> Result<Tensor> {
    let (ab, ab_prev) = (step.alpha_bar, step.alpha_bar_prev);
    let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt();
    let direction = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
    let x = (pred.x0.affine(ab_prev.sqrt(), 0.0)? + pred.eps.affine(direction, 0.0)?)?;
    if sigma == 0.0 {
        return Ok(x);
    }
    let z = rng.randn(x.shape(), x.device())?;
    Ok((x + z.affine(sigma, 0.0)?)?)
}

/// The loop positions (0 = before the first step, `total` = after the last) at which to
/// keep a snapshot: `count` of them, evenly spaced, ends included.
fn snapshot_points(count: usize, total: usize) -> Vec<usize> {
    match count {
        0 => Vec::new(),
        1 => vec![total],
        _ => {
            let mut points: Vec<usize> = (0..count)
                .map(|k| ((k * total) as f64 / (count - 1) as f64).round() as usize)
                .collect();
            points.dedup();
            points
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_points;

    #[test]
    fn snapshots_include_both_ends() {
        assert_eq!(snapshot_points(0, 1000), Vec::<usize>::new());
        assert_eq!(snapshot_points(1, 1000), vec![1000]);
        assert_eq!(snapshot_points(3, 1000), vec![0, 500, 1000]);
        assert_eq!(snapshot_points(11, 1000)[1], 100);
        assert_eq!(snapshot_points(20, 5), vec![0, 1, 2, 3, 4, 5]);
    }
}
