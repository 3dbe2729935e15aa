//! Kernel Inception Distance (Bińkowski et al. 2018) in any feature space: the unbiased
//! estimate of MMD² with the cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³, averaged over
//! random subsets, as in the reference implementation.

use rayon::prelude::*;

use crate::{EvalError, Result};

/// k(x, y) = (xᵀy/d + 1)³.
fn kernel(x: &[f32], y: &[f32]) -> f64 {
    let dot: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    (dot / x.len() as f64 + 1.0).powi(3)
}

/// Unbiased MMD² between sets `x` and `y` (rows of `dim`):
/// 1/(m(m−1))·Σ_{i≠j} k(xᵢ, xⱼ) + 1/(n(n−1))·Σ_{i≠j} k(yᵢ, yⱼ) − 2/(mn)·Σ_{i,j} k(xᵢ, yⱼ).
pub fn mmd2_unbiased(x: &[&[f32]], y: &[&[f32]]) -> Result<f64> {
    let (m, n) = (x.len(), y.len());
    if m < 2 || n < 2 {
        return Err(EvalError::InvalidOption {
            name: "KID",
            reason: format!("needs at least 2 vectors per set, got {m} and {n}"),
        });
    }
    let within = |s: &[&[f32]]| -> f64 {
        let mut sum = 0.0;
        for i in 0..s.len() {
            for j in i + 1..s.len() {
                sum += 2.0 * kernel(s[i], s[j]);
            }
        }
        sum / (s.len() * (s.len() - 1)) as f64
    };
    let mut cross = 0.0;
    for a in x {
        for b in y {
            cross += kernel(a, b);
        }
    }
    Ok(within(x) + within(y) - 2.0 * cross / (m * n) as f64)
}

/// KID: the mean and standard deviation of [`mmd2_unbiased`] over `subsets` random subsets
/// of `subset_size` rows of each set (rows of `dim`; each subset drawn without replacement,
/// seeded), as in Bińkowski et al.'s reference code (100 subsets of 1000).
pub fn kernel_inception_distance(
    x: &[f32],
    y: &[f32],
    dim: usize,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let xs: Vec<&[f32]> = x.chunks_exact(dim).collect();
    let ys: Vec<&[f32]> = y.chunks_exact(dim).collect();
    let size = subset_size.min(xs.len()).min(ys.len());
    if subsets == 0 || size < 2 {
        return Err(EvalError::InvalidOption {
            name: "KID",
            reason: format!(
                "{subsets} subsets of {size} (from {} and {} vectors)",
                xs.len(),
                ys.len()
            ),
        });
    }
    // Subset s draws from its own generator (seeded by `seed` and s), so that subsets run
    // in parallel and the result does not depend on the thread count.
    let pick = |all: &[&[f32]], stream: u64| -> Vec<usize> {
        let mut state = (seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // A partial Fisher–Yates shuffle: the first `size` of a random permutation.
        let mut idx: Vec<usize> = (0..all.len()).collect();
        for i in 0..size {
            let j = i + (next() % (all.len() - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(size);
        idx
    };
    let values: Vec<f64> = (0..subsets as u64)
        .into_par_iter()
        .map(|s| {
            let a: Vec<&[f32]> = pick(&xs, 2 * s).into_iter().map(|i| xs[i]).collect();
            let b: Vec<&[f32]> = pick(&ys, 2 * s + 1).into_iter().map(|i| ys[i]).collect();
            mmd2_unbiased(&a, &b)
        })
        .collect::<Result<_>>()?;
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    Ok((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_by_two_by_hand() {
        // d = 1: k(x, y) = (xy + 1)³.
        let x: [&[f32]; 2] = [&[0.0], &[1.0]];
        let y: [&[f32]; 2] = [&[1.0], &[2.0]];
        // within x: k(0,1) = 1; within y: k(1,2) = 27; cross: k(0,1)=1, k(0,2)=1, k(1,1)=8,
        // k(1,2)=27 → 37. MMD² = 1 + 27 − 2·37/4 = 9.5.
        let v = mmd2_unbiased(&x, &y).unwrap();
        assert!((v - 9.5).abs() < 1e-12, "{v}");
    }

    fn gaussian(n: usize, dim: usize, shift: f32, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut u = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n * dim)
            .map(|_| {
                let g = (-2.0 * u().ln()).sqrt() * (2.0 * std::f64::consts::PI * u()).cos();
                g as f32 + shift
            })
            .collect()
    }

    #[test]
    fn same_law_is_near_zero_and_a_shift_is_not() {
        let dim = 8;
        let a = gaussian(400, dim, 0.0, 1);
        let b = gaussian(400, dim, 0.0, 2);
        let c = gaussian(400, dim, 1.0, 3);
        let (same, same_sd) = kernel_inception_distance(&a, &b, dim, 10, 200, 0).unwrap();
        let (shifted, _) = kernel_inception_distance(&a, &c, dim, 10, 200, 0).unwrap();
        // Unbiased: centred on 0 for one law, within a few standard deviations.
        assert!(same.abs() < 4.0 * same_sd.max(1e-3), "{same} ± {same_sd}");
        assert!(shifted > 50.0 * same.abs().max(1e-3), "{shifted} vs {same}");
    }
}
