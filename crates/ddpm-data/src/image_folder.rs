//! A dataset from a folder of images: PNG, JPEG, WebP or BMP, found recursively, with the
//! class given by the first-level subfolder.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader};

use crate::error::{io_error, DataError, Result};
use crate::ImageDataset;

/// The file extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// The class of images directly in the folder root, when it also has class subfolders.
pub const ROOT_CLASS: &str = "(root)";

/// Colour handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// One channel, luma.
    Gray,
    /// Three channels, RGB (alpha is dropped).
    Rgb,
}

impl Channels {
    /// 1 or 3.
    pub fn count(self) -> usize {
        match self {
            Self::Gray => 1,
            Self::Rgb => 3,
        }
    }
}

/// How to read an image folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolderConfig {
    /// Output colour channels.
    pub channels: Channels,
    /// Output side length: images are resized so the shorter side is `size`, then
    /// center-cropped to `size × size`.
    pub size: usize,
    /// Skip (with a warning) files that are not images or do not decode, instead of failing.
    pub skip_bad_images: bool,
    /// Decode everything up front when the decoded dataset takes at most this many bytes;
    /// larger folders are decoded lazily, example by example, on the loader thread.
    pub preload_limit_bytes: usize,
}

impl Default for ImageFolderConfig {
    fn default() -> Self {
        Self {
            channels: Channels::Gray,
            size: 28,
            skip_bad_images: false,
            preload_limit_bytes: 2 << 30,
        }
    }
}

/// The images of a folder, with labels from the first-level subfolders (sorted by name).
#[derive(Debug)]
pub struct ImageFolder {
    files: Vec<(PathBuf, u32)>,
    class_names: Vec<String>,
    config: ImageFolderConfig,
    /// The decoded examples, when they fit under `preload_limit_bytes`.
    preloaded: Option<Vec<Vec<f32>>>,
}

impl ImageFolder {
    /// Scans `root` recursively. Every file with an image extension is checked to be an
    /// image (its header is read); anything else that is not hidden is an error naming the
    /// file, or a warning and a skip with `skip_bad_images`. When the decoded dataset fits
    /// the preload limit it is decoded now, so a corrupt image is found now too.
    pub fn open(root: impl AsRef<Path>, config: ImageFolderConfig) -> Result<Self> {
        let root = root.as_ref();
        if config.size == 0 {
            return Err(DataError::InvalidArgument {
                name: "image size",
                reason: "must be at least 1 pixel".into(),
            });
        }
        let mut candidates = Vec::new();
        walk(root, &mut candidates)?;
        candidates.sort();

        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for path in candidates {
            match check_image(&path) {
                Ok(()) => {
                    let class = match path.strip_prefix(root).ok().and_then(|rel| {
                        let mut parts = rel.components();
                        let first = parts.next()?;
                        parts
                            .next()
                            .map(|_| first.as_os_str().to_string_lossy().into_owned())
                    }) {
                        Some(class) => class,
                        None => ROOT_CLASS.to_string(),
                    };
                    files.push((path, class));
                }
                Err(err) if config.skip_bad_images => tracing::warn!(%err, "skipping"),
                Err(err) => return Err(err),
            }
        }
        if files.is_empty() {
            return Err(DataError::InvalidArgument {
                name: "image folder",
                reason: format!(
                    "{} holds no images ({})",
                    root.display(),
                    IMAGE_EXTENSIONS.join(", ")
                ),
            });
        }
        let mut class_names: Vec<String> = files.iter().map(|(_, c)| c.clone()).collect();
        class_names.sort();
        class_names.dedup();
        let files: Vec<(PathBuf, u32)> = files
            .into_iter()
            .map(|(path, class)| {
                let label = class_names.binary_search(&class).unwrap_or(0) as u32;
                (path, label)
            })
            .collect();

        let mut folder = Self {
            files,
            class_names,
            config,
            preloaded: None,
        };
        let bytes = folder.files.len() * folder.example_len() * std::mem::size_of::<f32>();
        if bytes <= folder.config.preload_limit_bytes {
            folder.preload()?;
        } else {
            tracing::info!(images = folder.files.len(), bytes, "decoding lazily");
        }
        tracing::info!(root = %root.display(), images = folder.files.len(), classes = folder.class_names.len(), "opened image folder");
        Ok(folder)
    }

    /// The files and their labels, in label-then-path order.
    pub fn files(&self) -> &[(PathBuf, u32)] {
        &self.files
    }

    fn example_len(&self) -> usize {
        self.config.channels.count() * self.config.size * self.config.size
    }

    /// Decodes every file now, dropping (with a warning) those that fail under
    /// `skip_bad_images`.
    fn preload(&mut self) -> Result<()> {
        let mut kept_files = Vec::with_capacity(self.files.len());
        let mut decoded = Vec::with_capacity(self.files.len());
        for (path, label) in std::mem::take(&mut self.files) {
            match decode(&path, &self.config) {
                Ok(values) => {
                    decoded.push(values);
                    kept_files.push((path, label));
                }
                Err(err) if self.config.skip_bad_images => tracing::warn!(%err, "skipping"),
                Err(err) => return Err(err),
            }
        }
        if kept_files.is_empty() {
            return Err(DataError::InvalidArgument {
                name: "image folder",
                reason: "no image in the folder could be decoded".into(),
            });
        }
        self.files = kept_files;
        self.preloaded = Some(decoded);
        Ok(())
    }
}

impl ImageDataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn dims(&self) -> (usize, usize, usize) {
        (
            self.config.channels.count(),
            self.config.size,
            self.config.size,
        )
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn get(&self, index: usize) -> Result<(Vec<f32>, u32)> {
        let (path, label) = &self.files[index];
        let values = match &self.preloaded {
            Some(all) => all[index].clone(),
            None => decode(path, &self.config)?,
        };
        Ok((values, *label))
    }
}

/// Collects files with an image extension, and every other non-hidden file (to report it),
/// under `dir`.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        let path = entry.map_err(io_error(dir))?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// An error unless the file has an image extension and an image header.
fn check_image(path: &Path) -> Result<()> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if !IMAGE_EXTENSIONS.contains(&extension.as_str()) {
        return Err(DataError::InvalidArgument {
            name: "image folder entry",
            reason: format!(
                "{} is not an image (expected one of: {})",
                path.display(),
                IMAGE_EXTENSIONS.join(", ")
            ),
        });
    }
    let image_error = |source| DataError::Image {
        path: path.to_path_buf(),
        source,
    };
    ImageReader::open(path)
        .map_err(io_error(path))?
        .with_guessed_format()
        .map_err(io_error(path))?
        .into_dimensions()
        .map_err(image_error)?;
    Ok(())
}

/// Decodes one file into channel-major values in [−1, 1]: colour conversion, resize of the
/// shorter side to `size` (Catmull-Rom), then a center crop to `size × size`.
pub fn decode(path: &Path, config: &ImageFolderConfig) -> Result<Vec<f32>> {
    let image = ImageReader::open(path)
        .map_err(io_error(path))?
        .with_guessed_format()
        .map_err(io_error(path))?
        .decode()
        .map_err(|source| DataError::Image {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(to_values(
        &resize_and_crop(image, config.size),
        config.channels,
    ))
}

fn resize_and_crop(image: DynamicImage, size: usize) -> DynamicImage {
    let size = size as u32;
    let (w, h) = (image.width(), image.height());
    if (w, h) == (size, size) {
        return image;
    }
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size),
        ((h as f64 * scale).round() as u32).max(size),
    );
    let resized = image.resize_exact(nw, nh, FilterType::CatmullRom);
    resized.crop_imm((nw - size) / 2, (nh - size) / 2, size, size)
}

fn to_values(image: &DynamicImage, channels: Channels) -> Vec<f32> {
    let scale = |p: u8| p as f32 / 127.5 - 1.0;
    match channels {
        Channels::Gray => image.to_luma8().pixels().map(|p| scale(p.0[0])).collect(),
        Channels::Rgb => {
            let rgb = image.to_rgb8();
            let plane = (rgb.width() * rgb.height()) as usize;
            let mut values = vec![0f32; 3 * plane];
            for (i, p) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    values[c * plane + i] = scale(p.0[c]);
                }
            }
            values
        }
    }
}
