//! The one error type of this crate.

/// Why a training operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A checkpoint could not be written or read, or is inconsistent.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The model failed.
    #[error(transparent)]
    Model(#[from] ddpm_unet::UNetError),

    /// The diffusion process failed.
    #[error(transparent)]
    Diffusion(#[from] ddpm_diffusion::DiffusionError),

    /// The data failed.
    #[error(transparent)]
    Data(#[from] ddpm_data::DataError),

    /// The loss became NaN or infinite.
    #[error("the loss is {loss} at step {step}; stopping (the last good checkpoint is kept)")]
    NonFiniteLoss {
        /// The step.
        step: u64,
        /// The loss.
        loss: f32,
    },

    /// A file of the run could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },

    /// The caller's per-step hook failed (writing a sample grid, say).
    #[error("after step {step}: {source}")]
    Hook {
        /// The step just taken.
        step: u64,
        /// The hook's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A hyper-parameter is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// Why, with the value.
        reason: String,
    },
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
