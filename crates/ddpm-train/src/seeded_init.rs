//! Reproducible initialisation.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use ddpm_diffusion::NoiseRng;

use crate::{Result, TrainError};

/// Re-draws every variable from the law candle-nn's constructors use, but from a seeded
/// generator, in name order, so that the same seed gives the same initial network:
/// - `…weight` of rank ≥ 2 (linear and convolution kernels): Kaiming normal,
///   N(0, 2/fan_in) with fan_in the product of all but the first dimension;
/// - `class_embedding.weight`: N(0, 1);
/// - `…bias` next to such a weight: U(−1/√fan_in, 1/√fan_in);
/// - GroupNorm scales and shifts (names containing `norm`): kept at 1 and 0.
pub fn seeded_init(vars: &mut [(String, Var)], seed: u64) -> Result<()> {
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let shapes: HashMap<String, Vec<usize>> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    let fan_in = |weight: &str| -> Option<usize> {
        let dims = shapes.get(weight)?;
        (dims.len() >= 2).then(|| dims[1..].iter().product())
    };
    let mut rng = NoiseRng::new(seed);
    for (name, var) in vars.iter() {
        let layer_norm = name.split('.').any(|part| part.contains("norm"));
        if layer_norm {
            continue;
        }
        let value = if let Some(prefix) = name.strip_suffix(".bias") {
            let Some(fan) = fan_in(&format!("{prefix}.weight")) else {
                continue;
            };
            let bound = 1.0 / (fan as f64).sqrt();
            let draws: Vec<f32> = (0..var.elem_count())
                .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                .collect();
            Tensor::from_vec(draws, var.shape(), var.device())?
        } else if name.ends_with(".weight") && var.rank() >= 2 {
            let std = if name.starts_with("class_embedding") {
                1.0
            } else {
                (2.0 / fan_in(name).unwrap_or(1) as f64).sqrt()
            };
            (rng.randn(var.shape(), var.device())? * std)?
        } else {
            continue;
        };
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The variables of `varmap` with their names, sorted by name.
pub fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let mut named: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::InvalidOption {
            name: "model",
            reason: "variable map lock poisoned".into(),
        })?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named)
}
