//! Training and testing the classifier.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use ddpm_data::{BatchLoader, ImageDataset, LoaderConfig};
use ddpm_diffusion::NoiseRng;
use ddpm_train::{named_vars, seeded_init, AdamW, AdamWConfig};

use crate::outliers::synthetic_outliers;
use crate::{Classifier, EvalError, Result};

/// Hyper-parameters of [`train_classifier`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierTraining {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate; it decays linearly to 0 over the run.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Random left-right flips of the training images.
    pub horizontal_flip: bool,
    /// Seed of the initialisation, the data order and the outliers.
    pub seed: u64,
    /// Learn one more class, "not a garment", from synthetic outliers (noise of several
    /// kinds, constant images; [`synthetic_outliers`]): each batch gets
    /// `batch_size / classes` of them, as many as a real class has on average. The class's
    /// index is the number of real classes.
    pub outlier_class: bool,
}

impl Default for ClassifierTraining {
    fn default() -> Self {
        Self {
            epochs: 8,
            batch_size: 128,
            lr: 2e-3,
            weight_decay: 1e-4,
            horizontal_flip: true,
            seed: 0,
            outlier_class: true,
        }
    }
}

/// What one epoch did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochReport {
    /// The epoch (1-based).
    pub epoch: usize,
    /// Mean training loss (cross-entropy) over the epoch.
    pub loss: f64,
    /// Accuracy on the test set after the epoch.
    pub test_accuracy: f64,
    /// Training images per second.
    pub images_per_s: f64,
}

/// Fraction of `data` the model classifies correctly (a prediction of the outlier class is
/// wrong).
pub fn accuracy(model: &Classifier, data: Arc<dyn ImageDataset>, device: &Device) -> Result<f64> {
    let loader = BatchLoader::new(
        data,
        LoaderConfig {
            batch_size: 500,
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::default()
        },
    )?;
    let (mut right, mut total) = (0usize, 0usize);
    for batch in loader.epoch(0, 0, device) {
        let batch = batch?;
        let (predicted, _) = model.predict(&batch.images)?;
        let labels = batch.labels.to_vec1::<u32>()?;
        right += predicted
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count();
        total += labels.len();
    }
    Ok(right as f64 / total.max(1) as f64)
}

/// Trains a fresh [`Classifier`] on `train` with cross-entropy and AdamW, testing on `test`
/// after every epoch; `on_epoch` sees each report and `on_step(step, total)` each step.
pub fn train_classifier(
    config: &ClassifierTraining,
    train: Arc<dyn ImageDataset>,
    test: Arc<dyn ImageDataset>,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize),
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<(Classifier, VarMap, Vec<EpochReport>)> {
    if config.epochs == 0 || !(config.lr.is_finite() && config.lr > 0.0) {
        return Err(EvalError::InvalidOption {
            name: "classifier training",
            reason: format!(
                "epochs = {} must be ≥ 1 and lr = {} > 0",
                config.epochs, config.lr
            ),
        });
    }
    let classes = train.class_names().len().max(2);
    let outputs = classes + usize::from(config.outlier_class);
    let (model, varmap) = Classifier::init(outputs, device)?;
    let outliers_per_batch = (config.batch_size / classes).max(1);
    let mut outlier_rng = NoiseRng::new(config.seed ^ 0x6f75_746c_6965_7273);
    let mut named = named_vars(&varmap)?;
    seeded_init(&mut named, config.seed)?;
    let mut optimizer = AdamW::new(
        named.into_iter().collect(),
        AdamWConfig {
            weight_decay: config.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let loader = BatchLoader::new(
        train,
        LoaderConfig {
            batch_size: config.batch_size,
            shuffle: true,
            drop_last: true,
            seed: config.seed,
            horizontal_flip: config.horizontal_flip,
            ..LoaderConfig::default()
        },
    )?;
    let per_epoch = loader.batches_per_epoch();
    let total = per_epoch * config.epochs;
    let mut reports = Vec::new();
    let mut step = 0usize;
    for epoch in 0..config.epochs {
        let started = Instant::now();
        let (mut loss_sum, mut images) = (0.0f64, 0usize);
        for batch in loader.epoch(epoch, 0, device) {
            let batch = batch?;
            let (inputs, targets) = if config.outlier_class {
                let (_, _, h, w) = batch.images.dims4()?;
                let outliers =
                    synthetic_outliers(outliers_per_batch, h.max(w), &mut outlier_rng, device)?;
                let outlier_labels = Tensor::full(classes as u32, outliers_per_batch, device)?;
                (
                    Tensor::cat(&[&batch.images, &outliers], 0)?,
                    Tensor::cat(&[&batch.labels, &outlier_labels], 0)?,
                )
            } else {
                (batch.images.clone(), batch.labels.clone())
            };
            let logits = model.logits(&inputs)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
            let grads = loss.backward()?;
            let lr = config.lr * (1.0 - step as f64 / total as f64);
            optimizer.step(&grads, lr)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            images += batch.images.dim(0)?;
            step += 1;
            on_step(step, total);
        }
        let seconds = started.elapsed().as_secs_f64();
        let report = EpochReport {
            epoch: epoch + 1,
            loss: loss_sum / per_epoch as f64,
            test_accuracy: accuracy(&model, Arc::clone(&test), device)?,
            images_per_s: images as f64 / seconds,
        };
        tracing::info!(
            epoch = report.epoch,
            loss = report.loss,
            test_accuracy = report.test_accuracy,
            "classifier epoch"
        );
        on_epoch(&report);
        reports.push(report);
    }
    Ok((model, varmap, reports))
}
