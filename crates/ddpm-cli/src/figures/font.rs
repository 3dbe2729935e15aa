//! The embedded font (DejaVu Sans, Bitstream Vera license: `fonts/LICENSE-DejaVu.txt`).

use std::sync::Once;

static DEJAVU_SANS: &[u8] = include_bytes!("../../fonts/DejaVuSans.ttf");

/// The family name figures use for text.
pub const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters under [`FAMILY`], once per process.
pub fn ensure_registered() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        for style in [
            plotters::style::FontStyle::Normal,
            plotters::style::FontStyle::Bold,
        ] {
            // The bytes are a valid TTF compiled into the binary; failure is a build defect.
            plotters::style::register_font(FAMILY, style, DEJAVU_SANS)
                .unwrap_or_else(|_| panic!("embedded font DejaVuSans.ttf is invalid"));
        }
    });
}
