//! AdamW (Loshchilov & Hutter 2019) with state the checkpoint can hold.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::{Result, TrainError};

/// AdamW's hyper-parameters; the learning rate is given per step (see [`crate::WarmupSchedule`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁, the first moment's decay.
    pub beta1: f64,
    /// β₂, the second moment's decay.
    pub beta2: f64,
    /// ε, added to √v̂.
    pub eps: f64,
    /// λ, the decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults but without weight decay (the DDPM paper trains with Adam).
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamWConfig {
    /// Errors name the hyper-parameter out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: String| Err(TrainError::InvalidOption { name, reason });
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1", format!("{} must be in [0, 1)", self.beta1));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", format!("{} must be in [0, 1)", self.beta2));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", format!("{} must be positive", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("{} must be non-negative", self.weight_decay),
            );
        }
        Ok(())
    }
}

/// One parameter with its moments.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named variables, in the form PyTorch's `torch.optim.AdamW` computes it: at
/// step k with gradient g and learning rate η,
/// θ ← θ·(1 − η·λ); m ← β₁·m + (1 − β₁)·g; v ← β₂·v + (1 − β₂)·g²;
/// θ ← θ − η·(m/(1 − β₁ᵏ))/(√(v/(1 − β₂ᵏ)) + ε).
///
/// Unlike candle's `AdamW`, the moments and the step count are readable and restorable
/// ([`AdamW::state`], [`AdamW::load_state`]), so a resumed run continues exactly.
pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
    steps: u64,
}

impl AdamW {
    /// An optimizer over `vars` (name → variable), visited in name order.
    pub fn new(vars: HashMap<String, Var>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let mut named: Vec<(String, Var)> = vars.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = named
            .into_iter()
            .map(|(name, var)| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot { name, var, m, v })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            config,
            steps: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let k = self.steps as i32;
        let (c1, c2) = (1.0 - beta1.powi(k), 1.0 - beta2.powi(k));
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // Detached: candle's backward detaches the gradients of intermediate tensors but
            // not those of variables, which stay attached to the graph that computed them
            // (with candle's own ops, e.g. ∂L/∂γ = Σ dy·x̂ holds x̂ and all before it). A
            // moment computed from one would hold that step's whole forward pass, and the
            // next step's moment this one: every step's activations, which ran f32 training
            // on a GPU out of memory in 7 to 28 steps.
            let g = g.detach().to_dtype(slot.m.dtype())?;
            slot.m = ((&slot.m * beta1)? + (&g * (1.0 - beta1))?)?.detach();
            slot.v = ((&slot.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?.detach();
            let m_hat = (&slot.m / c1)?;
            let v_hat = (&slot.v / c2)?;
            let decayed = (slot.var.as_tensor() * (1.0 - lr * weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
            slot.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as tensors named `m.<var>` and `v.<var>`.
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("m.{}", s.name), s.m.clone()),
                    (format!("v.{}", s.name), s.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores moments written by [`state`](Self::state) and the step count.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for slot in &mut self.slots {
            for (prefix, target) in [("m", &mut slot.m), ("v", &mut slot.v)] {
                let key = format!("{prefix}.{}", slot.name);
                let value = state.get(&key).ok_or_else(|| TrainError::InvalidOption {
                    name: "optimizer state",
                    reason: format!("missing {key}"),
                })?;
                if value.shape() != target.shape() {
                    return Err(TrainError::InvalidOption {
                        name: "optimizer state",
                        reason: format!(
                            "{key} has shape {:?}, expected {:?}",
                            value.dims(),
                            target.dims()
                        ),
                    });
                }
                *target = value.to_dtype(target.dtype())?.to_device(target.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}
