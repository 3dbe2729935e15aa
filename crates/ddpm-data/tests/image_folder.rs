//! Image folders: mixed formats and sizes, a non-image file, a corrupt PNG, an empty folder.

use std::path::Path;

use ddpm_data::{Channels, DataError, ImageDataset, ImageFolder, ImageFolderConfig};
use image::{ImageFormat, Rgb, RgbImage};

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128])
    })
}

/// cats/a.png (40×30), cats/b.jpg (28×28), dogs/c.webp (20×50), dogs/deep/d.bmp (16×16),
/// plus notes.txt and dogs/corrupt.png (a PNG cut short: its header reads, its data does not).
fn make_folder(root: &Path) {
    for dir in ["cats", "dogs/deep"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    gradient(40, 30)
        .save_with_format(root.join("cats/a.png"), ImageFormat::Png)
        .unwrap();
    gradient(28, 28)
        .save_with_format(root.join("cats/b.jpg"), ImageFormat::Jpeg)
        .unwrap();
    gradient(20, 50)
        .save_with_format(root.join("dogs/c.webp"), ImageFormat::WebP)
        .unwrap();
    gradient(16, 16)
        .save_with_format(root.join("dogs/deep/d.bmp"), ImageFormat::Bmp)
        .unwrap();
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    let mut png = Vec::new();
    gradient(64, 64)
        .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    png.truncate(png.len() / 2);
    std::fs::write(root.join("dogs/corrupt.png"), png).unwrap();
    // Hidden files are ignored.
    std::fs::write(root.join(".DS_Store"), "junk").unwrap();
}

fn config(size: usize, channels: Channels) -> ImageFolderConfig {
    ImageFolderConfig {
        channels,
        size,
        ..Default::default()
    }
}

#[test]
fn bad_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path());
    let err = ImageFolder::open(dir.path(), config(16, Channels::Rgb)).unwrap_err();
    assert!(
        err.to_string().contains("notes.txt") && err.to_string().contains("not an image"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("notes.txt")).unwrap();
    let err = ImageFolder::open(dir.path(), config(16, Channels::Rgb)).unwrap_err();
    assert!(matches!(err, DataError::Image { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt.png"), "{err}");
}

#[test]
fn skipping_bad_files_keeps_the_good_ones_with_sorted_classes() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path());
    let cfg = ImageFolderConfig {
        skip_bad_images: true,
        ..config(16, Channels::Rgb)
    };
    let folder = ImageFolder::open(dir.path(), cfg).unwrap();
    assert_eq!(folder.len(), 4);
    assert_eq!(
        folder.class_names(),
        &["cats".to_string(), "dogs".to_string()]
    );
    assert_eq!(folder.dims(), (3, 16, 16));
    let labels: Vec<u32> = (0..4).map(|i| folder.get(i).unwrap().1).collect();
    assert_eq!(labels, vec![0, 0, 1, 1]);
    for i in 0..4 {
        let (values, _) = folder.get(i).unwrap();
        assert_eq!(values.len(), 3 * 16 * 16);
        assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
    let gray = ImageFolder::open(
        dir.path(),
        ImageFolderConfig {
            skip_bad_images: true,
            ..config(8, Channels::Gray)
        },
    )
    .unwrap();
    assert_eq!(gray.dims(), (1, 8, 8));
}

#[test]
fn resize_then_center_crop() {
    // 40×20, left half black, right half white: scaled to 20×10, the center 10×10 crop
    // (columns 5..15) is black on its left half and white on its right half.
    let dir = tempfile::tempdir().unwrap();
    let img = RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    img.save(dir.path().join("half.png")).unwrap();
    let folder = ImageFolder::open(dir.path(), config(10, Channels::Gray)).unwrap();
    assert_eq!(folder.class_names(), &[ddpm_data::ROOT_CLASS.to_string()]);
    let (values, _) = folder.get(0).unwrap();
    for y in 0..10 {
        let row = &values[y * 10..(y + 1) * 10];
        // Away from the edge (columns 3 and 6 are within 2 pixels of it), exact.
        assert!(row[..3].iter().all(|&v| v == -1.0), "row {y}: {row:?}");
        assert!(row[7..].iter().all(|&v| v == 1.0), "row {y}: {row:?}");
    }
}

#[test]
fn lazy_folders_report_corrupt_files_when_read() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path());
    std::fs::remove_file(dir.path().join("notes.txt")).unwrap();
    let cfg = ImageFolderConfig {
        preload_limit_bytes: 0,
        ..config(16, Channels::Gray)
    };
    let folder = ImageFolder::open(dir.path(), cfg).unwrap();
    assert_eq!(folder.len(), 5);
    let corrupt = folder
        .files()
        .iter()
        .position(|(p, _)| p.ends_with("corrupt.png"))
        .unwrap();
    let err = folder.get(corrupt).unwrap_err();
    assert!(err.to_string().contains("corrupt.png"), "{err}");
    assert!(folder.get((corrupt + 1) % 5).is_ok());
}

#[test]
fn empty_folders_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("empty-class")).unwrap();
    let err = ImageFolder::open(dir.path(), config(16, Channels::Gray)).unwrap_err();
    assert!(err.to_string().contains("holds no images"), "{err}");
    let err =
        ImageFolder::open(dir.path().join("missing"), config(16, Channels::Gray)).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
