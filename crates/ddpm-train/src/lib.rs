//! Training machinery for diffusion models on [candle](https://github.com/huggingface/candle),
//! owned by the project so that every piece of state can be saved and restored:
//!
//! - [`AdamW`]: PyTorch's AdamW update, with readable and restorable moments;
//! - [`clip_grad_norm`]: gradient clipping by global norm;
//! - [`WarmupSchedule`]: linear learning-rate warm-up;
//! - [`Precision`]: f32 or bf16 mixed-precision steps on f32 master weights;
//! - [`Ema`]: the exponential moving average of the weights that samples are drawn from;
//! - [`Checkpoint`]: model, EMA, optimizer, step, data position and RNG state in one
//!   safetensors file, written atomically;
//! - [`Trainer`]: the loop that ties them to a U-Net, a diffusion process and a batch
//!   loader, with metrics, checkpoints and exact resume.
#![warn(missing_docs)]

mod adamw;
mod checkpoint;
mod ema;
mod error;
mod fused_step;
mod grad_clip;
mod precision;
mod seeded_init;
mod trainer;
mod warmup;

pub use adamw::{AdamW, AdamWConfig, StepForm};
pub use checkpoint::{
    checkpoint_name, list_checkpoints, prune_checkpoints, Checkpoint, TrainingProgress,
};
pub use ema::Ema;
pub use error::{Result, TrainError};
pub use grad_clip::clip_grad_norm;
pub use precision::{mixed_precision_forward, Precision};
pub use seeded_init::{named_vars, seeded_init};
pub use trainer::{HookError, StepHook, StepReport, Trainer, TrainerConfig, METRICS_HEADER};
pub use warmup::WarmupSchedule;
