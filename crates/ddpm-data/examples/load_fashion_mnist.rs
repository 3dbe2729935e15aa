//! Times loading Fashion-MNIST (both splits, md5-verified, decompressed, checked) and turning
//! the training set into one [−1, 1] tensor.
//!
//! cargo run --release -p ddpm-data --example load_fashion_mnist -- [DIR]

use std::path::PathBuf;
use std::time::Instant;

use ddpm_data::{IdxDataset, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data/fashion-mnist"));
    for verify in [true, false] {
        let start = Instant::now();
        let train = IdxDataset::FashionMnist.load(&dir, Split::Train, verify)?;
        let test = IdxDataset::FashionMnist.load(&dir, Split::Test, verify)?;
        let loaded = start.elapsed();
        let all: Vec<usize> = (0..train.len()).collect();
        let tensor = train.to_tensor(&all, &candle_core::Device::Cpu)?;
        println!(
            "md5 verification {}: loaded {} + {} images in {:.3} s; train tensor {:?} in {:.3} s more",
            if verify { "on " } else { "off" },
            train.len(),
            test.len(),
            loaded.as_secs_f64(),
            tensor.dims(),
            (start.elapsed() - loaded).as_secs_f64()
        );
    }
    Ok(())
}
