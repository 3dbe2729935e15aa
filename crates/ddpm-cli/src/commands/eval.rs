//! `ddpm eval`: sample quality against the Fashion-MNIST test set, in the feature space of
//! the shipped domain classifier: FID, KID, precision and recall (k = 3), the class histogram
//! of the samples and the classifier's mean confidence.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use ddpm_data::{ImageDataset, LabeledImages, Split};
use ddpm_diffusion::GaussianDiffusion;
use ddpm_eval::{
    frechet_distance, kernel_inception_distance, precision_recall, Classifier, FeatureStats,
    CLASSIFIER_FEATURES, SHIPPED_CLASSIFIER_OUTPUTS,
};

use crate::commands::train_classifier::SHIPPED_CLASSIFIER;
use crate::config::{DataConfig, SamplerArgs};
use crate::dataset::load_idx;
use crate::device::open_device;
use crate::generation::{generate, Request};
use crate::progress;
use crate::sample_file::read_samples;
use crate::trained_model::load_trained_model;

/// What is measured in the README and the report.
/// The histogram's name for the classifier's outlier class.
const NOT_A_GARMENT: &str = "not a garment";

const FEATURE_SPACE: &str =
    "128-d penultimate layer of the Fashion-MNIST classifier (not Inception)";

/// `ddpm eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalCommand {
    /// Draw the samples from this model (a `ddpm train` checkpoint or a diffusers directory).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["samples", "from_train"])]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate samples drawn earlier (`ddpm sample --tensors FILE`); several files (drawn
    /// with different seeds) are evaluated together.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "from_train")]
    pub samples: Vec<PathBuf>,
    /// Evaluate the first N training images instead of samples (the floor of the metrics).
    #[arg(long, value_name = "N")]
    pub from_train: Option<usize>,
    /// Samples to draw with --checkpoint.
    #[arg(long, default_value_t = 10_000)]
    pub n: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of the samples and of KID's subsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per sampling batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// The classifier's weights.
    #[arg(long, default_value = SHIPPED_CLASSIFIER)]
    pub classifier: PathBuf,
    /// Directory holding Fashion-MNIST.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Features of images (N, 1, 28, 28) in [−1, 1], with the predicted classes and confidences.
fn featurize(classifier: &Classifier, images: &Tensor) -> Result<(Vec<f32>, Vec<u32>, Vec<f32>)> {
    let n = images.dim(0)?;
    let (mut features, mut classes, mut confidence) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..n).step_by(500) {
        let chunk = images.narrow(0, start, 500.min(n - start))?;
        features.extend(
            classifier
                .features(&chunk)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        let (c, p) = classifier.predict(&chunk)?;
        classes.extend(c);
        confidence.extend(p);
    }
    Ok((features, classes, confidence))
}

fn all_images(data: &LabeledImages, count: usize, device: &Device) -> Result<Tensor> {
    let indices: Vec<usize> = (0..count.min(data.len())).collect();
    Ok(data.to_tensor(&indices, device)?)
}

impl EvalCommand {
    pub fn run(&self) -> Result<()> {
        let device = open_device(&self.device)?;
        let classifier = Classifier::load(&self.classifier, SHIPPED_CLASSIFIER_OUTPUTS, &device).with_context(|| {
            "the classifier (train it with `cargo xtask train-classifier`, or pass --classifier)"
        })?;
        let data = DataConfig {
            dir: self.data_dir.clone(),
            ..DataConfig::default()
        };
        let test = load_idx(&data, Split::Test)?;
        let (images, sampler_name, steps) = self.samples(&data, &device)?;
        let (n, c, h, w) = images.dims4()?;
        if (c, h, w) != (1, 28, 28) {
            bail!("the samples are {c}×{h}×{w}; the classifier takes 1×28×28");
        }
        let started = Instant::now();
        let (gen_features, gen_classes, confidence) = featurize(&classifier, &images)?;
        let (real_features, _, _) =
            featurize(&classifier, &all_images(&test, test.len(), &device)?)?;
        let dim = CLASSIFIER_FEATURES;
        let fid = frechet_distance(
            &FeatureStats::from_rows(&gen_features, dim)?,
            &FeatureStats::from_rows(&real_features, dim)?,
        )?;
        let (kid, kid_std) =
            kernel_inception_distance(&gen_features, &real_features, dim, 100, 1000, self.seed)?;
        let (precision, recall) = precision_recall(&real_features, &gen_features, dim, 3)?;
        let mut histogram = [0usize; SHIPPED_CLASSIFIER_OUTPUTS];
        for &class in &gen_classes {
            histogram[class as usize] += 1;
        }
        let mean_confidence =
            confidence.iter().map(|&p| f64::from(p)).sum::<f64>() / confidence.len() as f64;
        let names = test.class_names();
        println!(
            "{n} images ({sampler_name}) against the {} test images",
            test.len()
        );
        println!("feature space: {FEATURE_SPACE}");
        println!("  FID        {fid:10.4}");
        println!("  KID        {kid:10.5} ± {kid_std:.5}");
        println!("  precision  {precision:10.4}");
        println!("  recall     {recall:10.4}");
        println!("  mean classifier confidence {mean_confidence:.4}");
        println!("  class histogram (the classifier's labels of the samples):");
        let names: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .chain([NOT_A_GARMENT])
            .collect();
        for (name, count) in names.iter().zip(histogram) {
            println!(
                "    {name:<13} {count:6} ({:5.1}%)",
                100.0 * count as f64 / n as f64
            );
        }
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "metrics");
        if let Some(path) = &self.json {
            let report = serde_json::json!({
                "fid": fid, "kid": kid, "kid_std": kid_std, "precision": precision,
                "recall": recall, "class_histogram": histogram, "class_names": names,
                "mean_confidence": mean_confidence,
                "n": n, "sampler": sampler_name, "steps": steps, "feature_space": FEATURE_SPACE,
            });
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The images to evaluate, the sampler's name and its steps.
    fn samples(
        &self,
        data: &DataConfig,
        device: &Device,
    ) -> Result<(Tensor, String, Option<usize>)> {
        if let Some(count) = self.from_train {
            let train = load_idx(data, Split::Train)?;
            return Ok((
                all_images(&train, count, device)?,
                "train-images".into(),
                None,
            ));
        }
        if !self.samples.is_empty() {
            let set = read_samples(&self.samples, device)?;
            return Ok(match set.provenance {
                Some(p) => (set.images, p.sampler, Some(p.steps)),
                None => (set.images, "samples-file".into(), None),
            });
        }
        let Some(path) = &self.checkpoint else {
            bail!("give --checkpoint PATH, --samples FILE or --from-train N");
        };
        if self.n < 4 || self.batch == 0 {
            bail!("--n must be at least 4 and --batch at least 1");
        }
        let model = load_trained_model(path, device)?;
        let timesteps = model.config.diffusion.timesteps;
        let sampling = self.sampler.apply(&model.config.sampling, timesteps)?;
        let sampler = sampling.sampler(timesteps);
        let steps = sampling.step_count(timesteps);
        let diffusion = GaussianDiffusion::new(
            model.config.diffusion.noise_schedule()?,
            model.config.diffusion.objective,
            model.config.diffusion.loss_weighting,
            device,
        )?;
        let chunks: Vec<usize> = (0..self.n).step_by(self.batch).collect();
        let bar = progress::start(
            (chunks.len() * steps) as u64,
            "{bar:30} {pos}/{len} steps | ETA {eta}",
        );
        let mut images = Vec::new();
        for (i, &start) in chunks.iter().enumerate() {
            let count = self.batch.min(self.n - start);
            let samples = generate(
                &Request {
                    unet: &model.unet,
                    diffusion: &diffusion,
                    sampler: &sampler,
                    n: count,
                    dims: (1, 28, 28),
                    class: None,
                    guidance: 0.0,
                    clip_x0: sampling.clip_x0,
                    snapshots: 0,
                    seed: self.seed.wrapping_add(i as u64),
                },
                &mut |done, _| bar.set_position((i * steps + done) as u64),
            );
            match samples {
                Ok(s) => images.push(s.images),
                Err(e) => {
                    progress::finish(&bar);
                    return Err(e);
                }
            }
        }
        progress::finish(&bar);
        Ok((
            Tensor::cat(&images, 0)?,
            sampling.sampler.name().into(),
            Some(steps),
        ))
    }
}
