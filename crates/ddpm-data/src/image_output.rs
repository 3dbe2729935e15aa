//! Pictures of tensors: sample grids, progression strips and animated GIFs.

use std::path::Path;

use candle_core::{DType, Tensor};
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, Rgb, RgbImage, RgbaImage};

use crate::error::{io_error, DataError, Result};

/// Pixels between tiles, and their gray level.
const PADDING: u32 = 2;
const PADDING_GRAY: u8 = 128;

/// Tiles a batch (N, C, H, W) of values in [−1, 1] (C = 1 or 3; values outside are clipped)
/// into a grid `nrow` tiles wide, separated by gray lines: pixel = round((x + 1)/2·255).
pub fn grid_image(images: &Tensor, nrow: usize) -> Result<RgbImage> {
    let (n, c, h, w) = images.dims4()?;
    if c != 1 && c != 3 {
        return Err(DataError::InvalidArgument {
            name: "image channels",
            reason: format!("expected 1 or 3, got {c}"),
        });
    }
    if n == 0 || nrow == 0 {
        return Err(DataError::InvalidArgument {
            name: "grid",
            reason: format!(
                "needs at least one image and one column (got {n} images, {nrow} columns)"
            ),
        });
    }
    let values = images
        .to_dtype(DType::F32)?
        .clamp(-1f32, 1f32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let cols = nrow.min(n) as u32;
    let rows = n.div_ceil(nrow) as u32;
    let (h32, w32) = (h as u32, w as u32);
    let mut grid = RgbImage::from_pixel(
        PADDING + cols * (w32 + PADDING),
        PADDING + rows * (h32 + PADDING),
        Rgb([PADDING_GRAY; 3]),
    );
    let to_byte = |v: f32| ((v + 1.0) * 127.5).round() as u8;
    for i in 0..n {
        let (gx, gy) = ((i % nrow) as u32, (i / nrow) as u32);
        let (x0, y0) = (
            PADDING + gx * (w32 + PADDING),
            PADDING + gy * (h32 + PADDING),
        );
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| values[((i * c + ch) * h + y) * w + x];
                let pixel = if c == 1 {
                    Rgb([to_byte(at(0)); 3])
                } else {
                    Rgb([to_byte(at(0)), to_byte(at(1)), to_byte(at(2))])
                };
                grid.put_pixel(x0 + x as u32, y0 + y as u32, pixel);
            }
        }
    }
    Ok(grid)
}

/// Saves a batch (N, C, H, W) in [−1, 1] as a PNG grid `nrow` tiles wide.
pub fn save_grid(images: &Tensor, path: impl AsRef<Path>, nrow: usize) -> Result<()> {
    save_png(&grid_image(images, nrow)?, path.as_ref())
}

/// Saves the progression of a sampler: `snapshots[k]` is the batch (N, C, H, W) at the k-th
/// kept step; the figure has one row per sample and one column per snapshot.
pub fn save_progression(snapshots: &[Tensor], path: impl AsRef<Path>) -> Result<()> {
    let first = snapshots
        .first()
        .ok_or_else(|| DataError::InvalidArgument {
            name: "progression",
            reason: "no snapshots".into(),
        })?;
    let n = first.dim(0)?;
    // Interleave: sample 0 at every step, then sample 1, …
    let stacked = Tensor::stack(snapshots, 1)?; // (N, K, C, H, W)
    let (_, k, c, h, w) = stacked.dims5()?;
    let tiles = stacked.reshape((n * k, c, h, w))?;
    save_png(&grid_image(&tiles, k)?, path.as_ref())
}

/// Saves an animated GIF: one frame per batch in `frames`, each a grid `nrow` tiles wide,
/// shown `frame_ms` milliseconds, the last held for `hold_ms`; loops forever.
pub fn save_gif(
    frames: &[Tensor],
    path: impl AsRef<Path>,
    nrow: usize,
    frame_ms: u32,
    hold_ms: u32,
) -> Result<()> {
    let path = path.as_ref();
    if frames.is_empty() {
        return Err(DataError::InvalidArgument {
            name: "gif",
            reason: "no frames".into(),
        });
    }
    let tmp = path.with_extension("gif.tmp");
    let file = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
    let image_error = |source| DataError::Image {
        path: path.to_path_buf(),
        source,
    };
    {
        let mut encoder = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
        encoder.set_repeat(Repeat::Infinite).map_err(image_error)?;
        for (i, frame) in frames.iter().enumerate() {
            let rgb = grid_image(frame, nrow)?;
            let rgba = RgbaImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                let p = rgb.get_pixel(x, y).0;
                image::Rgba([p[0], p[1], p[2], 255])
            });
            let ms = if i + 1 == frames.len() {
                hold_ms.max(frame_ms)
            } else {
                frame_ms
            };
            encoder
                .encode_frame(Frame::from_parts(
                    rgba,
                    0,
                    0,
                    Delay::from_numer_denom_ms(ms, 1),
                ))
                .map_err(image_error)?;
        }
    }
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// Writes a PNG through a temporary file and a rename.
fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    let tmp = path.with_extension("png.tmp");
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|source| DataError::Image {
            path: tmp.clone(),
            source,
        })?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}
