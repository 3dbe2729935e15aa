//! The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), raw or gzipped.
//!
//! An IDX file is a big-endian header, the magic number `0x0000_08NN` (unsigned bytes,
//! NN dimensions), then NN u32 sizes, then the data in row-major order.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{io_error, DataError, Result};

/// Magic number of a 3-dimensional u8 IDX file (images: count × rows × columns).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of a 1-dimensional u8 IDX file (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// A stack of grayscale images read from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// `count · rows · cols` pixel intensities, 0 (background) to 255, row-major.
    pub pixels: Vec<u8>,
}

/// Reads a whole file, decompressing it if it starts with the gzip magic bytes.
pub fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(io_error(path))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DataError::CorruptGzip {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses the header: checks the magic number and returns the dimensions and the data.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    what: &'static str,
) -> Result<(Vec<usize>, &'a [u8])> {
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header,
            found: bytes.len(),
        });
    }
    let found = word(0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            what,
            found,
            expected: magic,
        });
    }
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header,
            found: bytes.len(),
        });
    }
    let dims: Vec<usize> = (0..ndims).map(|d| word(4 + 4 * d) as usize).collect();
    let expected: usize = dims.iter().product();
    let data = &bytes[header..];
    if data.len() < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: data.len(),
        });
    }
    if data.len() > expected {
        return Err(DataError::BadDimensions {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes of data follow the header, but its dimensions {:?} announce {expected}",
                data.len(),
                dims
            ),
        });
    }
    Ok((dims, data))
}

/// Reads an IDX images file (magic 0x00000803), raw or gzipped.
pub fn read_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    let bytes = read_maybe_gzipped(path)?;
    let (dims, data) = parse(path, &bytes, IMAGES_MAGIC, "images")?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::BadDimensions {
            path: path.to_path_buf(),
            reason: format!("images of {}×{} pixels", dims[1], dims[2]),
        });
    }
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels: data.to_vec(),
    })
}

/// Reads an IDX labels file (magic 0x00000801), raw or gzipped.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = read_maybe_gzipped(path)?;
    let (_, data) = parse(path, &bytes, LABELS_MAGIC, "labels")?;
    Ok(data.to_vec())
}

/// Encodes images as an IDX file (uncompressed), e.g. to write fixtures or subsets.
pub fn encode_images(images: &IdxImages) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + images.pixels.len());
    for word in [
        IMAGES_MAGIC,
        images.count as u32,
        images.rows as u32,
        images.cols as u32,
    ] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// Encodes labels as an IDX file (uncompressed).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Gzips bytes (for writing `.gz` IDX files).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    encoder.write_all(bytes).expect("in-memory write");
    encoder.finish().expect("in-memory write")
}

/// The path of `name` in `dir`, or of `name` without its `.gz` suffix when only the
/// decompressed file is there.
pub(crate) fn find_file(dir: &Path, gz_name: &str) -> Option<PathBuf> {
    let gz = dir.join(gz_name);
    if gz.is_file() {
        return Some(gz);
    }
    let raw = dir.join(gz_name.trim_end_matches(".gz"));
    raw.is_file().then_some(raw)
}
