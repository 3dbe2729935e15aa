//! Drawing images from a trained network: unconditional, class-conditional, or with
//! classifier-free guidance.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use ddpm_diffusion::{
    ClassifierFreeGuidance, GaussianDiffusion, NoiseRng, SampleOptions, Sampler, Samples,
};
use ddpm_unet::UNet;

/// What to draw.
pub struct Request<'a> {
    /// The network.
    pub unet: &'a UNet,
    /// The diffusion process it was trained with.
    pub diffusion: &'a GaussianDiffusion,
    /// The reverse process.
    pub sampler: &'a Sampler,
    /// Images to draw.
    pub n: usize,
    /// (channels, height, width) of an image.
    pub dims: (usize, usize, usize),
    /// For class-conditional models: the class of each image (`None`: cycle through the
    /// classes, so a grid with 10 columns has one class per column).
    pub class: Option<u32>,
    /// Classifier-free guidance weight w: ε̂ = (1 + w)·ε(x, y) − w·ε(x, ∅); 0 is plain
    /// conditional sampling.
    pub guidance: f64,
    /// Clip x̂_0 to [−1, 1] at each step.
    pub clip_x0: bool,
    /// Intermediate states to keep for a progression figure.
    pub snapshots: usize,
    /// Seed of every draw.
    pub seed: u64,
}

/// The labels a class-conditional model samples with; `None` for unconditional models.
pub fn labels(request: &Request, device: &Device) -> Result<Option<Tensor>> {
    let config = request.unet.config();
    let Some(null) = config.null_class() else {
        if request.class.is_some() || request.guidance != 0.0 {
            bail!(
                "--class and --guidance need a class-conditional model (this one is unconditional)"
            );
        }
        return Ok(None);
    };
    let classes = null; // labels 0..null are real classes; `null` means "no class"
    let labels: Vec<u32> = match request.class {
        Some(c) if c >= classes => {
            bail!("--class {c}: the model knows classes 0 to {}", classes - 1)
        }
        Some(c) => vec![c; request.n],
        None => (0..request.n as u32).map(|i| i % classes.max(1)).collect(),
    };
    Ok(Some(Tensor::from_vec(labels, request.n, device)?))
}

/// Draws `request.n` images; `progress(done, total)` follows the steps.
pub fn generate(request: &Request, progress: &mut dyn FnMut(usize, usize)) -> Result<Samples> {
    let device = request.diffusion.device().clone();
    let (c, h, w) = request.dims;
    let mut rng = NoiseRng::new(request.seed);
    let options = SampleOptions {
        clip_x0: request.clip_x0,
        snapshots: request.snapshots,
    };
    let shape = (request.n, c, h, w);
    let unet = request.unet;
    let samples = match labels(request, &device)? {
        None => {
            let model = |x: &Tensor, t: &Tensor| unet.forward(x, t, None, false).map_err(to_candle);
            request
                .diffusion
                .sample(&model, request.sampler, shape, &mut rng, options, progress)?
        }
        Some(labels) => {
            let null = unet.config().null_class().unwrap_or(0);
            let model = |x: &Tensor, t: &Tensor, y: &Tensor| {
                unet.forward(x, t, Some(y), false).map_err(to_candle)
            };
            if request.guidance == 0.0 {
                let conditional = |x: &Tensor, t: &Tensor| model(x, t, &labels);
                request.diffusion.sample(
                    &conditional,
                    request.sampler,
                    shape,
                    &mut rng,
                    options,
                    progress,
                )?
            } else {
                let guided = ClassifierFreeGuidance::new(&model, &labels, null, request.guidance)?;
                request.diffusion.sample(
                    &guided,
                    request.sampler,
                    shape,
                    &mut rng,
                    options,
                    progress,
                )?
            }
        }
    };
    Ok(samples)
}

fn to_candle(err: ddpm_unet::UNetError) -> candle_core::Error {
    candle_core::Error::Msg(err.to_string())
}
