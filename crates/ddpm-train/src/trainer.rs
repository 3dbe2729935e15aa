//! The training loop: L_simple on batches, AdamW with warm-up and clipping, EMA, metrics,
//! checkpoints, exact resume.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use ddpm_data::{Batch, BatchLoader};
use ddpm_diffusion::{GaussianDiffusion, NoiseRng};
use ddpm_unet::{UNet, UNetConfig};

use crate::checkpoint::{checkpoint_name, prune_checkpoints, Checkpoint, TrainingProgress};
use crate::{
    clip_grad_norm, mixed_precision_forward, named_vars, seeded_init, AdamW, AdamWConfig, Ema,
    Precision, Result, TrainError, WarmupSchedule,
};

/// The training hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerConfig {
    /// Optimizer steps in all.
    pub steps: u64,
    /// Learning rate after warm-up.
    pub lr: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: u64,
    /// AdamW's β's, ε and weight decay.
    pub adamw: AdamWConfig,
    /// Clip the gradient's global norm to this, if set.
    pub grad_clip: Option<f64>,
    /// EMA decay.
    pub ema_decay: f64,
    /// Step from which the EMA averages (before it, it copies).
    pub ema_start: u64,
    /// EMA decay warm-up: d_t = min(ema_decay, (1 + t)/(10 + t)) (see [`Ema`]).
    pub ema_warmup: bool,
    /// Seed of the initialisation and of every draw (timesteps, noise, label dropout).
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Append a row to `metrics.csv` every this many steps.
    pub log_every: u64,
    /// For class-conditional models: the probability of replacing a label by the null
    /// class, which trains the unconditional branch of classifier-free guidance.
    pub class_dropout: f64,
    /// The arithmetic of the forward and backward (the weights stay f32).
    pub precision: Precision,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            steps: 10_000,
            lr: 2e-4,
            warmup_steps: 500,
            adamw: AdamWConfig::default(),
            grad_clip: Some(1.0),
            ema_decay: 0.999,
            ema_start: 0,
            ema_warmup: true,
            seed: 0,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            log_every: 50,
            class_dropout: 0.1,
            precision: Precision::F32,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step just taken (1-based).
    pub step: u64,
    /// The epoch its batch came from.
    pub epoch: u64,
    /// The loss on its batch.
    pub loss: f32,
    /// The learning rate used.
    pub lr: f64,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
    /// Images per second of this step.
    pub images_per_s: f64,
}

/// What [`Trainer::run`] calls after each step.
pub type StepHook<'a> = dyn FnMut(&Trainer, &StepReport) -> std::result::Result<(), HookError> + 'a;

/// The error a [`StepHook`] may return.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// The header of `metrics.csv`.
pub const METRICS_HEADER: &str = "step,epoch,loss,lr,grad_norm,images_per_s";

/// Trains a U-Net on a dataset with a diffusion process, in a run directory.
pub struct Trainer {
    unet: UNet,
    unet_config: UNetConfig,
    vars: HashMap<String, Var>,
    var_list: Vec<Var>,
    diffusion: GaussianDiffusion,
    loader: BatchLoader,
    optimizer: AdamW,
    ema: Ema,
    rng: NoiseRng,
    progress: TrainingProgress,
    config: TrainerConfig,
    run_dir: PathBuf,
    device: Device,
    extra: HashMap<String, String>,
}

impl Trainer {
    /// A fresh run in `run_dir` (created if needed), initialised from `config.seed`.
    /// `extra` entries (the resolved config, say) are stored in every checkpoint.
    pub fn new(
        unet_config: &UNetConfig,
        diffusion: GaussianDiffusion,
        loader: BatchLoader,
        config: TrainerConfig,
        run_dir: impl Into<PathBuf>,
        extra: HashMap<String, String>,
    ) -> Result<Self> {
        let device = diffusion.device().clone();
        if config.precision == Precision::Bf16 && device.is_cpu() {
            return Err(TrainError::InvalidOption {
                name: "precision",
                reason: "bf16 needs a CUDA device: candle's CPU matmul has no bf16".into(),
            });
        }
        let run_dir = run_dir.into();
        std::fs::create_dir_all(&run_dir).map_err(|source| TrainError::Io {
            path: run_dir.clone(),
            source,
        })?;
        let (unet, varmap) = UNet::init(unet_config, DType::F32, &device)?;
        let mut named = named_vars(&varmap)?;
        seeded_init(&mut named, config.seed)?;
        let vars: HashMap<String, Var> = named.iter().cloned().collect();
        let var_list = named.iter().map(|(_, v)| v.clone()).collect();
        let optimizer = AdamW::new(vars.clone(), config.adamw)?;
        let ema =
            Ema::new(&vars, config.ema_decay, config.ema_start)?.with_warmup(config.ema_warmup);
        let rng = NoiseRng::new(config.seed);
        Ok(Self {
            unet,
            unet_config: unet_config.clone(),
            vars,
            var_list,
            diffusion,
            loader,
            optimizer,
            ema,
            progress: TrainingProgress {
                step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                rng: rng.state(),
            },
            rng,
            config,
            run_dir,
            device,
            extra,
        })
    }

    /// Continues from a checkpoint written by this trainer: weights, EMA, optimizer, step,
    /// data position and RNG state; `metrics.csv` rows after its step are dropped.
    pub fn resume_from(&mut self, path: &Path) -> Result<()> {
        let checkpoint = Checkpoint::load(path, &self.device)?;
        let fail = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        for (name, var) in &self.vars {
            let value = checkpoint.model.get(name).ok_or_else(|| {
                fail(format!(
                    "missing model weight {name}: another architecture?"
                ))
            })?;
            if value.shape() != var.shape() {
                return Err(fail(format!(
                    "model weight {name} has shape {:?}, expected {:?}",
                    value.dims(),
                    var.dims()
                )));
            }
            var.set(value)?;
        }
        self.ema.load(&checkpoint.ema)?;
        self.optimizer
            .load_state(&checkpoint.optimizer, checkpoint.progress.step)?;
        self.rng = NoiseRng::from_state(checkpoint.progress.rng);
        self.progress = checkpoint.progress;
        self.truncate_metrics()?;
        tracing::info!(step = self.progress.step, path = %path.display(), "resumed");
        Ok(())
    }

    /// Where training stands.
    pub fn progress(&self) -> TrainingProgress {
        self.progress
    }

    /// The model being trained.
    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The diffusion process.
    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }

    /// `metrics.csv` of the run.
    pub fn metrics_path(&self) -> PathBuf {
        self.run_dir.join("metrics.csv")
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The model with the EMA weights, for sampling.
    pub fn ema_unet(&self) -> Result<UNet> {
        let vb = VarBuilder::from_tensors(self.ema.tensors(), DType::F32, &self.device);
        Ok(UNet::new(vb, &self.unet_config)?)
    }

    /// The EMA weights by name.
    pub fn ema_weights(&self) -> HashMap<String, Tensor> {
        self.ema.tensors()
    }

    /// The model's current weights by name.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// One optimizer step on `batch`.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepReport> {
        let start = Instant::now();
        let step = self.progress.step + 1;
        let lr = WarmupSchedule {
            lr: self.config.lr,
            warmup_steps: self.config.warmup_steps,
        }
        .at(step);
        let drawn = self
            .diffusion
            .training_batch(&batch.images, &mut self.rng)?;
        let labels = match self.unet_config.null_class() {
            Some(null) => {
                let mut labels = batch.labels.to_vec1::<u32>()?;
                for label in &mut labels {
                    if self.rng.uniform() < self.config.class_dropout {
                        *label = null;
                    }
                }
                let n = labels.len();
                Some(Tensor::from_vec(labels, n, &self.device)?)
            }
            None => None,
        };
        let prediction = match self.config.precision {
            Precision::F32 => {
                self.unet
                    .forward(&drawn.x_t, &drawn.model_t, labels.as_ref(), true)?
            }
            Precision::Bf16 => mixed_precision_forward(
                &self.unet_config,
                &self.vars,
                Precision::Bf16.compute_dtype(),
                &drawn.x_t,
                &drawn.model_t,
                labels.as_ref(),
                true,
            )?,
        };
        let loss = self.diffusion.loss(&prediction, &drawn)?;
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step,
                loss: loss_value,
            });
        }
        let mut grads = loss.backward()?;
        let grad_norm = match self.config.grad_clip {
            Some(max) => clip_grad_norm(&mut grads, &self.var_list, max)?,
            None => clip_grad_norm(&mut grads, &self.var_list, f64::INFINITY)?,
        };
        self.optimizer.step(&grads, lr)?;
        self.ema.update(&self.vars, step)?;

        let epoch = batch.epoch as u64;
        self.progress.step = step;
        if batch.index + 1 >= self.loader.batches_per_epoch() {
            self.progress.epoch = epoch + 1;
            self.progress.batch_in_epoch = 0;
        } else {
            self.progress.epoch = epoch;
            self.progress.batch_in_epoch = batch.index as u64 + 1;
        }
        self.progress.rng = self.rng.state();
        let images = batch.images.dim(0)? as f64;
        Ok(StepReport {
            step,
            epoch,
            loss: loss_value,
            lr,
            grad_norm,
            images_per_s: images / start.elapsed().as_secs_f64(),
        })
    }

    /// Trains until `config.steps` or until `stop` is raised, checkpointing every
    /// `checkpoint_every` steps and at the end (a stop included); `on_step` sees the trainer
    /// and every step's report after its metrics row is written, and its error ends the run.
    pub fn run(&mut self, stop: &AtomicBool, on_step: &mut StepHook<'_>) -> Result<()> {
        while self.progress.step < self.config.steps {
            let (epoch, start) = (
                self.progress.epoch as usize,
                self.progress.batch_in_epoch as usize,
            );
            for batch in self.loader.clone().epoch(epoch, start, &self.device) {
                let report = self.train_step(&batch?)?;
                if report.step % self.config.log_every.max(1) == 0 {
                    self.append_metrics(&report)?;
                }
                on_step(self, &report).map_err(|source| TrainError::Hook {
                    step: report.step,
                    source,
                })?;
                let done = report.step >= self.config.steps;
                let stopping = stop.load(Ordering::Relaxed);
                if done || stopping || report.step % self.config.checkpoint_every.max(1) == 0 {
                    self.save_checkpoint()?;
                }
                if done || stopping {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Writes a checkpoint of the current state into the run directory and prunes old ones.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let path = self.run_dir.join(checkpoint_name(self.progress.step));
        Checkpoint {
            progress: self.progress,
            model: self.weights(),
            ema: self.ema.tensors(),
            optimizer: self.optimizer.state(),
            extra: self.extra.clone(),
        }
        .save(&path)?;
        prune_checkpoints(&self.run_dir, self.config.keep_checkpoints.max(1))?;
        tracing::info!(step = self.progress.step, path = %path.display(), "checkpoint");
        Ok(path)
    }

    fn append_metrics(&self, r: &StepReport) -> Result<()> {
        let path = self.metrics_path();
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        let new = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        if new {
            writeln!(file, "{METRICS_HEADER}").map_err(io)?;
        }
        writeln!(
            file,
            "{},{},{},{:e},{},{:.2}",
            r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.images_per_s
        )
        .map_err(io)
    }

    /// Drops metrics rows after the current step (they belong to the interrupted run).
    fn truncate_metrics(&self) -> Result<()> {
        let path = self.metrics_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                line.split(',')
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_none_or(|step| step <= self.progress.step)
            })
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n")
            .map_err(|source| TrainError::Io { path, source })
    }
}
