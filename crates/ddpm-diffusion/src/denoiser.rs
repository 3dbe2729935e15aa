//! What the diffusion process asks of a network.

use candle_core::Tensor;

/// A network that, given a noisy batch x_t and its timesteps, predicts the
/// [`Objective`](crate::Objective)'s target (ε by default).
///
/// **Timestep convention at this boundary:** `t` is a u32 tensor of shape (B,) holding the
/// 0-based index t − 1 of the paper's step t, as diffusers and the DDPM release feed their
/// networks, so weights trained there work here unchanged.
///
/// Any `Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>` is a `Denoiser`, so tests can
/// pass analytic oracles and applications can pass a closure around their model.
pub trait Denoiser {
    /// The prediction for `x_t` at 0-based timesteps `t`, of the same shape as `x_t`.
    fn predict(&self, x_t: &Tensor, t: &Tensor) -> candle_core::Result<Tensor>;
}

impl<F> Denoiser for F
where
    F: Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
{
    fn predict(&self, x_t: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        self(x_t, t)
    }
}

/// A class-conditional network, for classifier-free guidance: as [`Denoiser`], plus a u32
/// tensor of shape (B,) of class labels, where the model's null label means "no class".
pub trait ClassConditionalDenoiser {
    /// The prediction for `x_t` at 0-based timesteps `t` with class labels `y`.
    fn predict(&self, x_t: &Tensor, t: &Tensor, y: &Tensor) -> candle_core::Result<Tensor>;
}

impl<F> ClassConditionalDenoiser for F
where
    F: Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
{
    fn predict(&self, x_t: &Tensor, t: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        self(x_t, t, y)
    }
}
