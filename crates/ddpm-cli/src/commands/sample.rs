//! `ddpm sample`: draws images from a trained model into a grid, a progression figure and
//! an animated GIF.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use ddpm_data::{save_gif, save_grid, save_progression};
use ddpm_diffusion::GaussianDiffusion;

use crate::config::{SamplerArgs, SamplerKind};
use crate::device::open_device;
use crate::generation::{generate, Request};
use crate::progress;
use crate::sample_file::{write_samples, Provenance};
use crate::trained_model::load_trained_model;

/// The pretrained Fashion-MNIST model shipped in the repository (a diffusers `DDPMPipeline`
/// directory with the EMA weights).
pub const SHIPPED_MODEL: &str = "assets/fashion-mnist-ddpm";

/// `ddpm sample`.
#[derive(Debug, Clone, Args)]
pub struct SampleCommand {
    /// A checkpoint of `ddpm train` (`runs/…/step-….safetensors`; its EMA weights are used)
    /// or a diffusers model directory. Default: the shipped Fashion-MNIST model.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// Images to draw.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class-conditional models: draw this class only (default: all classes in turn).
    #[arg(long)]
    pub class: Option<u32>,
    /// Classifier-free guidance weight w (class-conditional models).
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f64,
    /// The grid of samples (PNG).
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    /// Also write a figure of x_t from noise to image for the first 8 samples.
    #[arg(long)]
    pub progression: Option<PathBuf>,
    /// Also write an animated GIF of the whole grid denoising.
    #[arg(long)]
    pub gif: Option<PathBuf>,
    /// Columns of the grid (default: √n, or the number of classes).
    #[arg(long)]
    pub nrow: Option<usize>,
    /// Images per forward pass (memory bound); the seed fixes the result regardless of it
    /// only when n ≤ batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Also save the raw samples (N, C, H, W, values in [−1, 1]) as safetensors, for `eval`;
    /// the header records the model, sampler, steps, η, guidance and seeds.
    #[arg(long)]
    pub tensors: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Frames of the GIF.
const GIF_FRAMES: usize = 40;
/// Columns of the progression figure (x_T … x_0).
const PROGRESSION_STEPS: usize = 10;
/// Rows of the progression figure.
const PROGRESSION_ROWS: usize = 8;

impl SampleCommand {
    pub fn run(&self) -> Result<()> {
        if self.n == 0 || self.batch == 0 {
            bail!("--n and --batch must be at least 1");
        }
        let device = open_device(&self.device)?;
        let path = match &self.checkpoint {
            Some(path) => path.clone(),
            None => {
                let shipped = PathBuf::from(SHIPPED_MODEL);
                if !shipped.is_dir() {
                    bail!(
                        "no --checkpoint given and the shipped model {SHIPPED_MODEL} is missing (run from the repository root, or pass --checkpoint)"
                    );
                }
                shipped
            }
        };
        let model = load_trained_model(&path, &device)
            .with_context(|| format!("loading {}", path.display()))?;
        let timesteps = model.config.diffusion.timesteps;
        let sampling = self
            .sampler
            .apply(&model.config.sampling, timesteps)
            .context("sampler options")?;
        let sampler = sampling.sampler(timesteps);
        let diffusion = GaussianDiffusion::new(
            model.config.diffusion.noise_schedule()?,
            model.config.diffusion.objective,
            model.config.diffusion.loss_weighting,
            &device,
        )?;
        let unet_config = model.unet.config();
        let side = unet_config
            .sample_size
            .unwrap_or(model.config.data.image_size + 2 * model.config.data.pad);
        let dims = (unet_config.in_channels, side, side);
        let want_frames = self.progression.is_some() || self.gif.is_some();
        tracing::info!(checkpoint = %path.display(), ?sampler, n = self.n, "sampling");

        let started = Instant::now();
        let chunks: Vec<(usize, usize)> = (0..self.n)
            .step_by(self.batch)
            .map(|start| (start, self.batch.min(self.n - start)))
            .collect();
        let steps_per_chunk = sampling.step_count(timesteps);
        let bar = progress::start(
            (steps_per_chunk * chunks.len()) as u64,
            "{bar:30} {pos}/{len} steps | ETA {eta} ({elapsed})",
        );
        let mut images = Vec::new();
        let mut frames: Vec<Vec<Tensor>> = Vec::new();
        for (index, &(_, count)) in chunks.iter().enumerate() {
            let samples = generate(
                &Request {
                    unet: &model.unet,
                    diffusion: &diffusion,
                    sampler: &sampler,
                    n: count,
                    dims,
                    class: self.class,
                    guidance: self.guidance,
                    clip_x0: sampling.clip_x0,
                    snapshots: if want_frames && index == 0 {
                        GIF_FRAMES
                    } else {
                        0
                    },
                    seed: self.seed.wrapping_add(index as u64),
                },
                &mut |done, _| bar.set_position((index * steps_per_chunk + done) as u64),
            );
            let samples = match samples {
                Ok(s) => s,
                Err(e) => {
                    progress::finish(&bar);
                    return Err(e);
                }
            };
            images.push(samples.images);
            if !samples.snapshots.is_empty() {
                frames.push(samples.snapshots.into_iter().map(|s| s.x).collect());
            }
        }
        progress::finish(&bar);
        let seconds = started.elapsed().as_secs_f64();
        let images = Tensor::cat(&images, 0)?;
        let nrow = self.nrow.unwrap_or_else(|| match unet_config.null_class() {
            Some(classes) if self.class.is_none() => classes.max(1) as usize,
            _ => (self.n as f64).sqrt().ceil() as usize,
        });
        save_grid(&images, &self.out, nrow)?;
        eprintln!(
            "{} images in {seconds:.1} s ({:.2} images/s) -> {}",
            self.n,
            self.n as f64 / seconds,
            self.out.display()
        );
        if let Some(tensors) = &self.tensors {
            let provenance = Provenance {
                checkpoint: path.display().to_string(),
                sampler: sampling.sampler.name().into(),
                steps: steps_per_chunk,
                eta: match sampling.sampler {
                    SamplerKind::Ddpm => 0.0,
                    SamplerKind::Ddim => sampling.eta,
                },
                guidance: self.guidance,
                class: self.class,
                seed: self.seed,
                batches: chunks.len() as u64,
            };
            write_samples(tensors, &images, &provenance)?;
            eprintln!("raw samples -> {}", tensors.display());
        }
        let frames = frames.into_iter().next().unwrap_or_default();
        if let Some(out) = &self.progression {
            let rows = PROGRESSION_ROWS.min(images.dim(0)?);
            let picked: Vec<Tensor> = pick_evenly(&frames, PROGRESSION_STEPS)
                .into_iter()
                .map(|x| x.narrow(0, 0, rows))
                .collect::<candle_core::Result<_>>()?;
            save_progression(&picked, out)?;
            eprintln!("progression -> {}", out.display());
        }
        if let Some(out) = &self.gif {
            let nrow_first = nrow.min(frames.first().map_or(1, |f| f.dim(0).unwrap_or(1)));
            save_gif(&frames, out, nrow_first, 80, 1500)?;
            eprintln!("animation -> {}", out.display());
        }
        Ok(())
    }
}

/// `k` items spread evenly over `items`, first and last included.
fn pick_evenly(items: &[Tensor], k: usize) -> Vec<Tensor> {
    if items.len() <= k || k < 2 {
        return items.to_vec();
    }
    (0..k)
        .map(|i| items[i * (items.len() - 1) / (k - 1)].clone())
        .collect()
}
