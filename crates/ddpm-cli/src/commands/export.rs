//! `ddpm export`: writes the EMA weights of a training checkpoint as a diffusers
//! `DDPMPipeline` directory, the format a finished run exports and `ddpm sample` and
//! diffusers load.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use ddpm_train::Checkpoint;

use crate::trained_model::{checkpoint_config, export_pipeline};

/// `ddpm export`.
#[derive(Debug, Clone, Args)]
pub struct ExportCommand {
    /// A checkpoint of `ddpm train` (`runs/…/step-….safetensors`).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// The pipeline directory to write (replaced if it exists): `unet/` (config.json and
    /// diffusion_pytorch_model.safetensors), `scheduler/`, `model_index.json` and the run's
    /// config as `ddpm.toml`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl ExportCommand {
    pub fn run(&self) -> Result<()> {
        let device = Device::Cpu;
        let checkpoint = Checkpoint::load(&self.checkpoint, &device)?;
        let config = checkpoint_config(&self.checkpoint, &checkpoint)?;
        export_pipeline(&self.out, &config, checkpoint.ema, &device)
            .with_context(|| format!("exporting to {}", self.out.display()))?;
        eprintln!(
            "EMA weights of {} (step {}) -> {}",
            self.checkpoint.display(),
            checkpoint.progress.step,
            self.out.display()
        );
        Ok(())
    }
}
