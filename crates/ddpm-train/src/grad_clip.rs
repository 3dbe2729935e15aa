//! Clipping the gradient by its global norm.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

use crate::fused_step;
use crate::Result;

/// Scales all gradients by min(1, max_norm/(‖g‖ + 1e-6)), where ‖g‖ is the 2-norm of all
/// of `vars`' gradients together (PyTorch's `clip_grad_norm_`). Returns ‖g‖ before clipping.
///
/// The squared norms are summed in f64: on the CPU in one pass over each f32/f64 gradient
/// (in parallel), elsewhere on the gradients' device and read back once (one read per
/// variable would wait for the device 320 times a step for the fashion-mnist U-Net).
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let present: Vec<&Tensor> = vars
        .iter()
        .filter_map(|var| grads.get(var.as_tensor()))
        .collect();
    // Each gradient's Σ g² where one pass computes it, in the variables' order.
    let direct: Vec<Option<f64>> = present
        .par_iter()
        .map(|g| fused_step::squared_norm(g))
        .collect();
    let mut total: f64 = direct.iter().flatten().sum();
    let squares = present
        .iter()
        .zip(&direct)
        .filter(|(_, direct)| direct.is_none())
        .map(|(g, _)| g.sqr()?.sum_all()?.to_dtype(DType::F64))
        .collect::<candle_core::Result<Vec<Tensor>>>()?;
    if !squares.is_empty() {
        total += Tensor::stack(&squares, 0)?.sum_all()?.to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for var in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                // Detached, as AdamW's moments (see there): the variables' gradients can be
                // attached to the forward graph.
                let scaled = match fused_step::scaled(g, coef) {
                    Some(scaled) => scaled?,
                    None => (g.detach() * coef)?,
                };
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}
