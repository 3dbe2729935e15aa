//! The one error type of this crate.

/// Why an evaluation step failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The data failed.
    #[error(transparent)]
    Data(#[from] ddpm_data::DataError),

    /// The optimizer failed.
    #[error(transparent)]
    Train(#[from] ddpm_train::TrainError),

    /// A weights file is missing, unreadable or does not fit the model.
    #[error("{}: {reason}", path.display())]
    Weights {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// An option is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// Why, with the value.
        reason: String,
    },
}

/// `Result` with [`EvalError`].
pub type Result<T> = std::result::Result<T, EvalError>;
