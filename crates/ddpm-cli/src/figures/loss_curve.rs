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

/// Draws the logged losses and their running mean (window of 20 rows) into a PNG.
pub fn save_loss_curve(metrics: &Path, out: &Path, title: &str) -> Result<()> {
    let points = read_losses(metrics)?;
    if points.is_empty() {
        return Ok(());
    }
    let window = 20;
    let smoothed: Vec<(f64, f64)> = (0..points.len())
        .map(|i| {
            let from = i.saturating_sub(window - 1);
            let slice = &points[from..=i];
            let mean = slice.iter().map(|p| p.1).sum::<f64>() / slice.len() as f64;
            (points[i].0, mean)
        })
        .collect();
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
                    label: format!("running mean of {window}"),
                    points: smoothed,
                    color: RGBColor(31, 119, 180),
                },
            ],
        },
        out,
        (800, 500),
    )
}
