//! The one error type of this crate.

/// Why a schedule could not be built. Every variant names the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// A schedule needs at least one diffusion step.
    #[error("the number of timesteps T must be at least 1, got 0")]
    ZeroTimesteps,

    /// A variance β (or a bound on it) must lie strictly between 0 and 1: β = 0 adds no
    /// noise and β ≥ 1 destroys the signal in one step (and makes 1/√α_t infinite).
    #[error(
        "{name} = {value} is outside the open interval (0, 1): a variance β must satisfy 0 < β < 1"
    )]
    BetaOutOfRange {
        /// Which parameter or step: `beta_start`, `max_beta`, `beta[t=17]`, ….
        name: String,
        /// The value given.
        value: f64,
    },

    /// The linear schedules grow β from `beta_start` to `beta_end`.
    #[error(
        "beta_start = {beta_start} exceeds beta_end = {beta_end}: the schedule must not decrease"
    )]
    DecreasingBetas {
        /// The first β.
        beta_start: f64,
        /// The last β.
        beta_end: f64,
    },

    /// The cosine schedule's offset s keeps β_1 away from 0; it must be positive.
    #[error("cosine offset s = {0} must be positive (Nichol & Dhariwal use 0.008)")]
    NonPositiveOffset(f64),

    /// The sigmoid schedule's parameters are out of range.
    #[error("sigmoid schedule: {0}")]
    InvalidSigmoid(String),

    /// A respaced schedule keeps between 1 and T of the T steps.
    #[error(
        "cannot respace a schedule of T = {timesteps} steps to {requested} steps: need 1 ≤ S ≤ T"
    )]
    InvalidRespacing {
        /// The number of steps asked for.
        requested: usize,
        /// The number of steps of the original schedule.
        timesteps: usize,
    },

    /// An explicit list of kept timesteps must be strictly increasing and lie in 1..=T.
    #[error("kept timesteps must be strictly increasing and within 1..={timesteps}; got {value} at position {position}")]
    InvalidKeptTimestep {
        /// Index into the given list.
        position: usize,
        /// The offending timestep.
        value: usize,
        /// The number of steps of the original schedule.
        timesteps: usize,
    },
}
