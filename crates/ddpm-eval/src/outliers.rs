//! Synthetic "not a garment" images: the extra class the classifier learns, so that its
//! feature space puts noise and other non-images away from every real class. Without it, a
//! classifier trained on clean images alone maps uniform noise into a dense region of real
//! features (precision 0.77 for noise, measured), and precision stops detecting noise.

use candle_core::{Device, Tensor};
use ddpm_diffusion::NoiseRng;

use crate::Result;

/// Side of the coarse grid that smooth noise is interpolated from.
const SMOOTH_GRID: usize = 7;

/// A standard normal draw (Box–Muller on two uniforms).
fn normal(rng: &mut NoiseRng) -> f64 {
    let u1 = rng.uniform().max(f64::MIN_POSITIVE);
    let u2 = rng.uniform();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// One image of kind `kind % 4`, `side`² pixels in [−1, 1]:
/// 0. uniform noise, U(−1, 1) per pixel;
/// 1. Gaussian noise N(0, σ²), σ ~ U(0.2, 1), clipped;
/// 2. smooth noise: N(0, 1) on a 7×7 grid, bilinearly interpolated, clipped;
/// 3. a constant c ~ U(−1, 1) plus N(0, 0.05²), clipped.
fn outlier(kind: usize, side: usize, rng: &mut NoiseRng) -> Vec<f32> {
    let clip = |v: f64| v.clamp(-1.0, 1.0) as f32;
    match kind % 4 {
        0 => (0..side * side)
            .map(|_| (2.0 * rng.uniform() - 1.0) as f32)
            .collect(),
        1 => {
            let sigma = 0.2 + 0.8 * rng.uniform();
            (0..side * side)
                .map(|_| clip(sigma * normal(rng)))
                .collect()
        }
        2 => {
            let grid: Vec<f64> = (0..SMOOTH_GRID * SMOOTH_GRID)
                .map(|_| normal(rng))
                .collect();
            let at = |i: usize| (i as f64 + 0.5) * SMOOTH_GRID as f64 / side as f64 - 0.5;
            let mut pixels = Vec::with_capacity(side * side);
            for y in 0..side {
                for x in 0..side {
                    let (gy, gx) = (at(y).max(0.0), at(x).max(0.0));
                    let (y0, x0) = (gy.floor() as usize, gx.floor() as usize);
                    let (y1, x1) = ((y0 + 1).min(SMOOTH_GRID - 1), (x0 + 1).min(SMOOTH_GRID - 1));
                    let (fy, fx) = (gy - y0 as f64, gx - x0 as f64);
                    let g = |r: usize, c: usize| grid[r * SMOOTH_GRID + c];
                    let top = g(y0, x0) * (1.0 - fx) + g(y0, x1) * fx;
                    let bottom = g(y1, x0) * (1.0 - fx) + g(y1, x1) * fx;
                    pixels.push(clip(top * (1.0 - fy) + bottom * fy));
                }
            }
            pixels
        }
        _ => {
            let c = 2.0 * rng.uniform() - 1.0;
            (0..side * side)
                .map(|_| clip(c + 0.05 * normal(rng)))
                .collect()
        }
    }
}

/// `n` synthetic outlier images (n, 1, side, side) in [−1, 1], four kinds in turn: uniform
/// noise, Gaussian noise of random σ, smooth noise (a 7×7 grid interpolated), and a
/// constant plus a little noise.
pub fn synthetic_outliers(
    n: usize,
    side: usize,
    rng: &mut NoiseRng,
    device: &Device,
) -> Result<Tensor> {
    let mut pixels = Vec::with_capacity(n * side * side);
    for i in 0..n {
        pixels.extend(outlier(i, side, rng));
    }
    Ok(Tensor::from_vec(pixels, (n, 1, side, side), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outliers_are_in_range_and_each_kind_has_its_statistics() {
        let mut rng = NoiseRng::new(4);
        let n = 400;
        let images = synthetic_outliers(n, 28, &mut rng, &Device::Cpu).unwrap();
        assert_eq!(images.dims(), &[n, 1, 28, 28]);
        let v = images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|p| (-1.0..=1.0).contains(p)));
        let per = 28 * 28;
        let mean_of = |kind: usize, f: &dyn Fn(&[f32]) -> f64| -> f64 {
            let imgs: Vec<f64> = (kind..n)
                .step_by(4)
                .map(|i| f(&v[i * per..(i + 1) * per]))
                .collect();
            imgs.iter().sum::<f64>() / imgs.len() as f64
        };
        let variance = |x: &[f32]| {
            let m = x.iter().map(|&p| p as f64).sum::<f64>() / x.len() as f64;
            x.iter().map(|&p| (p as f64 - m).powi(2)).sum::<f64>() / x.len() as f64
        };
        // Neighbouring pixels: independent for uniform noise, strongly correlated when smooth.
        let neighbour_diff = |x: &[f32]| {
            x.windows(2)
                .map(|w| ((w[1] - w[0]) as f64).powi(2))
                .sum::<f64>()
                / (x.len() - 1) as f64
        };
        // Uniform on [−1, 1]: variance 1/3 (±4% over 100 images of 784 pixels).
        assert!((mean_of(0, &variance) - 1.0 / 3.0).abs() < 0.015);
        // Constant images: only the faint noise, variance ≈ 0.05² (a little less after clipping).
        assert!(mean_of(3, &variance) < 0.003);
        // Smooth noise: neighbours differ far less than independent pixels of the same spread.
        assert!(mean_of(2, &neighbour_diff) < 0.2 * 2.0 * mean_of(2, &variance));
        assert!((mean_of(0, &neighbour_diff) - 2.0 / 3.0).abs() < 0.03);
    }
}
