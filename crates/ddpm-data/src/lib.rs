//! Datasets and image output for diffusion training on [candle](https://github.com/huggingface/candle).
//!
//! - [`idx`]: the IDX format of MNIST and Fashion-MNIST, raw or gzipped, with typed errors
//!   that name the file.
//! - [`IdxDataset`]: Fashion-MNIST and MNIST located on disk, checksummed and loaded into
//!   memory as [`LabeledImages`], which turn into [−1, 1] tensors; downloaded into the
//!   cache, md5-verified before they are moved into place, when not found.
#![warn(missing_docs)]

mod download;
mod error;
pub mod idx;
mod idx_dataset;

pub use download::download_verified;
pub use error::{DataError, Result};
pub use idx_dataset::{cache_dir, IdxDataset, LabeledImages, Split};
