//! The loss curve of a run, drawn from its `metrics.csv`.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::style::RGBColor;

use super::{save_line_chart, LineChart, Series};

/// Reads (step, loss) from a `metrics.csv` with the header
/// `step,epoch,loss,lr,grad_norm,images_per_s`.
pub fn read_losses(metrics: &Path) -> Result<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{}: no column {name}", metrics.display()))
    };
    let (step_col, loss_col) = (column("step")?, column("loss")?);
    let mut points = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let parse = |col: usize| -> Result<f64> {
            fields
                .get(col)
                .and_then(|s| s.parse::<f64>().ok())
                .with_context(|| format!("{} line {}: malformed row", metrics.display(), i + 2))
        };
        points.push((parse(step_col)?, parse(loss_col)?));
    }
    Ok(points)
}

/// The median of each point's loss and its neighbours', `half` rows either side (fewer at
/// the ends): centred on its step, so that it does not lag the curve as a trailing window
/// does, and robust to the first rows' losses, which are ten times the rest.
pub fn centered_median(points: &[(f64, f64)], half: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let mut window: Vec<f64> = points
                [i.saturating_sub(half)..(i + half + 1).min(points.len())]
                .iter()
                .map(|p| p.1)
                .collect();
            window.sort_by(f64::total_cmp);
            let mid = window.len() / 2;
            let median = if window.len() % 2 == 1 {
                window[mid]
            } else {
                0.5 * (window[mid - 1] + window[mid])
            };
            (points[i].0, median)
        })
        .collect()
}

/// Draws the logged losses and their centred running median (21 rows) into a PNG.
pub fn save_loss_curve(metrics: &Path, out: &Path, title: &str) -> Result<()> {
    let points = read_losses(metrics)?;
    if points.is_empty() {
        return Ok(());
    }
    let half = 10;
    let smoothed = centered_median(&points, half);
    let x_max = points.last().map_or(1.0, |p| p.0).max(1.0);
    let mut sorted: Vec<f64> = points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .collect();
    sorted.sort_by(f64::total_cmp);
    // Leave out the first rows' spike: the top of the axis is the 98th percentile.
    let y_max = sorted
        .get(((sorted.len() as f64) * 0.98) as usize)
        .or(sorted.last())
        .copied()
        .unwrap_or(1.0)
        * 1.1;
    save_line_chart(
        &LineChart {
            title,
            x_label: "step",
            y_label: "loss",
            x_range: 0.0..x_max,
            y_range: 0.0..y_max.max(1e-6),
            series: vec![
                Series {
                    label: "loss (logged steps)".into(),
                    points,
                    color: RGBColor(174, 199, 232),
                },
                Series {
                    label: format!("running median of {}", 2 * half + 1),
                    points: smoothed,
                    color: RGBColor(31, 119, 180),
                },
            ],
        },
        out,
        (800, 500),
    )
}

#[cfg(test)]
mod tests {
    use super::centered_median;

    #[test]
    fn the_running_median_is_centred_and_shrinks_at_the_ends() {
        let points: Vec<(f64, f64)> = [1.0, 2.0, 4.0, 8.0, 16.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as f64 * 25.0, v))
            .collect();
        let medians = centered_median(&points, 1);
        // By hand: median{1,2}, {1,2,4}, {2,4,8}, {4,8,16}, {8,16}.
        let expected = [1.5, 2.0, 4.0, 8.0, 12.0];
        for ((step, median), (i, want)) in medians.iter().zip(expected.iter().enumerate()) {
            assert_eq!(*step, i as f64 * 25.0);
            assert_eq!(*median, *want, "row {i}");
        }
    }
}
