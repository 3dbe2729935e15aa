//! The real Fashion-MNIST files in `../shared/data/fashion-mnist` beside the project root,
//! when present. When absent, each test prints that it was skipped and why.

use std::path::PathBuf;

use ddpm_data::{IdxDataset, Split};

fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fashion-mnist");
    if dir.join("train-images-idx3-ubyte.gz").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: the real Fashion-MNIST files are not at {} (the project's ../shared/data); \
             generated-file tests still cover the reader",
            dir.display()
        );
        None
    }
}

#[test]
fn real_fashion_mnist_has_the_published_shape_and_statistics() {
    let Some(dir) = shared_dir() else { return };
    let train = IdxDataset::FashionMnist
        .load(&dir, Split::Train, true)
        .unwrap();
    let test = IdxDataset::FashionMnist
        .load(&dir, Split::Test, true)
        .unwrap();
    assert_eq!((train.len(), train.height, train.width), (60_000, 28, 28));
    assert_eq!(test.len(), 10_000);
    let mut per_class = [0usize; 10];
    for &l in &train.labels {
        per_class[l as usize] += 1;
    }
    assert_eq!(per_class, [6000; 10]);
    let mut test_per_class = [0usize; 10];
    for &l in &test.labels {
        test_per_class[l as usize] += 1;
    }
    assert_eq!(test_per_class, [1000; 10]);
    // The commonly quoted normalisation constant: mean pixel intensity 0.2860.
    let mean =
        train.pixels.iter().map(|&p| p as f64).sum::<f64>() / (train.pixels.len() as f64 * 255.0);
    assert!((mean - 0.2860).abs() < 0.0005, "train pixel mean {mean}");
}

#[test]
fn real_files_pass_md5_verification_one_by_one() {
    let Some(dir) = shared_dir() else { return };
    for split in [Split::Train, Split::Test] {
        let (images, labels) = IdxDataset::FashionMnist.file_names(split);
        for name in [images, labels] {
            IdxDataset::FashionMnist
                .verify_md5(&dir.join(name))
                .unwrap();
            // The same file is not MNIST's.
            assert!(
                IdxDataset::Mnist.verify_md5(&dir.join(name)).is_err(),
                "{name}"
            );
        }
    }
}
