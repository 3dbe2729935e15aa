//! Fashion-MNIST and MNIST: the four official IDX files, located, checked and loaded.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use md5::{Digest, Md5};

use crate::download::download_verified;
use crate::error::{io_error, DataError, Result};
use crate::idx::{find_file, read_images, read_labels};

/// A dataset distributed as the four MNIST-style IDX files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxDataset {
    /// Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT license): 70,000 28×28 grayscale
    /// images of ten kinds of clothing.
    FashionMnist,
    /// MNIST (LeCun et al. 1998): 70,000 28×28 handwritten digits.
    Mnist,
}

/// Which half of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training examples.
    Train,
    /// The 10,000 test examples.
    Test,
}

/// The official file names of each split: (images, labels).
const FILES: [(Split, &str, &str); 2] = [
    (
        Split::Train,
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ),
    (
        Split::Test,
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ),
];

impl IdxDataset {
    /// The directory name used in caches and data folders: `fashion-mnist` or `mnist`.
    pub fn name(self) -> &'static str {
        match self {
            Self::FashionMnist => "fashion-mnist",
            Self::Mnist => "mnist",
        }
    }

    /// The names of the ten classes, by label.
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            Self::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
            Self::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        }
    }

    /// The official (gzipped) file names of a split: (images, labels).
    pub fn file_names(self, split: Split) -> (&'static str, &'static str) {
        let (_, images, labels) = FILES
            .iter()
            .find(|(s, _, _)| *s == split)
            .copied()
            .unwrap_or(FILES[0]);
        (images, labels)
    }

    /// The md5 of an official `.gz` file, by file name.
    pub fn official_md5(self, file_name: &str) -> Option<&'static str> {
        let table: [(&str, &str); 4] = match self {
            Self::FashionMnist => [
                (
                    "train-images-idx3-ubyte.gz",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    "25c81989df183df01b3e8a0aad5dffbe",
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    "bef4ecab320f06d8554ea6380940ec79",
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            ],
            Self::Mnist => [
                (
                    "train-images-idx3-ubyte.gz",
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    "9fb629c4189551a2d022fa330f9573f3",
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            ],
        };
        table
            .iter()
            .find(|(name, _)| *name == file_name)
            .map(|(_, md5)| *md5)
    }

    /// The directories searched for the files, in order: `explicit` (a `--data-dir`), then
    /// `$DDPM_DATA_DIR`, then the cache `~/.cache/ddpm/<name>` (`$XDG_CACHE_HOME` is
    /// honoured). A directory matches if it holds the files, or if its `<name>`
    /// subdirectory does.
    pub fn search_dirs(self, explicit: Option<&Path>) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut push_with_sub = |dir: PathBuf| {
            dirs.push(dir.join(self.name()));
            dirs.push(dir);
        };
        if let Some(dir) = explicit {
            push_with_sub(dir.to_path_buf());
        }
        if let Some(dir) = std::env::var_os("DDPM_DATA_DIR") {
            push_with_sub(PathBuf::from(dir));
        }
        if let Some(cache) = cache_dir() {
            dirs.push(cache.join(self.name()));
        }
        dirs
    }

    /// The first of `dirs` holding the images and labels files of `split` (raw or gz).
    pub fn locate_in(self, dirs: &[PathBuf], split: Split) -> Result<PathBuf> {
        let (images, labels) = self.file_names(split);
        dirs.iter()
            .find(|dir| find_file(dir, images).is_some() && find_file(dir, labels).is_some())
            .cloned()
            .ok_or_else(|| DataError::NotFound {
                dataset: self.name(),
                searched: dirs.to_vec(),
            })
    }

    /// The official download locations (base URLs of the four `.gz` files), tried in order.
    pub fn mirrors(self) -> &'static [&'static str] {
        match self {
            Self::FashionMnist => &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
            Self::Mnist => &["https://ossci-datasets.s3.amazonaws.com/mnist/"],
        }
    }

    /// Downloads the four official files from `base_url` into `dir`, each verified against
    /// its official md5 before it is moved into place. Files already there and valid are
    /// kept.
    pub fn download(self, base_url: &str, dir: &Path) -> Result<()> {
        for split in [Split::Train, Split::Test] {
            let (images, labels) = self.file_names(split);
            for name in [images, labels] {
                let dest = dir.join(name);
                if dest.is_file() && self.verify_md5(&dest).is_ok() {
                    continue;
                }
                let md5 = self.official_md5(name).unwrap_or_default();
                let url = format!("{}/{name}", base_url.trim_end_matches('/'));
                download_verified(&url, &dest, md5)?;
            }
        }
        Ok(())
    }

    /// The directory holding `split`: the first of [`search_dirs`](Self::search_dirs)
    /// followed by `extra_dirs`; if none has it and `download` is set, the files are fetched
    /// into the cache from `$DDPM_DATA_MIRROR` or the official mirrors.
    pub fn locate_or_download(
        self,
        explicit: Option<&Path>,
        extra_dirs: &[PathBuf],
        split: Split,
        download: bool,
    ) -> Result<PathBuf> {
        let mut dirs = self.search_dirs(explicit);
        dirs.extend_from_slice(extra_dirs);
        let not_found = match self.locate_in(&dirs, split) {
            Ok(dir) => return Ok(dir),
            Err(err) => err,
        };
        let Some(cache) = cache_dir().filter(|_| download) else {
            return Err(not_found);
        };
        let dest = cache.join(self.name());
        let mirrors: Vec<String> = match std::env::var("DDPM_DATA_MIRROR") {
            Ok(url) if !url.is_empty() => vec![url],
            _ => self.mirrors().iter().map(|s| s.to_string()).collect(),
        };
        let mut last_error = not_found;
        for mirror in &mirrors {
            match self.download(mirror, &dest) {
                Ok(()) => return Ok(dest),
                Err(err) => {
                    tracing::warn!(mirror, error = %err, "download failed");
                    last_error = err;
                }
            }
        }
        Err(last_error)
    }

    /// Loads `split` from `dir`. With `verify`, official `.gz` files are checked against
    /// their md5 (uncompressed files, which have no official checksum, are not).
    pub fn load(self, dir: &Path, split: Split, verify: bool) -> Result<LabeledImages> {
        let (images_name, labels_name) = self.file_names(split);
        let missing = || DataError::NotFound {
            dataset: self.name(),
            searched: vec![dir.to_path_buf()],
        };
        let images_path = find_file(dir, images_name).ok_or_else(missing)?;
        let labels_path = find_file(dir, labels_name).ok_or_else(missing)?;
        if verify {
            for path in [&images_path, &labels_path] {
                self.verify_md5(path)?;
            }
        }
        let images = read_images(&images_path)?;
        let labels = read_labels(&labels_path)?;
        if images.count != labels.len() {
            return Err(DataError::CountMismatch {
                images_path,
                images: images.count,
                labels_path,
                labels: labels.len(),
            });
        }
        let classes = self.class_names().len();
        if let Some((index, &value)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(DataError::BadLabel {
                path: labels_path,
                index,
                value,
                classes,
            });
        }
        tracing::debug!(dataset = self.name(), ?split, count = images.count, dir = %dir.display(), "loaded");
        Ok(LabeledImages {
            height: images.rows,
            width: images.cols,
            pixels: images.pixels,
            labels,
            class_names: self.class_names().iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Checks an official `.gz` file's md5; other files pass.
    pub fn verify_md5(self, path: &Path) -> Result<()> {
        let Some(expected) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| self.official_md5(n))
        else {
            return Ok(());
        };
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let found = format!("{:x}", Md5::digest(&bytes));
        if found != expected {
            return Err(DataError::Checksum {
                path: path.to_path_buf(),
                expected: expected.to_string(),
                found,
            });
        }
        Ok(())
    }
}

/// `$XDG_CACHE_HOME/ddpm` or `~/.cache/ddpm`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("ddpm"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("ddpm"))
}

/// Labelled grayscale images held in memory as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledImages {
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// All images, row-major, 0..=255, `len() · height · width` bytes.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Class names by label.
    pub class_names: Vec<String>,
}

impl LabeledImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let size = self.height * self.width;
        &self.pixels[index * size..(index + 1) * size]
    }

    /// Images `indices` as an f32 tensor of shape (N, 1, H, W) scaled to [−1, 1]
    /// (x = p/127.5 − 1 for a byte p).
    pub fn to_tensor(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let size = self.height * self.width;
        let mut values = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            values.extend(self.image(i).iter().map(|&p| p as f32 / 127.5 - 1.0));
        }
        Ok(Tensor::from_vec(
            values,
            (indices.len(), 1, self.height, self.width),
            device,
        )?)
    }
}
