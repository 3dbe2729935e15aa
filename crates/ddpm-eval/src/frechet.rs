//! The Fréchet distance between Gaussians fitted to two feature sets (FID, Heusel et al.
//! 2017), with the matrix square root computed exactly: symmetric eigendecompositions by
//! cyclic Jacobi rotations in f64, not a truncated series.
//!
//! d² = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2·Tr √(√Σ₁ Σ₂ √Σ₁).
//! √Σ₁ Σ₂ √Σ₁ is symmetric positive semi-definite, so its square root is V·√Λ·Vᵀ from its
//! eigendecomposition (negative eigenvalues from rounding are clamped to 0), and the trace is
//! Σ √λᵢ.

use crate::{EvalError, Result};

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Dimension d.
    pub dim: usize,
    /// Number of vectors.
    pub count: usize,
    /// μ (d).
    pub mean: Vec<f64>,
    /// Σ (d × d, row-major), with the unbiased 1/(n − 1) normalisation.
    pub covariance: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `rows` (n × `dim`, row-major), n ≥ 2.
    pub fn from_rows(rows: &[f32], dim: usize) -> Result<Self> {
        if dim == 0 || !rows.len().is_multiple_of(dim) || rows.len() / dim < 2 {
            return Err(EvalError::InvalidOption {
                name: "features",
                reason: format!("{} values do not form at least 2 rows of {dim}", rows.len()),
            });
        }
        let n = rows.len() / dim;
        let mut mean = vec![0.0f64; dim];
        for row in rows.chunks(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        for m in &mut mean {
            *m /= n as f64;
        }
        let mut covariance = vec![0.0f64; dim * dim];
        let mut centered = vec![0.0f64; dim];
        for row in rows.chunks(dim) {
            for ((c, &v), m) in centered.iter_mut().zip(row).zip(&mean) {
                *c = f64::from(v) - m;
            }
            for i in 0..dim {
                let ci = centered[i];
                for j in i..dim {
                    covariance[i * dim + j] += ci * centered[j];
                }
            }
        }
        for i in 0..dim {
            for j in i..dim {
                let v = covariance[i * dim + j] / (n - 1) as f64;
                covariance[i * dim + j] = v;
                covariance[j * dim + i] = v;
            }
        }
        Ok(Self {
            dim,
            count: n,
            mean,
            covariance,
        })
    }
}

/// Eigenvalues and eigenvectors (columns of a row-major n × n matrix) of the symmetric
/// matrix `a`, by cyclic Jacobi rotations until the off-diagonal mass is below 1e-15 of the
/// total (or 100 sweeps).
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off <= 1e-30 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Golub & Van Loan, Algorithm 8.4.1).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// √A of a symmetric positive semi-definite A: V·√max(Λ, 0)·Vᵀ.
pub fn sqrt_psd(a: &[f64], n: usize) -> Vec<f64> {
    let (values, v) = symmetric_eigen(a, n);
    let roots: Vec<f64> = values.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| v[i * n + k] * roots[k] * v[j * n + k]).sum();
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

/// The squared Fréchet distance between the Gaussians of `a` and `b` (the FID when the
/// features are Inception's; here, the classifier's).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.dim != b.dim {
        return Err(EvalError::InvalidOption {
            name: "features",
            reason: format!("dimensions {} and {} differ", a.dim, b.dim),
        });
    }
    let n = a.dim;
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let trace = |m: &[f64]| (0..n).map(|i| m[i * n + i]).sum::<f64>();
    let root_a = sqrt_psd(&a.covariance, n);
    let mut inner = matmul(&matmul(&root_a, &b.covariance, n), &root_a, n);
    // Symmetrise against rounding before the eigendecomposition.
    for i in 0..n {
        for j in i + 1..n {
            let m = 0.5 * (inner[i * n + j] + inner[j * n + i]);
            inner[i * n + j] = m;
            inner[j * n + i] = m;
        }
    }
    let (values, _) = symmetric_eigen(&inner, n);
    let cross: f64 = values.iter().map(|&l| l.max(0.0).sqrt()).sum();
    Ok((mean_term + trace(&a.covariance) + trace(&b.covariance) - 2.0 * cross).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mean: Vec<f64>, covariance: Vec<f64>) -> FeatureStats {
        FeatureStats {
            dim: mean.len(),
            count: 100,
            mean,
            covariance,
        }
    }

    /// A random symmetric positive definite matrix Bᵀ·B + 0.1·I.
    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        let b: Vec<f64> = (0..n * n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f64 / 1000.0 - 1.0
            })
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[k * n + i] * b[k * n + j]).sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn square_root_squares_back() {
        for (n, seed) in [(1, 1), (5, 2), (32, 3)] {
            let a = spd(n, seed);
            let r = sqrt_psd(&a, n);
            let back = matmul(&r, &r, n);
            let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let err = back
                .iter()
                .zip(&a)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(err < 1e-10 * scale, "n = {n}: ‖√A·√A − A‖ = {err}");
        }
    }

    #[test]
    fn identical_distributions_are_at_zero() {
        let a = stats(vec![0.3, -1.0, 2.0, 0.0], spd(4, 7));
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-10);
    }

    #[test]
    fn shifted_means_give_the_squared_shift() {
        let cov = spd(6, 9);
        let a = stats(vec![0.0; 6], cov.clone());
        let b = stats(vec![1.0, -2.0, 0.5, 0.0, 0.0, 3.0], cov);
        let d = frechet_distance(&a, &b).unwrap();
        let expected = 1.0 + 4.0 + 0.25 + 9.0;
        assert!((d - expected).abs() < 1e-9, "{d} vs {expected}");
    }

    #[test]
    fn diagonal_covariances_have_the_closed_form() {
        // Σ (√aᵢ − √bᵢ)² for diagonal Σ₁ = diag(a), Σ₂ = diag(b), plus ‖Δμ‖².
        let (da, db) = ([4.0, 1.0, 0.25, 9.0], [1.0, 1.0, 1.0, 16.0]);
        let diag = |d: &[f64]| {
            let mut m = vec![0.0; 16];
            for i in 0..4 {
                m[i * 4 + i] = d[i];
            }
            m
        };
        let a = stats(vec![0.0, 1.0, 0.0, 0.0], diag(&da));
        let b = stats(vec![0.0, 0.0, 0.0, 2.0], diag(&db));
        let expected: f64 = da
            .iter()
            .zip(&db)
            .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
            .sum::<f64>()
            + 1.0
            + 4.0;
        let d = frechet_distance(&a, &b).unwrap();
        assert!((d - expected).abs() < 1e-12, "{d} vs {expected}");
    }

    #[test]
    fn statistics_of_rows() {
        let rows = [1.0f32, 2.0, 3.0, 6.0, 5.0, 10.0];
        let s = FeatureStats::from_rows(&rows, 2).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.mean, vec![3.0, 6.0]);
        // var(1,3,5) = 4, var(2,6,10) = 16, cov = 8 (unbiased).
        assert_eq!(s.covariance, vec![4.0, 8.0, 8.0, 16.0]);
        assert!(FeatureStats::from_rows(&rows, 4).is_err());
    }
}
