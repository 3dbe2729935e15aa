//! `[data]`: where the training images come from.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The kind of dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSource {
    /// Fashion-MNIST's official IDX files (searched for, downloaded if allowed).
    FashionMnist,
    /// MNIST's official IDX files.
    Mnist,
    /// A folder of images; first-level subfolders are classes.
    Folder,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `"fashion-mnist"`, `"mnist"` or `"folder"`.
    pub source: DataSource,
    /// The directory holding the data (relative paths are relative to the working
    /// directory). Optional for the IDX datasets, which are otherwise searched for in
    /// `$DDPM_DATA_DIR`, the cache and `../shared/data/<name>`; required for `"folder"`.
    pub dir: Option<PathBuf>,
    /// Download an IDX dataset into the cache when it is not found.
    pub download: bool,
    /// Check the official md5 of IDX `.gz` files (turn off for subsets).
    pub verify_md5: bool,
    /// Side of the (square) images: 28 for the IDX datasets; folders are resized and
    /// center-cropped to it.
    pub image_size: usize,
    /// Channels: 1 (grayscale) or 3 (RGB; folders only).
    pub channels: usize,
    /// Pixels of padding (value −1) on every side; 2 turns 28×28 into 32×32.
    pub pad: usize,
    /// Flip each image left-right with probability ½ (augmentation).
    pub horizontal_flip: bool,
    /// Folders: skip files that do not decode (with a warning) instead of failing.
    pub skip_bad_images: bool,
    /// Batches assembled ahead of the training loop on a background thread.
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::FashionMnist,
            dir: None,
            download: true,
            verify_md5: true,
            image_size: 28,
            channels: 1,
            pad: 0,
            horizontal_flip: false,
            skip_bad_images: false,
            prefetch: 2,
        }
    }
}

impl DataConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<()> {
        match self.source {
            DataSource::FashionMnist | DataSource::Mnist => {
                if self.image_size != 28 {
                    bail!(
                        "data.image_size = {}: the IDX datasets are 28×28 (use data.pad to enlarge)",
                        self.image_size
                    );
                }
                if self.channels != 1 {
                    bail!(
                        "data.channels = {}: the IDX datasets are grayscale (1)",
                        self.channels
                    );
                }
            }
            DataSource::Folder => {
                if self.dir.is_none() {
                    bail!("data.dir: required when data.source = \"folder\"");
                }
                if !(1..=4096).contains(&self.image_size) {
                    bail!("data.image_size = {}: expected 1 to 4096", self.image_size);
                }
                if self.channels != 1 && self.channels != 3 {
                    bail!("data.channels = {}: expected 1 or 3", self.channels);
                }
            }
        }
        if self.pad > 64 {
            bail!("data.pad = {}: expected at most 64", self.pad);
        }
        Ok(())
    }
}
