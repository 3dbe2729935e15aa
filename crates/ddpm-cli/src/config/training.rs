//! `[training]`: the optimisation.

use anyhow::{bail, Result};
use ddpm_train::{AdamWConfig, Precision, TrainerConfig};
use serde::{Deserialize, Serialize};

/// `[training]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Images per optimizer step.
    pub batch_size: usize,
    /// Optimizer steps in all (unless `epochs` is set).
    pub steps: Option<u64>,
    /// Passes over the data, instead of `steps` (the last partial batch is dropped).
    pub epochs: Option<u64>,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: u64,
    /// AdamW's β₁.
    pub adam_beta1: f64,
    /// AdamW's β₂.
    pub adam_beta2: f64,
    /// AdamW's ε.
    pub adam_eps: f64,
    /// AdamW's decoupled weight decay (0 is Adam).
    pub weight_decay: f64,
    /// Clip the gradient's global L2 norm to this; 0 turns clipping off.
    pub grad_clip: f64,
    /// Decay of the exponential moving average of the weights used for sampling.
    pub ema_decay: f64,
    /// Step from which the EMA averages (it copies the weights before).
    pub ema_start: u64,
    /// Warm the EMA decay up: d_t = min(ema_decay, (1 + t)/(10 + t)), as diffusers' EMAModel.
    pub ema_warmup: bool,
    /// Class-conditional models: probability of dropping a label to the null class
    /// (trains the unconditional branch of classifier-free guidance).
    pub class_dropout: f64,
    /// Seed of the initialisation, the data order and every random draw.
    pub seed: u64,
    /// Append a row to `metrics.csv` and redraw `loss.png` every this many steps.
    pub log_every: u64,
    /// Write a checkpoint every this many steps (and at the end, and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Checkpoints kept in the run directory (oldest deleted first).
    pub keep_checkpoints: usize,
    /// Write a grid of EMA samples every this many steps (0: only at the end).
    pub sample_every: u64,
    /// The arithmetic of the forward and backward: `"f32"`, or `"bf16"` (mixed precision on
    /// f32 master weights, for GPUs).
    pub precision: TrainingPrecision,
}

/// `training.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainingPrecision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 forward and backward, f32 weights, optimizer and loss.
    Bf16,
}

impl From<TrainingPrecision> for Precision {
    fn from(p: TrainingPrecision) -> Self {
        match p {
            TrainingPrecision::F32 => Precision::F32,
            TrainingPrecision::Bf16 => Precision::Bf16,
        }
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            steps: None,
            epochs: None,
            lr: 2e-4,
            warmup_steps: 500,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            ema_decay: 0.999,
            ema_start: 0,
            ema_warmup: true,
            class_dropout: 0.1,
            seed: 0,
            log_every: 50,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            sample_every: 1000,
            precision: TrainingPrecision::F32,
        }
    }
}

/// Steps when neither `steps` nor `epochs` is given.
pub const DEFAULT_STEPS: u64 = 10_000;

impl TrainingConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<()> {
        fn positive(name: &str, v: f64) -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!("training.{name} = {v}: expected a finite number > 0");
            }
            Ok(())
        }
        fn unit(name: &str, v: f64, closed: bool) -> Result<()> {
            let ok = v.is_finite() && v >= 0.0 && if closed { v <= 1.0 } else { v < 1.0 };
            if !ok {
                let range = if closed { "[0, 1]" } else { "[0, 1)" };
                bail!("training.{name} = {v}: expected a number in {range}");
            }
            Ok(())
        }
        if !(1..=65_536).contains(&self.batch_size) {
            bail!(
                "training.batch_size = {}: expected 1 to 65536",
                self.batch_size
            );
        }
        if self.steps.is_some() && self.epochs.is_some() {
            bail!("training.epochs: give either training.steps or training.epochs, not both");
        }
        if self.steps == Some(0) {
            bail!("training.steps = 0: expected at least 1");
        }
        if self.epochs == Some(0) {
            bail!("training.epochs = 0: expected at least 1");
        }
        positive("lr", self.lr)?;
        unit("adam_beta1", self.adam_beta1, false)?;
        unit("adam_beta2", self.adam_beta2, false)?;
        positive("adam_eps", self.adam_eps)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "training.weight_decay = {}: expected a number ≥ 0",
                self.weight_decay
            );
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            bail!(
                "training.grad_clip = {}: expected a number ≥ 0 (0 turns clipping off)",
                self.grad_clip
            );
        }
        unit("ema_decay", self.ema_decay, false)?;
        unit("class_dropout", self.class_dropout, true)?;
        if self.log_every == 0 {
            bail!("training.log_every = 0: expected at least 1");
        }
        if self.checkpoint_every == 0 {
            bail!("training.checkpoint_every = 0: expected at least 1");
        }
        if self.keep_checkpoints == 0 {
            bail!("training.keep_checkpoints = 0: expected at least 1");
        }
        Ok(())
    }

    /// Total optimizer steps given the loader's batches per epoch.
    pub fn total_steps(&self, batches_per_epoch: usize) -> u64 {
        match (self.steps, self.epochs) {
            (Some(steps), _) => steps,
            (None, Some(epochs)) => epochs * batches_per_epoch as u64,
            (None, None) => DEFAULT_STEPS,
        }
    }

    /// The trainer's hyper-parameters.
    pub fn trainer_config(&self, batches_per_epoch: usize) -> TrainerConfig {
        TrainerConfig {
            steps: self.total_steps(batches_per_epoch),
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            adamw: AdamWConfig {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_eps,
                weight_decay: self.weight_decay,
            },
            grad_clip: (self.grad_clip > 0.0).then_some(self.grad_clip),
            ema_decay: self.ema_decay,
            ema_start: self.ema_start,
            ema_warmup: self.ema_warmup,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            log_every: self.log_every,
            class_dropout: self.class_dropout,
            precision: self.precision.into(),
        }
    }
}
