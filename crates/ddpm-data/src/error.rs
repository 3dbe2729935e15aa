//! The one error type of this crate. Every variant names the file it is about.

use std::path::PathBuf;

/// Why data could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The file does not start with the IDX magic number expected for its contents.
    #[error("{}: not an IDX {what} file: magic number 0x{found:08x}, expected 0x{expected:08x}", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// "images" or "labels".
        what: &'static str,
        /// The first four bytes, big-endian.
        found: u32,
        /// The magic number expected.
        expected: u32,
    },

    /// The file ends before the data its header announces.
    #[error("{}: truncated: the header announces {expected} bytes of data, the file holds {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes announced by the header.
        expected: usize,
        /// Bytes present.
        found: usize,
    },

    /// The file looks gzipped but does not decompress (truncated or damaged).
    #[error("{}: corrupt gzip data: {source}", path.display())]
    CorruptGzip {
        /// The file.
        path: PathBuf,
        /// The decompressor's error.
        source: std::io::Error,
    },

    /// The file's dimensions are not what the dataset needs.
    #[error("{}: {reason}", path.display())]
    BadDimensions {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the values.
        reason: String,
    },

    /// Images and labels files disagree on the number of examples.
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// Its number of images.
        images: usize,
        /// The labels file.
        labels_path: PathBuf,
        /// Its number of labels.
        labels: usize,
    },

    /// A label is outside the dataset's classes.
    #[error("{}: label {value} at index {index} is outside 0..{classes}", path.display())]
    BadLabel {
        /// The labels file.
        path: PathBuf,
        /// The example.
        index: usize,
        /// The label found.
        value: u8,
        /// The number of classes.
        classes: usize,
    },

    /// An official file's checksum does not match: a corrupt or partial download.
    #[error("{}: md5 {found} does not match the official {expected}; the file is corrupt or not the official one (delete it to re-download, or skip verification)", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The official md5.
        expected: String,
        /// The md5 of the file.
        found: String,
    },

    /// The dataset was not found in any searched place.
    #[error("{dataset} not found; looked in: {}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// Which dataset.
        dataset: &'static str,
        /// Every directory searched, in order.
        searched: Vec<PathBuf>,
    },

    /// A download failed (connection, HTTP status, or a short body).
    #[error("downloading {url}: {reason}")]
    Download {
        /// What was being fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },

    /// An image could not be decoded or encoded.
    #[error("{}: {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An argument is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Why, with the value.
        reason: String,
    },
}

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

/// Wraps an I/O error with its path.
pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |source| DataError::Io { path, source }
}
