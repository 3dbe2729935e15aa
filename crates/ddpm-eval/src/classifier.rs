//! The domain classifier: a small CNN for 28×28 grayscale images whose 128-dimensional
//! penultimate layer is the feature space of FID, KID, precision and recall.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder, VarMap};
use ddpm_unet::Conv2d;

use crate::{EvalError, Result};

/// Width of the feature layer.
pub const CLASSIFIER_FEATURES: usize = 128;

/// Outputs of the shipped Fashion-MNIST classifier: the ten classes, then "not a garment"
/// (index 10), learned from synthetic outliers ([`crate::synthetic_outliers`]).
pub const SHIPPED_CLASSIFIER_OUTPUTS: usize = 11;

/// conv 3×3 1→32, conv 3×3/2 32→64 (14×14), conv 3×3 64→64, conv 3×3/2 64→32 (7×7), each
/// followed by ReLU; flatten (1568) → linear 128 → ReLU (the features) → linear to the
/// outputs. 276,459 parameters for 11 outputs (the ten Fashion-MNIST classes and "not a
/// garment").
#[derive(Debug, Clone)]
pub struct Classifier {
    convs: Vec<Conv2d>,
    features: Linear,
    head: Linear,
}

impl Classifier {
    /// Builds the network under `vb` (`conv{1..4}`, `features`, `head`).
    pub fn new(vb: VarBuilder, classes: usize) -> Result<Self> {
        let spec = [(1, 32, 1), (32, 64, 2), (64, 64, 1), (64, 32, 2)];
        let convs = spec
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out, stride))| {
                Conv2d::new(c_in, c_out, 3, stride, 1, vb.pp(format!("conv{}", i + 1)))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            convs,
            features: candle_nn::linear(32 * 7 * 7, CLASSIFIER_FEATURES, vb.pp("features"))?,
            head: candle_nn::linear(CLASSIFIER_FEATURES, classes, vb.pp("head"))?,
        })
    }

    /// A fresh network and its variables.
    pub fn init(classes: usize, device: &Device) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let model = Self::new(
            VarBuilder::from_varmap(&varmap, DType::F32, device),
            classes,
        )?;
        Ok((model, varmap))
    }

    /// Loads weights written by [`save`](Self::save).
    pub fn load(path: &Path, classes: usize, device: &Device) -> Result<Self> {
        let fail = |reason: String| EvalError::Weights {
            path: path.to_path_buf(),
            reason,
        };
        let tensors =
            candle_core::safetensors::load(path, device).map_err(|e| fail(e.to_string()))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(vb, classes).map_err(|e| fail(format!("does not fit the classifier: {e}")))
    }

    /// Writes the variables of `varmap` as safetensors, through a temporary file.
    pub fn save(varmap: &VarMap, path: &Path) -> Result<()> {
        let fail = |reason: String| EvalError::Weights {
            path: path.to_path_buf(),
            reason,
        };
        let tensors: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .map_err(|_| fail("variable map lock poisoned".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&tensors, &tmp).map_err(|e| fail(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))
    }

    /// The 128 penultimate features of images (N, 1, 28, 28) in [−1, 1].
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        let mut h = images.clone();
        for conv in &self.convs {
            h = conv.forward(&h)?.relu()?;
        }
        let h = h.flatten_from(1)?;
        Ok(self.features.forward(&h)?.relu()?)
    }

    /// Class logits of images (N, 1, 28, 28) in [−1, 1].
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(&self.features(images)?)?)
    }

    /// Predicted class and its softmax probability per image.
    pub fn predict(&self, images: &Tensor) -> Result<(Vec<u32>, Vec<f32>)> {
        let probs = candle_nn::ops::softmax(&self.logits(images)?, D::Minus1)?;
        let classes = probs.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let confidence = probs.max(D::Minus1)?.to_vec1::<f32>()?;
        Ok((classes, confidence))
    }
}
