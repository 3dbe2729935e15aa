//! Datasets and image output for diffusion training on [candle](https://github.com/huggingface/candle).
//!
//! - [`idx`]: the IDX format of MNIST and Fashion-MNIST, raw or gzipped, with typed errors
//!   that name the file.
//! - [`IdxDataset`]: Fashion-MNIST and MNIST located on disk, checksummed and loaded into
//!   memory as [`LabeledImages`]; downloaded into the cache, md5-verified before they are
//!   moved into place, when not found.
//! - [`ImageFolder`]: any folder of PNG/JPEG/WebP/BMP images, classes from subfolders,
//!   resized and center-cropped, decoded up front or lazily.
//! - [`BatchLoader`]: seeded per-epoch shuffling, flips, padding, batches assembled on a
//!   background thread.
//! - [`save_grid`], [`save_progression`], [`save_gif`]: pictures of [−1, 1] tensors.
//!
//! Pixels are scaled to [−1, 1] everywhere: x = p/127.5 − 1 for a byte p.
#![warn(missing_docs)]

mod batch_loader;
mod download;
mod error;
pub mod idx;
mod idx_dataset;
mod image_dataset;
mod image_folder;
mod image_output;

pub use batch_loader::{Batch, BatchLoader, EpochBatches, HostBatch, LoaderConfig};
pub use download::download_verified;
pub use error::{DataError, Result};
pub use idx_dataset::{cache_dir, IdxDataset, LabeledImages, Split};
pub use image_dataset::ImageDataset;
pub use image_folder::{Channels, ImageFolder, ImageFolderConfig, IMAGE_EXTENSIONS, ROOT_CLASS};
pub use image_output::{grid_image, save_gif, save_grid, save_progression};
