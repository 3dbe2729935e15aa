//! Opening the dataset a `[data]` section describes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use ddpm_data::{
    Channels, IdxDataset, ImageDataset, ImageFolder, ImageFolderConfig, LabeledImages, Split,
};

use crate::config::{DataConfig, DataSource};

/// The IDX dataset of a source, if it is one.
fn idx_dataset(source: DataSource) -> Option<IdxDataset> {
    match source {
        DataSource::FashionMnist => Some(IdxDataset::FashionMnist),
        DataSource::Mnist => Some(IdxDataset::Mnist),
        DataSource::Folder => None,
    }
}

/// Loads `split` of an IDX dataset: from `data.dir` alone when it is given, else from the
/// standard places (then `../shared/data/<name>`), downloading when allowed.
pub fn load_idx(data: &DataConfig, split: Split) -> Result<LabeledImages> {
    let dataset = idx_dataset(data.source).context("data.source is not an IDX dataset")?;
    let dir = match &data.dir {
        Some(dir) => dataset
            .locate_in(&[dir.join(dataset.name()), dir.clone()], split)
            .with_context(|| format!("data.dir = {}", dir.display()))?,
        None => dataset
            .locate_or_download(
                None,
                &[PathBuf::from("../shared/data").join(dataset.name())],
                split,
                data.download,
            )
            .context("data: pass data.dir, set $DDPM_DATA_DIR, or allow data.download")?,
    };
    let images = dataset
        .load(&dir, split, data.verify_md5)
        .with_context(|| format!("loading {} from {}", dataset.name(), dir.display()))?;
    tracing::info!(
        dataset = dataset.name(),
        dir = %dir.display(),
        images = images.len(),
        "data"
    );
    Ok(images)
}

/// The training images of `data`.
pub fn open_training_data(data: &DataConfig) -> Result<Arc<dyn ImageDataset>> {
    match data.source {
        DataSource::FashionMnist | DataSource::Mnist => Ok(Arc::new(load_idx(data, Split::Train)?)),
        DataSource::Folder => {
            let dir = data
                .dir
                .as_ref()
                .context("data.dir is required for folders")?;
            let folder = ImageFolder::open(
                dir,
                ImageFolderConfig {
                    channels: if data.channels == 3 {
                        Channels::Rgb
                    } else {
                        Channels::Gray
                    },
                    size: data.image_size,
                    skip_bad_images: data.skip_bad_images,
                    ..ImageFolderConfig::default()
                },
            )
            .with_context(|| format!("data.dir = {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), images = folder.len(), "data");
            Ok(Arc::new(folder))
        }
    }
}
