//! Classifier-free guidance (Ho & Salimans 2022).

use candle_core::{DType, Tensor};

use crate::{ClassConditionalDenoiser, Denoiser, DiffusionError, Result};

/// A class-conditional model guided towards fixed class labels:
/// ε̃(x_t, t) = (1 + w)·ε(x_t, t, c) − w·ε(x_t, t, ∅).
///
/// The conditional and unconditional predictions are made in one forward pass over the
/// batch concatenated with itself (labels c, then the null label ∅). w = 0 is plain
/// conditional sampling.
#[derive(Debug, Clone)]
pub struct ClassifierFreeGuidance<'a, M> {
    model: &'a M,
    labels: Tensor,
    null_labels: Tensor,
    weight: f64,
}

impl<'a, M: ClassConditionalDenoiser> ClassifierFreeGuidance<'a, M> {
    /// Guides `model` to `labels` (u32, shape (B,)) with weight `weight` ≥ 0; `null_label`
    /// is the label the model was trained with for "no class".
    pub fn new(model: &'a M, labels: &Tensor, null_label: u32, weight: f64) -> Result<Self> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(DiffusionError::InvalidOption {
                name: "guidance weight",
                reason: format!("w = {weight} must be finite and non-negative"),
            });
        }
        let labels = labels.to_dtype(DType::U32)?;
        let null_labels = Tensor::full(null_label, labels.dims1()?, labels.device())?;
        Ok(Self {
            model,
            labels,
            null_labels,
            weight,
        })
    }
}

impl<M: ClassConditionalDenoiser> Denoiser for ClassifierFreeGuidance<'_, M> {
    fn predict(&self, x_t: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        let batch = x_t.dim(0)?;
        let x = Tensor::cat(&[x_t, x_t], 0)?;
        let t = Tensor::cat(&[t, t], 0)?;
        let y = Tensor::cat(&[&self.labels, &self.null_labels], 0)?;
        let both = self.model.predict(&x, &t, &y)?;
        let cond = both.narrow(0, 0, batch)?;
        let uncond = both.narrow(0, batch, batch)?;
        cond.affine(1.0 + self.weight, 0.0)? - uncond.affine(self.weight, 0.0)?
    }
}
