//! Measuring samples of diffusion models on small grayscale datasets (Fashion-MNIST, MNIST).
//!
//! Inception features say little about 28×28 grayscale images, and Inception's weights are
//! not to be had offline, so the feature space here is that of a small domain classifier
//! ([`Classifier`]), trained by [`train_classifier`] and shipped with the repository.
//! Numbers computed in it are comparable with each other, not with published FIDs.
#![warn(missing_docs)]

mod classifier;
mod error;
mod frechet;
mod kid;
mod outliers;
mod precision_recall;
mod training;

pub use classifier::{Classifier, CLASSIFIER_FEATURES, SHIPPED_CLASSIFIER_OUTPUTS};
pub use error::{EvalError, Result};
pub use frechet::{frechet_distance, sqrt_psd, symmetric_eigen, FeatureStats};
pub use kid::{kernel_inception_distance, mmd2_unbiased};
pub use outliers::synthetic_outliers;
pub use precision_recall::precision_recall;
pub use training::{accuracy, train_classifier, ClassifierTraining, EpochReport};
