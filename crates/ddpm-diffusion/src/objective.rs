//! What the network predicts, and how the training loss weights timesteps.

/// The network's prediction target. All three parametrise the same reverse process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Objective {
    /// The noise ε (Ho et al. 2020; the paper's choice and the default).
    #[default]
    Epsilon,
    /// The clean data x_0.
    X0,
    /// The velocity v = √ᾱ_t·ε − √(1 − ᾱ_t)·x_0 (Salimans & Ho 2022).
    V,
}

/// Per-timestep weighting of the training loss.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum LossWeighting {
    /// Every timestep counts the same: L_simple of Ho et al. (the default).
    #[default]
    Uniform,
    /// Min-SNR-γ (Hang et al. 2023): the loss at t is weighted so that, expressed as an
    /// x_0-loss, its weight is min(SNR(t), γ). Per objective: ε → min(SNR, γ)/SNR,
    /// x_0 → min(SNR, γ), v → min(SNR, γ)/(SNR + 1).
    MinSnr {
        /// γ; the paper recommends 5.
        gamma: f64,
    },
}

impl LossWeighting {
    /// The weight of the loss at a timestep with signal-to-noise ratio `snr` = ᾱ/(1 − ᾱ).
    pub fn weight(self, objective: Objective, snr: f64) -> f64 {
        match self {
            Self::Uniform => 1.0,
            Self::MinSnr { gamma } => {
                let clipped = snr.min(gamma);
                match objective {
                    Objective::Epsilon => clipped / snr,
                    Objective::X0 => clipped,
                    Objective::V => clipped / (snr + 1.0),
                }
            }
        }
    }
}
