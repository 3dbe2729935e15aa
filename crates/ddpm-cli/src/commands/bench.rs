//! `ddpm bench unet`: how long the U-Net takes, forward and forward + backward.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use ddpm_unet::{parameter_count, UNet, UNetConfig};

/// `ddpm bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchCommand {
    #[command(subcommand)]
    pub target: BenchTarget,
}

/// What to measure.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchTarget {
    /// The U-Net alone: forward, and forward + backward, per batch.
    Unet(UnetBench),
}

/// Options of `ddpm bench unet`.
#[derive(Debug, Clone, Args)]
pub struct UnetBench {
    /// Model preset (`fashion-mnist`, `cifar10-ddpm`).
    #[arg(long, default_value = "fashion-mnist")]
    pub config: String,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Timed repetitions (after one untimed warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Write the numbers as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

impl BenchCommand {
    pub fn run(&self) -> Result<()> {
        match &self.target {
            BenchTarget::Unet(b) => b.run(),
        }
    }
}

/// Median of timings in milliseconds.
fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

impl UnetBench {
    fn run(&self) -> Result<()> {
        anyhow::ensure!(
            self.batch > 0 && self.reps > 0,
            "--batch and --reps must be at least 1"
        );
        let config = UNetConfig::preset(&self.config)?;
        let device = Device::Cpu;
        let (unet, varmap) = UNet::init(&config, DType::F32, &device)?;
        let side = config.sample_size.unwrap_or(32);
        let x = Tensor::randn(
            0f32,
            1.0,
            (self.batch, config.in_channels, side, side),
            &device,
        )?;
        let t = Tensor::arange(0u32, self.batch as u32, &device)?;
        let forward = || -> Result<f64> {
            let start = Instant::now();
            let out = unet.forward(&x, &t, None, false)?;
            out.sum_all()?.to_scalar::<f32>()?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        };
        let forward_backward = || -> Result<f64> {
            let start = Instant::now();
            let out = unet.forward(&x, &t, None, true)?;
            let grads = out.sqr()?.mean_all()?.backward()?;
            anyhow::ensure!(
                !grads.get_ids().collect::<Vec<_>>().is_empty(),
                "no gradients"
            );
            Ok(start.elapsed().as_secs_f64() * 1e3)
        };
        forward()?;
        forward_backward()?;
        let fwd = median_ms((0..self.reps).map(|_| forward()).collect::<Result<_>>()?);
        let fwd_bwd = median_ms(
            (0..self.reps)
                .map(|_| forward_backward())
                .collect::<Result<_>>()?,
        );
        let threads = candle_core::utils::get_num_threads();
        println!(
            "U-Net {} ({} parameters), batch {} of {}×{}, CPU, {threads} threads, median of {}:",
            self.config,
            parameter_count(&varmap),
            self.batch,
            side,
            side,
            self.reps
        );
        println!(
            "  forward             {fwd:9.1} ms/batch  {:8.1} images/s",
            self.batch as f64 / fwd * 1e3
        );
        println!(
            "  forward + backward  {fwd_bwd:9.1} ms/batch  {:8.1} images/s",
            self.batch as f64 / fwd_bwd * 1e3
        );
        if let Some(path) = &self.json {
            let report = serde_json::json!({
                "config": self.config, "parameters": parameter_count(&varmap), "batch": self.batch,
                "threads": threads, "reps": self.reps, "forward_ms": fwd, "forward_backward_ms": fwd_bwd,
            });
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}
