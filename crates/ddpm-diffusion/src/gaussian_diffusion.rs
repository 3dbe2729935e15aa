//! The diffusion process on tensors: coefficient tables, the forward process q(x_t | x_0),
//! and the conversions between the objectives' targets.

use candle_core::{DType, Device, Tensor};
use ddpm_schedule::NoiseSchedule;

use crate::{DiffusionError, LossWeighting, Objective, Result};

/// Gaussian diffusion over a [`NoiseSchedule`] on one candle device.
///
/// The per-t coefficients the batched operations need are uploaded once, as tables of
/// length T + 1 indexed directly by the paper's t (entry 0 is t = 0, the clean data, with
/// ᾱ_0 = 1), so gathering them for a batch of timesteps is a single `index_select`.
///
/// Timesteps passed to this type's methods are the paper's 1-based t (u32 tensors of
/// shape (B,)); the network is fed t − 1 (see [`Denoiser`](crate::Denoiser)).
#[derive(Debug, Clone)]
pub struct GaussianDiffusion {
    schedule: NoiseSchedule,
    objective: Objective,
    weighting: LossWeighting,
    device: Device,
    /// √ᾱ_t for t = 0..=T.
    sqrt_alpha_bar: Tensor,
    /// √(1 − ᾱ_t) for t = 0..=T.
    sqrt_one_minus_alpha_bar: Tensor,
    /// The loss weight of t = 0..=T under `weighting` (entry 0 unused, set to 0).
    loss_weight: Tensor,
}

impl GaussianDiffusion {
    /// The process over `schedule`, training the network to predict `objective`'s target
    /// with the loss weighted by `weighting`, on `device`.
    pub fn new(
        schedule: NoiseSchedule,
        objective: Objective,
        weighting: LossWeighting,
        device: &Device,
    ) -> Result<Self> {
        if let LossWeighting::MinSnr { gamma } = weighting {
            if !(gamma.is_finite() && gamma > 0.0) {
                return Err(DiffusionError::InvalidOption {
                    name: "min_snr gamma",
                    reason: format!("γ = {gamma} must be positive"),
                });
            }
        }
        let table = |clean: f64, values: &[f64]| -> Result<Tensor> {
            let all: Vec<f32> = std::iter::once(clean)
                .chain(values.iter().copied())
                .map(|v| v as f32)
                .collect();
            Ok(Tensor::from_vec(all, values.len() + 1, device)?)
        };
        let weights: Vec<f64> = schedule
            .snrs()
            .iter()
            .map(|&snr| weighting.weight(objective, snr))
            .collect();
        Ok(Self {
            sqrt_alpha_bar: table(1.0, schedule.sqrt_alpha_bars())?,
            sqrt_one_minus_alpha_bar: table(0.0, schedule.sqrt_one_minus_alpha_bars())?,
            loss_weight: table(0.0, &weights)?,
            schedule,
            objective,
            weighting,
            device: device.clone(),
        })
    }

    /// The ε-prediction process of the paper: `Objective::Epsilon`, uniform loss weights.
    pub fn epsilon(schedule: NoiseSchedule, device: &Device) -> Result<Self> {
        Self::new(schedule, Objective::Epsilon, LossWeighting::Uniform, device)
    }

    /// The schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// What the network predicts.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// How the loss weights timesteps.
    pub fn weighting(&self) -> LossWeighting {
        self.weighting
    }

    /// The device the tables live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// T.
    pub fn num_timesteps(&self) -> usize {
        self.schedule.num_timesteps()
    }

    /// Gathers `table[t]` for each sample and shapes it (B, 1, …, 1) to broadcast against a
    /// tensor of rank `rank`, in `dtype`.
    pub(crate) fn gather(
        &self,
        table: &Tensor,
        t: &Tensor,
        rank: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        let batch = t.dims1()?;
        let mut shape = vec![1usize; rank.max(1)];
        shape[0] = batch;
        Ok(table.index_select(t, 0)?.reshape(shape)?.to_dtype(dtype)?)
    }

    /// Checks that every entry of `t` lies in `lowest..=T`.
    pub(crate) fn check_timesteps(&self, t: &Tensor, lowest: u32) -> Result<()> {
        let values = t.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        match values
            .iter()
            .find(|&&v| v < lowest || v as usize > self.num_timesteps())
        {
            Some(&value) => Err(DiffusionError::TimestepOutOfRange {
                value,
                timesteps: self.num_timesteps(),
            }),
            None => Ok(()),
        }
    }

    /// The forward process in closed form, q(x_t | x_0):
    /// x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, with one timestep per sample.
    ///
    /// `t` is a u32 tensor of shape (B,) of the paper's t in 0..=T (t = 0 returns x_0);
    /// `x0` and `noise` have shape (B, …).
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Result<Tensor> {
        if x0.shape() != noise.shape() {
            return Err(DiffusionError::Shape(format!(
                "x0 {:?} and noise {:?} differ",
                x0.shape(),
                noise.shape()
            )));
        }
        if t.dims1()? != x0.dim(0)? {
            return Err(DiffusionError::Shape(format!(
                "{} timesteps for a batch of {}",
                t.dims1()?,
                x0.dim(0)?
            )));
        }
        self.check_timesteps(t, 0)?;
        let (rank, dtype) = (x0.rank(), x0.dtype());
        let signal = self.gather(&self.sqrt_alpha_bar, t, rank, dtype)?;
        let noise_scale = self.gather(&self.sqrt_one_minus_alpha_bar, t, rank, dtype)?;
        Ok((x0.broadcast_mul(&signal)? + noise.broadcast_mul(&noise_scale)?)?)
    }

    /// The training target of the objective for (x_0, ε) at timesteps `t`:
    /// ε, x_0, or v = √ᾱ_t·ε − √(1 − ᾱ_t)·x_0.
    pub fn target(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Result<Tensor> {
        Ok(match self.objective {
            Objective::Epsilon => noise.clone(),
            Objective::X0 => x0.clone(),
            Objective::V => {
                let (rank, dtype) = (x0.rank(), x0.dtype());
                let a = self.gather(&self.sqrt_alpha_bar, t, rank, dtype)?;
                let b = self.gather(&self.sqrt_one_minus_alpha_bar, t, rank, dtype)?;
                (noise.broadcast_mul(&a)? - x0.broadcast_mul(&b)?)?
            }
        })
    }

    /// The per-sample loss weights of timesteps `t` under the weighting, shape (B,).
    pub(crate) fn loss_weights(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(self.loss_weight.index_select(t, 0)?.to_dtype(dtype)?)
    }
}

/// The network's output at one step, turned into the two quantities every sampler needs.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// ε̂, the predicted noise.
    pub eps: Tensor,
    /// x̂_0, the predicted clean data.
    pub x0: Tensor,
}

impl Prediction {
    /// Converts a model output at a step with cumulative product `alpha_bar` (the same
    /// for the whole batch) into (ε̂, x̂_0), optionally clipping x̂_0 to [−1, 1] and then
    /// re-deriving ε̂ from the clipped x̂_0 (as Improved DDPM does):
    /// - ε: x̂_0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ
    /// - x_0: ε̂ = (x_t − √ᾱ·x̂_0)/√(1−ᾱ)
    /// - v: x̂_0 = √ᾱ·x_t − √(1−ᾱ)·v̂, ε̂ = √(1−ᾱ)·x_t + √ᾱ·v̂
    pub fn from_model_output(
        objective: Objective,
        x_t: &Tensor,
        output: &Tensor,
        alpha_bar: f64,
        clip_x0: bool,
    ) -> Result<Self> {
        let (a, b) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
        let (eps, x0) = match objective {
            Objective::Epsilon => {
                let x0 = ((x_t - output.affine(b, 0.0)?)? / a)?;
                (output.clone(), x0)
            }
            Objective::X0 => {
                let eps = ((x_t - output.affine(a, 0.0)?)? / b)?;
                (eps, output.clone())
            }
            Objective::V => {
                let x0 = (x_t.affine(a, 0.0)? - output.affine(b, 0.0)?)?;
                let eps = (x_t.affine(b, 0.0)? + output.affine(a, 0.0)?)?;
                (eps, x0)
            }
        };
        if !clip_x0 {
            return Ok(Self { eps, x0 });
        }
        let x0 = x0.clamp(-1f32, 1f32)?;
        let eps = ((x_t - x0.affine(a, 0.0)?)? / b)?;
        Ok(Self { eps, x0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (ε̂, x̂_0) from each objective's output, against the definitions evaluated by hand at
    /// ᾱ = 0.64 (√ᾱ = 0.8, √(1−ᾱ) = 0.6), x_t = 0.5.
    #[test]
    fn objectives_convert_to_eps_and_x0() {
        let dev = Device::Cpu;
        let x_t = Tensor::new(&[0.5f32], &dev).unwrap();
        let out = Tensor::new(&[0.25f32], &dev).unwrap();
        let get = |t: &Tensor| t.to_vec1::<f32>().unwrap()[0];
        let p = Prediction::from_model_output(Objective::Epsilon, &x_t, &out, 0.64, false).unwrap();
        assert!((get(&p.eps) - 0.25).abs() < 1e-7);
        assert!((get(&p.x0) - (0.5 - 0.6 * 0.25) / 0.8).abs() < 1e-7);
        let p = Prediction::from_model_output(Objective::X0, &x_t, &out, 0.64, false).unwrap();
        assert!((get(&p.x0) - 0.25).abs() < 1e-7);
        assert!((get(&p.eps) - (0.5 - 0.8 * 0.25) / 0.6).abs() < 1e-7);
        let p = Prediction::from_model_output(Objective::V, &x_t, &out, 0.64, false).unwrap();
        assert!((get(&p.x0) - (0.8 * 0.5 - 0.6 * 0.25)).abs() < 1e-7);
        assert!((get(&p.eps) - (0.6 * 0.5 + 0.8 * 0.25)).abs() < 1e-7);
        // v defined from (ε, x_0) round-trips: v = √ᾱ·ε − √(1−ᾱ)·x_0.
        let v = 0.8 * get(&p.eps) - 0.6 * get(&p.x0);
        assert!((v - 0.25).abs() < 1e-6);
    }

    #[test]
    fn clipping_bounds_x0_and_rederives_eps() {
        let dev = Device::Cpu;
        let x_t = Tensor::new(&[0.5f32, 0.1], &dev).unwrap();
        let out = Tensor::new(&[3.0f32, -0.2], &dev).unwrap();
        let p = Prediction::from_model_output(Objective::X0, &x_t, &out, 0.64, true).unwrap();
        assert_eq!(p.x0.to_vec1::<f32>().unwrap(), vec![1.0, -0.2]);
        let eps = p.eps.to_vec1::<f32>().unwrap();
        assert!((eps[0] - (0.5 - 0.8) / 0.6).abs() < 1e-6, "{eps:?}");
        assert!((eps[1] - (0.1 + 0.8 * 0.2) / 0.6).abs() < 1e-6, "{eps:?}");
    }
}
