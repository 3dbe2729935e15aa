//! The seeded random source of every draw: timesteps, noise, sampler noise.

use candle_core::{Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::Result;

/// A seeded, savable random source.
///
/// Draws are made on the host and uploaded, so the same seed gives the same numbers on
/// every device (CPU and CUDA samples agree up to arithmetic), and the state is a few
/// integers that a checkpoint can store ([`NoiseRng::state`], [`NoiseRng::from_state`]),
/// so a resumed training run draws exactly what an uninterrupted one would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseRng {
    rng: ChaCha8Rng,
}

/// The complete state of a [`NoiseRng`]: its key, stream and position in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseRngState {
    /// The 256-bit ChaCha key the generator was seeded with.
    pub key: [u8; 32],
    /// The ChaCha stream number.
    pub stream: u64,
    /// How many 32-bit words of the stream have been used.
    pub word_pos: u128,
}

impl NoiseRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Its complete state, to store in a checkpoint.
    pub fn state(&self) -> NoiseRngState {
        NoiseRngState {
            key: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// The generator in exactly the given state.
    pub fn from_state(state: NoiseRngState) -> Self {
        let mut rng = ChaCha8Rng::from_seed(state.key);
        rng.set_stream(state.stream);
        rng.set_word_pos(state.word_pos);
        Self { rng }
    }

    /// A tensor of independent standard normal f32 draws, z ~ N(0, I).
    pub fn randn(&mut self, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| self.rng.sample(StandardNormal))
            .collect();
        Ok(Tensor::from_vec(values, shape, device)?)
    }

    /// `n` timesteps drawn uniformly from the paper's 1..=T.
    pub fn timesteps(&mut self, n: usize, timesteps: usize) -> Vec<u32> {
        (0..n)
            .map(|_| self.rng.random_range(1..=timesteps as u32))
            .collect()
    }

    /// A uniform draw in [0, 1), for callers that need other randomness from the same stream
    /// (e.g. dropping class labels for classifier-free guidance).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_state_continues_the_same_stream() {
        let mut a = NoiseRng::new(7);
        let _ = a.randn(1000, &Device::Cpu).unwrap();
        let mut b = NoiseRng::from_state(a.state());
        let x = a.randn(17, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        let y = b.randn(17, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(x, y);
        let mut c = NoiseRng::new(8);
        let z = c.randn(17, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(x, z);
    }

    #[test]
    fn timesteps_cover_one_to_t_uniformly() {
        let mut rng = NoiseRng::new(0);
        let t = rng.timesteps(100_000, 10);
        let mut counts = [0usize; 11];
        for v in t {
            counts[v as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        // Each count is Binomial(1e5, 0.1): sd = 94.9; 5 sd = 474.
        for (t, &c) in counts.iter().enumerate().skip(1) {
            assert!((c as f64 - 10_000.0).abs() < 474.0, "t = {t}: {c}");
        }
    }
}
