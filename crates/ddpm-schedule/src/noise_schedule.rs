//! The numbers of a schedule: β, α, ᾱ and everything derived from them.

use crate::{beta_schedule::check_open_unit, BetaSchedule, ScheduleError};

/// All per-step coefficients of a T-step diffusion, computed once in f64.
///
/// # Indexing convention
/// Timesteps follow the paper: **t = 1..=T**, with t = 0 the clean data (ᾱ_0 = 1).
/// Every per-step accessor (`beta(t)`, `alpha_bar(t)`, …) takes that 1-based t and
/// panics outside 1..=T, like slice indexing. The slice accessors (`betas()`,
/// `alpha_bars()`, …) hold step t at index t − 1. Networks trained by diffusers or the
/// DDPM release are fed the 0-based index t − 1; that translation belongs to the caller
/// that talks to the network, not to this crate.
///
/// # Example
/// ```
/// use ddpm_schedule::{BetaSchedule, NoiseSchedule};
/// let schedule = NoiseSchedule::new(BetaSchedule::linear(), 1000)?;
/// assert_eq!(schedule.beta(1), 1e-4);
/// assert!((schedule.alpha_bar(1000) - 4.036e-5).abs() < 1e-8);
/// # Ok::<(), ddpm_schedule::ScheduleError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas: Vec<f64>,
    alpha_bars: Vec<f64>,
    alpha_bars_prev: Vec<f64>,
    sqrt_alpha_bars: Vec<f64>,
    sqrt_one_minus_alpha_bars: Vec<f64>,
    sqrt_recip_alphas: Vec<f64>,
    sqrt_recip_alpha_bars: Vec<f64>,
    sqrt_recip_m1_alpha_bars: Vec<f64>,
    posterior_variances: Vec<f64>,
    posterior_log_variances_clipped: Vec<f64>,
    posterior_mean_coefs1: Vec<f64>,
    posterior_mean_coefs2: Vec<f64>,
    snrs: Vec<f64>,
}

/// Generates, for each coefficient, a per-step accessor taking the paper's t and a slice
/// accessor, both documented with the coefficient's equation.
macro_rules! coefficients {
    ($($field:ident => $at:ident, $all:ident, $doc:literal;)*) => {
        impl NoiseSchedule {
            $(
                #[doc = $doc]
                ///
                /// `t` is the paper's 1-based step; panics unless 1 ≤ t ≤ T.
                pub fn $at(&self, t: usize) -> f64 {
                    self.$field[self.index(t)]
                }

                #[doc = $doc]
                ///
                /// For all steps: index `i` holds step t = i + 1.
                pub fn $all(&self) -> &[f64] {
                    &self.$field
                }
            )*
        }
    };
}

coefficients! {
    betas => beta, betas, "β_t, the variance of the noise added at step t.";
    alphas => alpha, alphas, "α_t = 1 − β_t.";
    alpha_bars => alpha_bar, alpha_bars, "ᾱ_t = Π_{s=1..t} α_s: x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε.";
    alpha_bars_prev => alpha_bar_prev, alpha_bars_prev, "ᾱ_{t−1}, with ᾱ_0 = 1.";
    sqrt_alpha_bars => sqrt_alpha_bar, sqrt_alpha_bars, "√ᾱ_t, the signal coefficient of q(x_t | x_0).";
    sqrt_one_minus_alpha_bars => sqrt_one_minus_alpha_bar, sqrt_one_minus_alpha_bars, "√(1 − ᾱ_t), the noise coefficient of q(x_t | x_0).";
    sqrt_recip_alphas => sqrt_recip_alpha, sqrt_recip_alphas, "1/√α_t, the outer factor of the reverse-step mean.";
    sqrt_recip_alpha_bars => sqrt_recip_alpha_bar, sqrt_recip_alpha_bars, "1/√ᾱ_t: x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1)·ε.";
    sqrt_recip_m1_alpha_bars => sqrt_recip_m1_alpha_bar, sqrt_recip_m1_alpha_bars, "√(1/ᾱ_t − 1): x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1)·ε.";
    posterior_variances => posterior_variance, posterior_variances, "β̃_t = β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t), the variance of q(x_{t−1} | x_t, x_0); β̃_1 = 0.";
    posterior_log_variances_clipped => posterior_log_variance_clipped, posterior_log_variances_clipped, "ln β̃_t, with β̃_1 = 0 replaced by β̃_2 so the log is finite (as in the DDPM release); ln β_1 when T = 1.";
    posterior_mean_coefs1 => posterior_mean_coef1, posterior_mean_coefs1, "β_t·√ᾱ_{t−1}/(1 − ᾱ_t): the weight of x_0 in μ̃_t(x_t, x_0).";
    posterior_mean_coefs2 => posterior_mean_coef2, posterior_mean_coefs2, "(1 − ᾱ_{t−1})·√α_t/(1 − ᾱ_t): the weight of x_t in μ̃_t(x_t, x_0).";
    snrs => snr, snrs, "SNR(t) = ᾱ_t/(1 − ᾱ_t), the signal-to-noise ratio of x_t.";
}

impl NoiseSchedule {
    /// The schedule of `kind` over `timesteps` steps.
    ///
    /// Errors on T = 0 and on parameters out of range.
    pub fn new(kind: BetaSchedule, timesteps: usize) -> Result<Self, ScheduleError> {
        Self::from_betas(kind.betas(timesteps)?)
    }

    /// A schedule from explicit variances β_1..β_T (index `i` is step t = i + 1),
    /// with ᾱ_t = Π_{s≤t}(1 − β_s).
    ///
    /// Errors if the list is empty or some β is not in (0, 1).
    pub fn from_betas(betas: Vec<f64>) -> Result<Self, ScheduleError> {
        if betas.is_empty() {
            return Err(ScheduleError::ZeroTimesteps);
        }
        for (i, &beta) in betas.iter().enumerate() {
            check_open_unit(&format!("beta[t={}]", i + 1), beta)?;
        }
        let alphas: Vec<f64> = betas.iter().map(|beta| 1.0 - beta).collect();
        let alpha_bars = alphas
            .iter()
            .scan(1.0, |prod, alpha| {
                *prod *= alpha;
                Some(*prod)
            })
            .collect();
        Ok(Self::from_parts(betas, alphas, alpha_bars))
    }

    /// Builds every coefficient from β, α and ᾱ, which the caller guarantees consistent
    /// (α_t = 1 − β_t, ᾱ_t = ᾱ_{t−1}·α_t) and in (0, 1). α is passed rather than derived
    /// because 1 − β loses relative precision when β is within rounding of 1.
    pub(crate) fn from_parts(betas: Vec<f64>, alphas: Vec<f64>, alpha_bars: Vec<f64>) -> Self {
        let timesteps = betas.len();
        let map = |f: &dyn Fn(usize) -> f64| (0..timesteps).map(f).collect::<Vec<f64>>();

        let alpha_bars_prev = map(&|i| if i == 0 { 1.0 } else { alpha_bars[i - 1] });
        let posterior_variances =
            map(&|i| betas[i] * (1.0 - alpha_bars_prev[i]) / (1.0 - alpha_bars[i]));
        let posterior_log_variances_clipped = map(&|i| {
            if i == 0 {
                posterior_variances.get(1).copied().unwrap_or(betas[0]).ln()
            } else {
                posterior_variances[i].ln()
            }
        });
        Self {
            sqrt_alpha_bars: map(&|i| alpha_bars[i].sqrt()),
            sqrt_one_minus_alpha_bars: map(&|i| (1.0 - alpha_bars[i]).sqrt()),
            sqrt_recip_alphas: map(&|i| 1.0 / alphas[i].sqrt()),
            sqrt_recip_alpha_bars: map(&|i| 1.0 / alpha_bars[i].sqrt()),
            sqrt_recip_m1_alpha_bars: map(&|i| (1.0 / alpha_bars[i] - 1.0).sqrt()),
            posterior_mean_coefs1: map(&|i| {
                betas[i] * alpha_bars_prev[i].sqrt() / (1.0 - alpha_bars[i])
            }),
            posterior_mean_coefs2: map(&|i| {
                (1.0 - alpha_bars_prev[i]) * alphas[i].sqrt() / (1.0 - alpha_bars[i])
            }),
            snrs: map(&|i| alpha_bars[i] / (1.0 - alpha_bars[i])),
            posterior_variances,
            posterior_log_variances_clipped,
            alpha_bars_prev,
            alphas,
            alpha_bars,
            betas,
        }
    }

    /// T, the number of diffusion steps.
    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// The index into the slices for the paper's step t.
    fn index(&self, t: usize) -> usize {
        let timesteps = self.num_timesteps();
        assert!(
            (1..=timesteps).contains(&t),
            "timestep t = {t} is outside 1..={timesteps} (the paper's 1-based convention)"
        );
        t - 1
    }
}
