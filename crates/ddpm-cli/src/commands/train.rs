//! `ddpm train`: trains a model from a TOML config into a run directory, resumably.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use ddpm_data::{save_grid, BatchLoader, LoaderConfig};
use ddpm_diffusion::GaussianDiffusion;
use ddpm_train::{list_checkpoints, StepReport, Trainer};

use crate::config::{RunConfig, TrainingPrecision};
use crate::dataset::open_training_data;
use crate::device::open_device;
use crate::figures::save_loss_curve;
use crate::generation::{generate, Request};
use crate::progress;
use crate::trained_model::{export_pipeline, CONFIG_ENTRY};

/// `ddpm train`.
#[derive(Debug, Clone, Args)]
pub struct TrainCommand {
    /// The training config (TOML; see configs/ and the README for every key).
    #[arg(
        long,
        default_value = "configs/fashion-mnist.toml",
        conflicts_with = "resume"
    )]
    pub config: PathBuf,
    /// Change one config key, e.g. `--set training.lr=1e-4 --set sampling.steps=100`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run in this directory from its latest checkpoint (its config.toml is
    /// used; `--set training.steps=N` extends it).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Where new run directories are created.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// The exit code of a run stopped by Ctrl-C (after its checkpoint), as shells expect.
pub const INTERRUPTED: u8 = 130;

impl TrainCommand {
    /// Trains; returns whether the run was interrupted.
    pub fn run(&self) -> Result<bool> {
        let (config, run_dir, resume_from) = self.prepare()?;
        let device = open_device(&self.device)?;
        if config.training.precision == TrainingPrecision::Bf16 && device.is_cpu() {
            bail!(
                "training.precision = \"bf16\": needs a CUDA device (candle's CPU matmul has no bf16); use \"f32\" on the CPU"
            );
        }
        let unet_config = config.model.resolve()?;
        let dataset = open_training_data(&config.data)?;
        if let Some(null) = unet_config.null_class() {
            let classes = dataset.class_names().len();
            if classes > null as usize {
                bail!(
                    "model.num_class_embeds = {}: the data has {classes} classes, so it must be at least {} (one more for the null class of guidance)",
                    null + 1,
                    classes + 1
                );
            }
        }
        let loader = BatchLoader::new(
            Arc::clone(&dataset),
            LoaderConfig {
                batch_size: config.training.batch_size,
                shuffle: true,
                drop_last: true,
                seed: config.training.seed,
                horizontal_flip: config.data.horizontal_flip,
                pad: config.data.pad,
                prefetch: config.data.prefetch,
            },
        )
        .context("training.batch_size")?;
        let dims = loader.example_dims();
        let trainer_config = config.training.trainer_config(loader.batches_per_epoch());
        let total_steps = trainer_config.steps;
        let diffusion = GaussianDiffusion::new(
            config.diffusion.noise_schedule()?,
            config.diffusion.objective,
            config.diffusion.loss_weighting,
            &device,
        )?;
        if resume_from.is_none() {
            std::fs::create_dir_all(&run_dir)
                .with_context(|| format!("creating run directory {}", run_dir.display()))?;
            write_config(&run_dir.join("config.toml"), &config)?;
        }
        let config_text = config.to_toml()?;
        let extra = HashMap::from([(CONFIG_ENTRY.to_string(), config_text)]);
        let mut trainer = Trainer::new(
            &unet_config,
            diffusion,
            loader,
            trainer_config,
            &run_dir,
            extra,
        )?;
        if let Some(checkpoint) = &resume_from {
            trainer.resume_from(checkpoint)?;
        }
        tracing::info!(
            run = %run_dir.display(),
            parameters = trainer.weights().values().map(|t| t.elem_count()).sum::<usize>(),
            images = dataset.len(),
            steps = total_steps,
            "training"
        );

        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = Arc::clone(&stop);
            // A second Ctrl-C exits at once.
            let _ = ctrlc::set_handler(move || {
                if stop.swap(true, Ordering::SeqCst) {
                    std::process::exit(i32::from(INTERRUPTED));
                }
                eprintln!(
                    "\nstopping after this step (checkpoint first); Ctrl-C again to quit now"
                );
            });
        }

        let bar = progress::start(
            total_steps,
            "{bar:30} {pos}/{len} steps | loss {msg} | ETA {eta} ({elapsed})",
        );
        bar.set_position(trainer.progress().step);
        let started = Instant::now();
        let first_step = trainer.progress().step;
        let mut smoothed: Option<f64> = None;
        let sample_every = config.training.sample_every;
        let title = format!("{}: training loss", config.name);
        let mut hook =
            |trainer: &Trainer, report: &StepReport| -> Result<(), ddpm_train::HookError> {
                let loss = f64::from(report.loss);
                let s = smoothed.map_or(loss, |s| 0.98 * s + 0.02 * loss);
                smoothed = Some(s);
                bar.set_position(report.step);
                bar.set_message(format!("{s:.4} | {:.1} img/s", report.images_per_s));
                if report.step.is_multiple_of(trainer.config().log_every) {
                    save_loss_curve(&trainer.metrics_path(), &run_dir.join("loss.png"), &title)?;
                    tracing::debug!(
                        step = report.step,
                        loss = report.loss,
                        lr = report.lr,
                        grad_norm = report.grad_norm,
                        images_per_s = report.images_per_s,
                        "step"
                    );
                }
                if sample_every > 0
                    && report.step.is_multiple_of(sample_every)
                    && report.step < total_steps
                {
                    write_sample_grid(trainer, &config, dims, report.step)?;
                }
                Ok(())
            };
        let result = trainer.run(&stop, &mut hook);
        progress::finish(&bar);
        result?;

        let progress = trainer.progress();
        let trained = progress.step.saturating_sub(first_step);
        let seconds = started.elapsed().as_secs_f64();
        let metrics = trainer.metrics_path();
        if metrics.exists() {
            save_loss_curve(&metrics, &run_dir.join("loss.png"), &title)?;
        }
        if stop.load(Ordering::SeqCst) && progress.step < total_steps {
            eprintln!(
                "stopped at step {} of {total_steps}; continue with: cargo xtask train --resume {}",
                progress.step,
                run_dir.display()
            );
            return Ok(true);
        }
        let grid = write_sample_grid(&trainer, &config, dims, progress.step)?;
        let pipeline = run_dir.join("pipeline");
        export_pipeline(&pipeline, &config, trainer.ema_weights(), &device)?;
        eprintln!(
            "trained {trained} steps in {seconds:.0} s ({:.1} images/s); samples: {}; EMA model (diffusers format): {}",
            (trained as f64 * config.training.batch_size as f64) / seconds.max(1e-9),
            grid.display(),
            pipeline.display()
        );
        Ok(false)
    }

    /// The config, the run directory and the checkpoint to resume from.
    fn prepare(&self) -> Result<(RunConfig, PathBuf, Option<PathBuf>)> {
        if let Some(dir) = &self.resume {
            let config_path = dir.join("config.toml");
            if !config_path.is_file() {
                bail!(
                    "--resume {}: no config.toml: not a run directory",
                    dir.display()
                );
            }
            let config = RunConfig::load(&config_path, &self.overrides)?;
            let checkpoint = list_checkpoints(dir)?.pop().with_context(|| {
                format!("--resume {}: no checkpoint to resume from", dir.display())
            })?;
            if !self.overrides.is_empty() {
                write_config(&config_path, &config)?;
            }
            return Ok((config, dir.clone(), Some(checkpoint)));
        }
        let config = RunConfig::load(&self.config, &self.overrides)?;
        let run_dir = self.runs_dir.join(format!(
            "{}-{}",
            config.name,
            utc_timestamp(SystemTime::now())
        ));
        // Created once the data has loaded, so that a failed start leaves nothing behind.
        Ok((config, run_dir, None))
    }
}

fn write_config(path: &Path, config: &RunConfig) -> Result<()> {
    let tmp = path.with_extension("toml.tmp");
    let text = format!(
        "# The resolved configuration of this run, every key written out.\n{}",
        config.to_toml()?
    );
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Samples a grid from the EMA weights into `samples/step-XXXXXXXX.png`.
fn write_sample_grid(
    trainer: &Trainer,
    config: &RunConfig,
    dims: (usize, usize, usize),
    step: u64,
) -> Result<PathBuf> {
    let unet = trainer.ema_unet()?;
    let sampler = config.sampling.sampler(config.diffusion.timesteps);
    let n = config.sampling.count;
    let started = Instant::now();
    let samples = generate(
        &Request {
            unet: &unet,
            diffusion: trainer.diffusion(),
            sampler: &sampler,
            n,
            dims,
            class: None,
            guidance: 0.0,
            clip_x0: config.sampling.clip_x0,
            snapshots: 0,
            seed: config.sampling.seed,
        },
        &mut |_, _| {},
    )?;
    let dir = trainer.run_dir().join("samples");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("step-{step:08}.png"));
    let nrow = match unet.config().null_class() {
        Some(classes) => classes.max(1) as usize,
        None => (n as f64).sqrt().ceil() as usize,
    };
    save_grid(&samples.images, &path, nrow)?;
    tracing::info!(step, path = %path.display(), seconds = started.elapsed().as_secs_f64(), "samples");
    Ok(path)
}

/// `YYYYmmdd-HHMMSS` in UTC.
pub fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs| utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "19700101-000000");
        // 2000-02-29T12:34:56Z, a leap day of a century leap year.
        assert_eq!(at(951_827_696), "20000229-123456");
        // 2026-11-29T18:30:01Z.
        assert_eq!(at(1_795_977_001), "20261129-183001");
    }
}
