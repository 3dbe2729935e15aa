//! A grid of grayscale images with a title, row labels and column labels.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::font::{ensure_registered, FAMILY};

/// What to draw: `cells[row][col]` is an image of `height × width` intensities in [0, 1]
/// (values outside are clipped).
pub struct LabelledGrid<'a> {
    /// Title above the grid.
    pub title: &'a str,
    /// One label left of each row.
    pub row_labels: Vec<String>,
    /// One label above each column.
    pub col_labels: Vec<String>,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Row-major intensities per cell.
    pub cells: Vec<Vec<Vec<f32>>>,
    /// Each image pixel becomes `scale × scale` figure pixels.
    pub scale: usize,
}

const TITLE_H: i32 = 50;
const HEADER_H: i32 = 30;
const LABEL_W: i32 = 110;
const GAP: i32 = 6;
const MARGIN: i32 = 12;

/// Draws `grid` into a PNG at `path`.
pub fn save_labelled_grid(grid: &LabelledGrid, path: &Path) -> Result<()> {
    ensure!(
        grid.cells.len() == grid.row_labels.len(),
        "one label per row"
    );
    ensure!(
        grid.cells
            .iter()
            .all(|row| row.len() == grid.col_labels.len()),
        "one label per column"
    );
    ensure!(
        grid.cells
            .iter()
            .flatten()
            .all(|c| c.len() == grid.height * grid.width),
        "every cell must hold height × width values"
    );
    ensure_registered();
    let (cell_w, cell_h) = (
        (grid.width * grid.scale) as i32,
        (grid.height * grid.scale) as i32,
    );
    let cols = grid.col_labels.len() as i32;
    let rows = grid.row_labels.len() as i32;
    let width = MARGIN * 2 + LABEL_W + cols * cell_w + (cols - 1) * GAP;
    let height = TITLE_H + HEADER_H + rows * cell_h + (rows - 1) * GAP + MARGIN;

    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let centered = |size| {
            TextStyle::from((FAMILY, size).into_font())
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center))
        };
        root.draw_text(grid.title, &centered(22), (width / 2, TITLE_H / 2))?;
        let left = MARGIN + LABEL_W;
        for (c, label) in grid.col_labels.iter().enumerate() {
            let x = left + c as i32 * (cell_w + GAP) + cell_w / 2;
            root.draw_text(label, &centered(16), (x, TITLE_H + HEADER_H / 2))?;
        }
        for (r, (label, row)) in grid.row_labels.iter().zip(&grid.cells).enumerate() {
            let top = TITLE_H + HEADER_H + r as i32 * (cell_h + GAP);
            root.draw_text(
                label,
                &centered(18),
                (MARGIN + LABEL_W / 2, top + cell_h / 2),
            )?;
            for (c, cell) in row.iter().enumerate() {
                let x0 = left + c as i32 * (cell_w + GAP);
                for (i, &v) in cell.iter().enumerate() {
                    let gray = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    let (py, px) = ((i / grid.width) as i32, (i % grid.width) as i32);
                    let corner = (x0 + px * grid.scale as i32, top + py * grid.scale as i32);
                    let opposite = (corner.0 + grid.scale as i32, corner.1 + grid.scale as i32);
                    root.draw(&Rectangle::new(
                        [corner, opposite],
                        RGBColor(gray, gray, gray).filled(),
                    ))?;
                }
            }
        }
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}
