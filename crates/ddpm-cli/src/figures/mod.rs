//! Pictures a person would rather look at than read: line charts and labelled image grids,
//! drawn with plotters and an embedded font, so they render on machines with no fonts.

mod font;
mod image_grid;
mod line_chart;
mod loss_curve;

pub use image_grid::{save_labelled_grid, LabelledGrid};
pub use line_chart::{save_line_chart, LineChart, Series};
pub use loss_curve::save_loss_curve;
