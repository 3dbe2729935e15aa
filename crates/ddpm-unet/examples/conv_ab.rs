//! Times the fashion-mnist U-Net's 3×3 stride-1 convolutions (batch 64) through Winograd's
//! F(2×2, 3×3) and through im2col, alternating the two on every repetition so that the
//! machine's drift in speed affects both alike; prints the median forward and backward
//! times of each shape and the totals over the network's convolutions.
//!
//! cargo run --release -p ddpm-unet --example conv_ab [REPS]

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use ddpm_unet::cpu_ops;

/// (input channels, output channels, side, how many the network has).
const SHAPES: [(usize, usize, usize, usize); 14] = [
    (1, 32, 28, 1),
    (32, 32, 28, 4),
    (32, 64, 14, 1),
    (64, 64, 14, 3),
    (64, 96, 7, 1),
    (96, 96, 7, 7),
    (192, 96, 7, 2),
    (160, 96, 7, 1),
    (160, 64, 14, 1),
    (128, 64, 14, 1),
    (96, 64, 14, 1),
    (96, 32, 28, 1),
    (64, 32, 28, 2),
    (32, 1, 28, 1),
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
    let mut totals = [[0.0; 2]; 2];
    println!(
        "{:<22} {:>10} {:>10}   {:>10} {:>10}",
        "shape", "im2col fwd", "wino fwd", "im2col bwd", "wino bwd"
    );
    for (c_in, c_out, side, count) in SHAPES {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (batch, c_in, side, side), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (c_out, c_in, 3, 3), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.1, c_out, &dev)?)?;
        let r = Tensor::randn(0f32, 1., (batch, c_out, side, side), &dev)?;
        // [mode][forward, backward] samples; mode 0 = im2col, 1 = Winograd.
        let mut samples = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        for rep in 0..=reps {
            for (mode, times) in samples.iter_mut().enumerate() {
                cpu_ops::set_winograd(mode == 1);
                let start = Instant::now();
                let y = cpu_ops::conv2d(&x, &w, Some(&b), 1, 1)?;
                let forward = start.elapsed().as_secs_f64() * 1e3;
                let loss = (y * &r)?.sum_all()?;
                let start = Instant::now();
                let grads = loss.backward()?;
                let backward = start.elapsed().as_secs_f64() * 1e3;
                drop(grads);
                if rep > 0 {
                    times[0].push(forward);
                    times[1].push(backward);
                }
            }
        }
        let m = samples.map(|mode| mode.map(median));
        println!(
            "{:<22} {:>10.2} {:>10.2}   {:>10.2} {:>10.2}",
            format!("{c_in}->{c_out} @{side} (×{count})"),
            m[0][0],
            m[1][0],
            m[0][1],
            m[1][1]
        );
        for mode in 0..2 {
            for pass in 0..2 {
                totals[mode][pass] += count as f64 * m[mode][pass];
            }
        }
    }
    println!(
        "{:<22} {:>10.1} {:>10.1}   {:>10.1} {:>10.1}",
        "network total", totals[0][0], totals[1][0], totals[0][1], totals[1][1]
    );
    Ok(())
}
