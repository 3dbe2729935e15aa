//! The families of variance schedules β_1..β_T.

use crate::ScheduleError;

/// A family of variance schedules: how the per-step noise variance β_t grows over the
/// T steps of the forward process q(x_t | x_{t−1}) = N(√(1−β_t)·x_{t−1}, β_t·I).
///
/// Turn one into numbers with [`NoiseSchedule::new`](crate::NoiseSchedule::new).
///
/// With the `serde` feature a schedule is written as a tagged table, e.g. in TOML
/// `schedule = { kind = "cosine", s = 0.008 }`; omitted fields take their defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum BetaSchedule {
    /// Ho et al. 2020: β_t = β_start + (β_end − β_start)·(t−1)/(T−1), t = 1..T.
    Linear {
        /// β_1. The paper's value is 1e-4.
        #[cfg_attr(feature = "serde", serde(default = "defaults::beta_start"))]
        beta_start: f64,
        /// β_T. The paper's value is 0.02.
        #[cfg_attr(feature = "serde", serde(default = "defaults::beta_end"))]
        beta_end: f64,
    },
    /// Linear in √β (latent diffusion, Stable Diffusion):
    /// β_t = (√β_start + (√β_end − √β_start)·(t−1)/(T−1))².
    ScaledLinear {
        /// β_1 (Stable Diffusion uses 0.00085).
        #[cfg_attr(feature = "serde", serde(default = "defaults::beta_start"))]
        beta_start: f64,
        /// β_T (Stable Diffusion uses 0.012).
        #[cfg_attr(feature = "serde", serde(default = "defaults::beta_end"))]
        beta_end: f64,
    },
    /// Nichol & Dhariwal 2021 (Improved DDPM), eq. 17:
    /// ᾱ_t = f(t)/f(0), f(t) = cos(((t/T + s)/(1 + s))·π/2)²,
    /// β_t = min(1 − ᾱ_t/ᾱ_{t−1}, max_beta), and ᾱ recomputed from the clipped β's.
    Cosine {
        /// Small offset that keeps β_1 from vanishing. The paper's value is 0.008.
        #[cfg_attr(feature = "serde", serde(default = "defaults::cosine_s"))]
        s: f64,
        /// Upper clip on β, preventing the singularity at t = T. The paper's value is 0.999.
        #[cfg_attr(feature = "serde", serde(default = "defaults::max_beta"))]
        max_beta: f64,
    },
    /// Sigmoid schedule (Chen 2023, "On the importance of noise scheduling"; Jabri et al.
    /// 2022): with u = t/T and σ the logistic function,
    /// g(u) = (σ(end/τ) − σ((u·(end − start) + start)/τ)) / (σ(end/τ) − σ(start/τ)),
    /// ᾱ_t = g(t/T)/g(0), then β_t = min(1 − ᾱ_t/ᾱ_{t−1}, max_beta).
    Sigmoid {
        /// Left end of the sigmoid's input range (default −3).
        #[cfg_attr(feature = "serde", serde(default = "defaults::sigmoid_start"))]
        start: f64,
        /// Right end of the sigmoid's input range (default 3).
        #[cfg_attr(feature = "serde", serde(default = "defaults::sigmoid_end"))]
        end: f64,
        /// Temperature τ: larger is closer to linear in ᾱ (default 1).
        #[cfg_attr(feature = "serde", serde(default = "defaults::sigmoid_tau"))]
        tau: f64,
        /// Upper clip on β (default 0.999).
        #[cfg_attr(feature = "serde", serde(default = "defaults::max_beta"))]
        max_beta: f64,
    },
}

/// The paper defaults, shared by `Default`-style constructors and serde.
mod defaults {
    pub(crate) fn beta_start() -> f64 {
        1e-4
    }
    pub(crate) fn beta_end() -> f64 {
        0.02
    }
    pub(crate) fn cosine_s() -> f64 {
        0.008
    }
    pub(crate) fn max_beta() -> f64 {
        0.999
    }
    pub(crate) fn sigmoid_start() -> f64 {
        -3.0
    }
    pub(crate) fn sigmoid_end() -> f64 {
        3.0
    }
    pub(crate) fn sigmoid_tau() -> f64 {
        1.0
    }
}

impl Default for BetaSchedule {
    /// The DDPM paper's linear schedule, β from 1e-4 to 0.02.
    fn default() -> Self {
        Self::linear()
    }
}

impl BetaSchedule {
    /// Ho et al.'s linear schedule with the paper's values, β from 1e-4 to 0.02.
    pub fn linear() -> Self {
        Self::Linear {
            beta_start: defaults::beta_start(),
            beta_end: defaults::beta_end(),
        }
    }

    /// Nichol & Dhariwal's cosine schedule with the paper's values, s = 0.008, β ≤ 0.999.
    pub fn cosine() -> Self {
        Self::Cosine {
            s: defaults::cosine_s(),
            max_beta: defaults::max_beta(),
        }
    }

    /// The sigmoid schedule with start −3, end 3, τ = 1, β ≤ 0.999.
    pub fn sigmoid() -> Self {
        Self::Sigmoid {
            start: defaults::sigmoid_start(),
            end: defaults::sigmoid_end(),
            tau: defaults::sigmoid_tau(),
            max_beta: defaults::max_beta(),
        }
    }

    /// A short lowercase name: `linear`, `scaled_linear`, `cosine` or `sigmoid`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Linear { .. } => "linear",
            Self::ScaledLinear { .. } => "scaled_linear",
            Self::Cosine { .. } => "cosine",
            Self::Sigmoid { .. } => "sigmoid",
        }
    }

    /// The variances β_1..β_T (entry `i` is step t = i + 1), in f64.
    ///
    /// Errors if T = 0 or a parameter is out of range (see [`ScheduleError`]).
    pub fn betas(&self, timesteps: usize) -> Result<Vec<f64>, ScheduleError> {
        if timesteps == 0 {
            return Err(ScheduleError::ZeroTimesteps);
        }
        match *self {
            Self::Linear {
                beta_start,
                beta_end,
            } => {
                check_linear_bounds(beta_start, beta_end)?;
                Ok(linspace(beta_start, beta_end, timesteps))
            }
            Self::ScaledLinear {
                beta_start,
                beta_end,
            } => {
                check_linear_bounds(beta_start, beta_end)?;
                Ok(linspace(beta_start.sqrt(), beta_end.sqrt(), timesteps)
                    .into_iter()
                    .map(|b| b * b)
                    .collect())
            }
            Self::Cosine { s, max_beta } => {
                // Written positively so that NaN fails too.
                let positive = s.is_finite() && s > 0.0;
                if !positive {
                    return Err(ScheduleError::NonPositiveOffset(s));
                }
                check_open_unit("max_beta", max_beta)?;
                let f = |t: f64| {
                    let angle =
                        ((t / timesteps as f64 + s) / (1.0 + s)) * std::f64::consts::FRAC_PI_2;
                    angle.cos().powi(2)
                };
                Ok(betas_from_alpha_bar_fn(timesteps, max_beta, |t| {
                    f(t) / f(0.0)
                }))
            }
            Self::Sigmoid {
                start,
                end,
                tau,
                max_beta,
            } => {
                let ordered = start.is_finite() && end.is_finite() && start < end;
                if !ordered {
                    return Err(ScheduleError::InvalidSigmoid(format!(
                        "start = {start} must be finite and less than end = {end}"
                    )));
                }
                let positive = tau.is_finite() && tau > 0.0;
                if !positive {
                    return Err(ScheduleError::InvalidSigmoid(format!(
                        "temperature tau = {tau} must be positive"
                    )));
                }
                check_open_unit("max_beta", max_beta)?;
                let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
                let (v_start, v_end) = (sigmoid(start / tau), sigmoid(end / tau));
                let g = |t: f64| {
                    let tau_t = t / timesteps as f64;
                    (v_end - sigmoid((tau_t * (end - start) + start) / tau)) / (v_end - v_start)
                };
                Ok(betas_from_alpha_bar_fn(timesteps, max_beta, |t| {
                    g(t) / g(0.0)
                }))
            }
        }
    }
}

/// Checks 0 < x < 1, naming the parameter in the error.
pub(crate) fn check_open_unit(name: &str, value: f64) -> Result<(), ScheduleError> {
    if value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(ScheduleError::BetaOutOfRange {
            name: name.to_string(),
            value,
        })
    }
}

fn check_linear_bounds(beta_start: f64, beta_end: f64) -> Result<(), ScheduleError> {
    check_open_unit("beta_start", beta_start)?;
    check_open_unit("beta_end", beta_end)?;
    if beta_start > beta_end {
        return Err(ScheduleError::DecreasingBetas {
            beta_start,
            beta_end,
        });
    }
    Ok(())
}

/// `n` evenly spaced values from `a` to `b` inclusive (numpy's `linspace`; `[a]` for n = 1).
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    (0..n)
        .map(|i| if i == n - 1 { b } else { a + step * i as f64 })
        .collect()
}

/// β_t = min(1 − ᾱ(t)/ᾱ(t−1), max_beta) for t = 1..T, from a continuous ᾱ(t) with ᾱ(0) = 1
/// (Improved DDPM's `betas_for_alpha_bar`).
fn betas_from_alpha_bar_fn(
    timesteps: usize,
    max_beta: f64,
    alpha_bar: impl Fn(f64) -> f64,
) -> Vec<f64> {
    (1..=timesteps)
        .map(|t| {
            let beta = 1.0 - alpha_bar(t as f64) / alpha_bar((t - 1) as f64);
            beta.min(max_beta)
        })
        .collect()
}
