//! The training objective: L_simple and its weighted variants.

use candle_core::{DType, Tensor};

use crate::{Denoiser, DiffusionError, GaussianDiffusion, NoiseRng, Result};

/// One batch prepared for a training step: the draws, the network's inputs and the target.
#[derive(Debug, Clone)]
pub struct TrainingBatch {
    /// The paper's t ~ Uniform{1..T} per sample, u32 of shape (B,).
    pub t: Tensor,
    /// What the network is fed: t − 1, u32 of shape (B,).
    pub model_t: Tensor,
    /// ε ~ N(0, I), shaped like x_0.
    pub noise: Tensor,
    /// x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε.
    pub x_t: Tensor,
    /// What the network should output (ε, x_0 or v, by the objective).
    pub target: Tensor,
}

impl GaussianDiffusion {
    /// Draws t ~ Uniform{1..T} and ε ~ N(0, I) per sample from `rng` and builds x_t and
    /// the objective's target for the clean batch `x0` of shape (B, …).
    pub fn training_batch(&self, x0: &Tensor, rng: &mut NoiseRng) -> Result<TrainingBatch> {
        let batch = x0.dim(0)?;
        let drawn = rng.timesteps(batch, self.num_timesteps());
        let model_drawn: Vec<u32> = drawn.iter().map(|t| t - 1).collect();
        let t = Tensor::from_vec(drawn, batch, self.device())?;
        let model_t = Tensor::from_vec(model_drawn, batch, self.device())?;
        let noise = rng.randn(x0.shape(), self.device())?.to_dtype(x0.dtype())?;
        let x_t = self.q_sample(x0, &t, &noise)?;
        let target = self.target(x0, &t, &noise)?;
        Ok(TrainingBatch {
            t,
            model_t,
            noise,
            x_t,
            target,
        })
    }

    /// The loss of a network output on a prepared batch, a scalar:
    /// L = (1/B)·Σ_b w(t_b)·mean‖target_b − prediction_b‖², with w ≡ 1 for uniform
    /// weighting, so that ε-prediction gives the paper's L_simple = mean ‖ε − ε_θ(x_t, t)‖².
    ///
    /// Computed in f32 whatever the prediction's dtype, so half-precision models still
    /// accumulate the loss accurately.
    pub fn loss(&self, prediction: &Tensor, batch: &TrainingBatch) -> Result<Tensor> {
        if prediction.shape() != batch.target.shape() {
            return Err(DiffusionError::Shape(format!(
                "prediction {:?} and target {:?} differ",
                prediction.shape(),
                batch.target.shape()
            )));
        }
        let diff = (prediction.to_dtype(DType::F32)? - batch.target.to_dtype(DType::F32)?)?;
        let per_sample = diff.sqr()?.flatten_from(1)?.mean(1)?;
        let per_sample = match self.weighting() {
            crate::LossWeighting::Uniform => per_sample,
            _ => (per_sample * self.loss_weights(&batch.t, DType::F32)?)?,
        };
        Ok(per_sample.mean(0)?)
    }

    /// One training loss evaluation: draws a batch with [`training_batch`](Self::training_batch),
    /// runs `model` on (x_t, t − 1) and returns [`loss`](Self::loss).
    pub fn training_loss(
        &self,
        model: &impl Denoiser,
        x0: &Tensor,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        let batch = self.training_batch(x0, rng)?;
        let prediction = model.predict(&batch.x_t, &batch.model_t)?;
        self.loss(&prediction, &batch)
    }
}
