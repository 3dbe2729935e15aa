//! Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union
//! of balls around its vectors, each with the radius of its k-th nearest neighbour in the
//! same set; precision is the fraction of generated vectors inside the real manifold, recall
//! the fraction of real vectors inside the generated one.

use rayon::prelude::*;

use crate::{EvalError, Result};

fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Squared radius of each row's ball: the squared distance to its k-th nearest other row.
fn radii(rows: &[&[f32]], k: usize) -> Vec<f32> {
    rows.par_iter()
        .enumerate()
        .map(|(i, a)| {
            let mut d: Vec<f32> = rows
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, b)| squared_distance(a, b))
                .collect();
            let kth = k.min(d.len()) - 1;
            *d.select_nth_unstable_by(kth, f32::total_cmp).1
        })
        .collect()
}

/// Fraction of `queries` inside the union of balls (`centres`, squared `radii`).
fn coverage(queries: &[&[f32]], centres: &[&[f32]], radii: &[f32]) -> f64 {
    let inside = queries
        .par_iter()
        .filter(|q| {
            centres
                .iter()
                .zip(radii)
                .any(|(c, &r)| squared_distance(q, c) <= r)
        })
        .count();
    inside as f64 / queries.len() as f64
}

/// (precision, recall) of `generated` against `real` (rows of `dim`) with neighbourhood
/// size `k` (3 in the paper).
pub fn precision_recall(
    real: &[f32],
    generated: &[f32],
    dim: usize,
    k: usize,
) -> Result<(f64, f64)> {
    let real: Vec<&[f32]> = real.chunks_exact(dim).collect();
    let generated: Vec<&[f32]> = generated.chunks_exact(dim).collect();
    if k == 0 || real.len() <= k || generated.len() <= k {
        return Err(EvalError::InvalidOption {
            name: "precision/recall",
            reason: format!(
                "k = {k} needs more than k vectors per set, got {} and {}",
                real.len(),
                generated.len()
            ),
        });
    }
    let real_radii = radii(&real, k);
    let generated_radii = radii(&generated, k);
    Ok((
        coverage(&generated, &real, &real_radii),
        coverage(&real, &generated, &generated_radii),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(n: usize, offset: f32) -> Vec<f32> {
        (0..n).flat_map(|i| [i as f32 + offset, 0.0]).collect()
    }

    #[test]
    fn identical_sets_are_fully_covered() {
        let a = grid(20, 0.0);
        assert_eq!(precision_recall(&a, &a, 2, 3).unwrap(), (1.0, 1.0));
    }

    #[test]
    fn far_sets_cover_nothing() {
        let a = grid(20, 0.0);
        let b = grid(20, 1000.0);
        assert_eq!(precision_recall(&a, &b, 2, 3).unwrap(), (0.0, 0.0));
    }

    #[test]
    fn a_subset_has_full_precision_and_partial_recall() {
        // Real points 0..40 on a line (radius 3 for k = 3 in the middle); generated points
        // 0..10 only: all of them are real-like, but they cover only the real points up to
        // about 10 + their own radius 3.
        let real = grid(40, 0.0);
        let generated = grid(10, 0.0);
        let (p, r) = precision_recall(&real, &generated, 2, 3).unwrap();
        assert_eq!(p, 1.0);
        assert!((r - 13.0 / 40.0).abs() < 1e-12, "recall {r}");
    }
}
