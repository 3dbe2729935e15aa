//! `ddpm compare-schedules` writes both figures and their numbers.

use std::path::{Path, PathBuf};
use std::process::Command;

fn check_outputs(dir: &Path, image_size: (u32, u32)) {
    let chart = image::open(dir.join("schedule_comparison.png")).unwrap();
    assert_eq!((chart.width(), chart.height()), (1000, 650));
    let grid = image::open(dir.join("noising_comparison.png"))
        .unwrap()
        .to_luma8();
    assert!(grid.width() > 11 * image_size.0 && grid.height() > 2 * image_size.1);
    let csv = std::fs::read_to_string(dir.join("schedule_comparison.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1002, "header + t = 0..=1000");
    let noising = std::fs::read_to_string(dir.join("noising_comparison.csv")).unwrap();
    let lines: Vec<&str> = noising.lines().collect();
    assert_eq!(lines.len(), 1 + 2 * 11);
    // At t = 0 the image is itself (correlation 1); at t = T almost pure noise.
    assert!(
        lines[1].starts_with("linear,0,") && lines[1].ends_with(",1.000000"),
        "{}",
        lines[1]
    );
    let last_corr: f64 = lines[11].rsplit(',').next().unwrap().parse().unwrap();
    assert!(last_corr.abs() < 0.2, "{}", lines[11]);
}

#[test]
fn writes_both_figures_from_a_given_image() {
    let dir = tempfile::tempdir().unwrap();
    let img_path = dir.path().join("ring.png");
    let img = image::GrayImage::from_fn(20, 16, |x, y| {
        let d = ((x as f32 - 10.0).powi(2) + (y as f32 - 8.0).powi(2)).sqrt();
        image::Luma([if (4.0..7.0).contains(&d) { 255 } else { 0 }])
    });
    img.save(&img_path).unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["compare-schedules", "--image"])
        .arg(&img_path)
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_outputs(&out_dir, (20, 16));
}

#[test]
fn writes_both_figures_from_fashion_mnist() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fashion-mnist");
    if !data.join("t10k-images-idx3-ubyte.gz").is_file() {
        eprintln!(
            "SKIPPED: Fashion-MNIST is not at {}; the --image test covers the figures",
            data.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["compare-schedules", "--data-dir"])
        .arg(&data)
        .arg("--out-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_outputs(dir.path(), (28, 28));
}

#[test]
fn a_missing_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args([
            "compare-schedules",
            "--image",
            "/nonexistent/picture.png",
            "--out-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("/nonexistent/picture.png") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
