//! Analytic ε-predictors and statistics shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use ddpm_schedule::NoiseSchedule;

/// ᾱ for each 0-based network timestep k (index k), computed here from the β's rather than
/// read from the crate: the running product of (1 − β).
pub fn alpha_bar_table(schedule: &NoiseSchedule) -> Vec<f64> {
    schedule
        .betas()
        .iter()
        .scan(1.0, |p, b| {
            *p *= 1.0 - b;
            Some(*p)
        })
        .collect()
}

/// Applies `f(x, ᾱ)` elementwise, with ᾱ taken per sample from the batch's 0-based timesteps.
pub fn per_element(
    table: &[f64],
    x: &Tensor,
    t: &Tensor,
    f: impl Fn(f64, f64) -> f64,
) -> candle_core::Result<Tensor> {
    let alpha_bars: Vec<f64> = t
        .to_vec1::<u32>()?
        .iter()
        .map(|&k| table[k as usize])
        .collect();
    let per_sample = x.elem_count() / x.dim(0)?;
    let values: Vec<f32> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .enumerate()
        .map(|(i, v)| f(v as f64, alpha_bars[i / per_sample]) as f32)
        .collect();
    Tensor::from_vec(values, x.shape(), x.device())
}

/// The optimal ε-predictor for data x_0 ~ N(μ, s²) per element:
/// ε*(x_t, t) = √(1−ᾱ)·(x_t − √ᾱ·μ)/(ᾱ·s² + 1 − ᾱ).
pub fn gaussian_oracle(
    schedule: &NoiseSchedule,
    mu: f64,
    s: f64,
) -> impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> {
    let table = alpha_bar_table(schedule);
    move |x, t| {
        per_element(&table, x, t, |x, ab| {
            (1.0 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s * s + 1.0 - ab)
        })
    }
}

/// A mixture of 1-D Gaussians with a shared standard deviation.
#[derive(Clone, Copy)]
pub struct Mixture {
    pub weights: [f64; 2],
    pub means: [f64; 2],
    pub std: f64,
}

impl Mixture {
    /// The optimal ε-predictor: ε* = (x_t − √ᾱ·E[x_0 | x_t])/√(1 − ᾱ), where
    /// E[x_0 | x_t] = Σ_k r_k(x_t)·(μ_k + √ᾱ·s²/v·(x_t − √ᾱ·μ_k)), v = ᾱ·s² + 1 − ᾱ, and the
    /// responsibilities r_k ∝ π_k·N(x_t; √ᾱ·μ_k, v).
    pub fn oracle<'a>(
        &'a self,
        schedule: &NoiseSchedule,
    ) -> impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + 'a {
        let table = alpha_bar_table(schedule);
        move |x, t| {
            per_element(&table, x, t, |x, ab| {
                let v = ab * self.std * self.std + 1.0 - ab;
                let log_r: Vec<f64> = (0..2)
                    .map(|k| {
                        self.weights[k].ln() - (x - ab.sqrt() * self.means[k]).powi(2) / (2.0 * v)
                    })
                    .collect();
                let max = log_r[0].max(log_r[1]);
                let r: Vec<f64> = log_r.iter().map(|l| (l - max).exp()).collect();
                let norm = r[0] + r[1];
                let x0: f64 = (0..2)
                    .map(|k| {
                        r[k] / norm
                            * (self.means[k]
                                + ab.sqrt() * self.std * self.std / v
                                    * (x - ab.sqrt() * self.means[k]))
                    })
                    .sum();
                (x - ab.sqrt() * x0) / (1.0 - ab).sqrt()
            })
        }
    }
}

/// Mean and (population) standard deviation.
pub fn mean_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

pub fn cpu() -> Device {
    Device::Cpu
}
