//! Times the fashion-mnist U-Net's 3×3 convolutions at batch 64 with the hand-written CPU
//! kernel: the median forward and backward (input, weight and bias gradients) of each
//! shape, and the totals over the network's convolutions. To compare two builds, run their
//! copies of this example alternately.
//!
//! cargo run --release -p ddpm-unet --example conv_shapes [REPS]

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use ddpm_unet::cpu_ops;

/// (input channels, output channels, input side, kernel, stride, how many the network has):
/// every 3×3 convolution of a training step, as `RUST_LOG=ddpm=debug ddpm bench --profile`
/// lists them (the two upsampling convolutions, 96→96 at 14×14 and 64→64 at 28×28,
/// included).
const SHAPES: [(usize, usize, usize, usize, usize, usize); 18] = [
    (1, 32, 28, 3, 1, 1),
    (32, 32, 28, 3, 1, 7),
    (32, 32, 28, 3, 2, 1),
    (32, 64, 14, 3, 1, 1),
    (64, 64, 14, 3, 1, 6),
    (64, 64, 14, 3, 2, 1),
    (64, 96, 7, 3, 1, 1),
    (96, 96, 7, 3, 1, 10),
    (192, 96, 7, 3, 1, 2),
    (160, 96, 7, 3, 1, 1),
    (96, 96, 14, 3, 1, 1),
    (160, 64, 14, 3, 1, 1),
    (128, 64, 14, 3, 1, 1),
    (96, 64, 14, 3, 1, 1),
    (64, 64, 28, 3, 1, 1),
    (96, 32, 28, 3, 1, 1),
    (64, 32, 28, 3, 1, 2),
    (32, 1, 28, 3, 1, 1),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let dev = Device::Cpu;
    let batch = 64;
    let mut totals = [0.0; 2];
    println!("{:<28} {:>10} {:>10}", "shape", "forward", "backward");
    for (c_in, c_out, side, k, stride, count) in SHAPES {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (batch, c_in, side, side), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (c_out, c_in, k, k), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.1, c_out, &dev)?)?;
        let (mut forward, mut backward) = (Vec::new(), Vec::new());
        for rep in 0..=reps {
            let start = Instant::now();
            let y = cpu_ops::conv2d(&x, &w, Some(&b), stride, k / 2)?;
            let f = start.elapsed().as_secs_f64() * 1e3;
            let start = Instant::now();
            // The output gradient is all ones.
            let grads = y.backward()?;
            let bwd = start.elapsed().as_secs_f64() * 1e3;
            drop(grads);
            if rep > 0 {
                forward.push(f);
                backward.push(bwd);
            }
        }
        let (f, bwd) = (median(forward), median(backward));
        println!(
            "{:<28} {f:>10.2} {bwd:>10.2}",
            format!("{c_in}->{c_out} @{side} s{stride} (×{count})")
        );
        totals[0] += count as f64 * f;
        totals[1] += count as f64 * bwd;
    }
    println!(
        "{:<28} {:>10.1} {:>10.1}",
        "network total (ms)", totals[0], totals[1]
    );
    Ok(())
}
