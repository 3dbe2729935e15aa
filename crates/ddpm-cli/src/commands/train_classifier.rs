//! `ddpm train-classifier`: trains the Fashion-MNIST classifier whose features the quality
//! metrics use, and writes its weights.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use ddpm_data::Split;
use ddpm_eval::{train_classifier, Classifier, ClassifierTraining};

use crate::config::DataConfig;
use crate::dataset::load_idx;
use crate::device::open_device;
use crate::progress;

/// Where the shipped classifier lives.
pub const SHIPPED_CLASSIFIER: &str = "assets/fashion-mnist-classifier.safetensors";

/// `ddpm train-classifier`.
#[derive(Debug, Clone, Args)]
pub struct TrainClassifierCommand {
    /// Directory holding Fashion-MNIST (default: $DDPM_DATA_DIR, the cache,
    /// ../shared/data/fashion-mnist, else a download).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate (linear decay to 0).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Seed of the initialisation and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the weights go.
    #[arg(long, default_value = SHIPPED_CLASSIFIER)]
    pub out: PathBuf,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl TrainClassifierCommand {
    pub fn run(&self) -> Result<()> {
        let device = open_device(&self.device)?;
        let data = DataConfig {
            dir: self.data_dir.clone(),
            ..DataConfig::default()
        };
        let train = Arc::new(load_idx(&data, Split::Train)?);
        let test = Arc::new(load_idx(&data, Split::Test)?);
        let config = ClassifierTraining {
            epochs: self.epochs,
            batch_size: self.batch,
            lr: self.lr,
            seed: self.seed,
            ..ClassifierTraining::default()
        };
        let started = Instant::now();
        let bar = progress::start(1, "{bar:30} {pos}/{len} steps | {msg} | ETA {eta}");
        let result = train_classifier(
            &config,
            train,
            test,
            &device,
            &mut |step, total| {
                bar.set_length(total as u64);
                bar.set_position(step as u64);
            },
            &mut |report| {
                bar.set_message(format!(
                    "epoch {} loss {:.4} test accuracy {:.2}%",
                    report.epoch,
                    report.loss,
                    100.0 * report.test_accuracy
                ));
                bar.suspend(|| {
                    eprintln!(
                        "epoch {:>2}: loss {:.4}, test accuracy {:.2}%, {:.0} images/s",
                        report.epoch,
                        report.loss,
                        100.0 * report.test_accuracy,
                        report.images_per_s
                    )
                });
            },
        );
        progress::finish(&bar);
        let (_, varmap, reports) = result?;
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        Classifier::save(&varmap, &self.out)?;
        let last = reports.last().context("no epoch ran")?;
        println!(
            "test accuracy {:.2}% after {} epochs (seed {}, {:.0} s); weights: {}",
            100.0 * last.test_accuracy,
            last.epoch,
            self.seed,
            started.elapsed().as_secs_f64(),
            self.out.display()
        );
        Ok(())
    }
}
