//! The one error type of this crate.

/// What went wrong while noising, computing a loss or sampling.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// A tensor operation failed (shape, dtype, device, or the model itself).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The schedule could not be built or respaced.
    #[error(transparent)]
    Schedule(#[from] ddpm_schedule::ScheduleError),

    /// A timestep tensor held a value outside the paper's 1..=T.
    #[error("timestep {value} is outside 1..={timesteps} (timesteps are the paper's 1-based t)")]
    TimestepOutOfRange {
        /// The offending value.
        value: u32,
        /// T.
        timesteps: usize,
    },

    /// An option is out of its range.
    #[error("invalid {name}: {reason}")]
    InvalidOption {
        /// The option, e.g. `eta` or `guidance weight`.
        name: &'static str,
        /// Why it is invalid, with the value.
        reason: String,
    },

    /// Shapes that must agree do not.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// `Result` with [`DiffusionError`].
pub type Result<T> = std::result::Result<T, DiffusionError>;
