//! The one error type of this crate.

/// Why a U-Net could not be built, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum UNetError {
    /// A tensor operation failed, or a weight is missing or misshapen.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The configuration is invalid or unsupported.
    #[error("invalid U-Net configuration: {0}")]
    Config(String),

    /// The input's spatial size does not fit the number of levels.
    #[error("input of {height}×{width} pixels does not fit a U-Net with {levels} levels: both sides must be divisible by 2^(levels−1) = {factor}")]
    InputSize {
        /// Input height.
        height: usize,
        /// Input width.
        width: usize,
        /// Levels of the network.
        levels: usize,
        /// 2^(levels − 1).
        factor: usize,
    },

    /// A model directory or file could not be read or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with [`UNetError`].
pub type Result<T> = std::result::Result<T, UNetError>;
