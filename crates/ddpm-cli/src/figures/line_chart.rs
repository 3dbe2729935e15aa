//! A line chart with a title, labelled axes and a legend.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::font::{ensure_registered, FAMILY};

/// One line of a chart.
pub struct Series {
    /// Legend entry.
    pub label: String,
    /// (x, y) points, in order.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub color: RGBColor,
}

/// What to draw.
pub struct LineChart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Label of the horizontal axis.
    pub x_label: &'a str,
    /// Label of the vertical axis.
    pub y_label: &'a str,
    /// Horizontal range.
    pub x_range: std::ops::Range<f64>,
    /// Vertical range.
    pub y_range: std::ops::Range<f64>,
    /// The lines.
    pub series: Vec<Series>,
}

/// Draws `chart` into a PNG of `size` pixels at `path`.
pub fn save_line_chart(chart: &LineChart, path: &Path, size: (u32, u32)) -> Result<()> {
    ensure_registered();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE)?;
        let mut ctx = ChartBuilder::on(&root)
            .caption(chart.title, (FAMILY, 26))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(chart.x_range.clone(), chart.y_range.clone())?;
        ctx.configure_mesh()
            .x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .axis_desc_style((FAMILY, 20))
            .label_style((FAMILY, 16))
            .x_label_formatter(&|x| axis_number(*x))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        for series in &chart.series {
            let color = series.color;
            ctx.draw_series(LineSeries::new(
                series.points.iter().copied(),
                color.stroke_width(3),
            ))?
            .label(series.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        }
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 18))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

/// An axis label to 6 decimals without trailing zeros: "500", not "500.0"; "0.3", not
/// "0.30000000000000004".
fn axis_number(x: f64) -> String {
    let text = format!("{x:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::axis_number;

    #[test]
    fn axis_labels_drop_needless_decimals() {
        assert_eq!(axis_number(500.0), "500");
        assert_eq!(axis_number(0.1 + 0.2), "0.3");
        assert_eq!(axis_number(0.25), "0.25");
        assert_eq!(axis_number(0.0), "0");
        assert_eq!(axis_number(-1e-9), "0");
        assert_eq!(axis_number(1e-4), "0.0001");
    }
}
