//! Writes a stratified subset of an IDX dataset as gzipped IDX files with the official names:
//! the first K images of each class of the training split, and the first K/4 of each class
//! of the test split, in file order (deterministic, no randomness).
//!
//! cargo run --release -p ddpm-data --example make_subset -- SRC_DIR OUT_DIR [K]
//!
//! The shipped `assets/fashion-mnist-subset` is `make_subset ../shared/data/fashion-mnist
//! assets/fashion-mnist-subset 400`.

use std::path::PathBuf;

use ddpm_data::idx::{encode_images, encode_labels, gzip, IdxImages};
use ddpm_data::{IdxDataset, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(src), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: make_subset SRC_DIR OUT_DIR [PER_CLASS]".into());
    };
    let per_class: usize = match args.next() {
        Some(k) => k
            .parse()
            .map_err(|_| format!("PER_CLASS {k:?} is not a number"))?,
        None => 400,
    };
    let (src, out) = (PathBuf::from(src), PathBuf::from(out));
    std::fs::create_dir_all(&out)?;
    let dataset = IdxDataset::FashionMnist;
    for (split, k) in [
        (Split::Train, per_class),
        (Split::Test, per_class.div_ceil(4)),
    ] {
        let data = dataset.load(&src, split, true)?;
        let mut taken = [0usize; 256];
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in 0..data.len() {
            let label = data.labels[i];
            if taken[label as usize] < k {
                taken[label as usize] += 1;
                pixels.extend_from_slice(data.image(i));
                labels.push(label);
            }
        }
        let images = IdxImages {
            count: labels.len(),
            rows: data.height,
            cols: data.width,
            pixels,
        };
        let (images_name, labels_name) = dataset.file_names(split);
        std::fs::write(out.join(images_name), gzip(&encode_images(&images)))?;
        std::fs::write(out.join(labels_name), gzip(&encode_labels(&labels)))?;
        println!("{split:?}: {} images ({k} per class)", labels.len());
    }
    Ok(())
}
