//! How fast gemm runs the convolution's products at the fashion-mnist model's level-0 shape
//! (O = 32, K = 288, 28×28 pixels, batch 64), split three ways: one single-threaded gemm
//! per sample (what `cpu_ops::conv2d` does), one gemm per sample on both threads, and one
//! gemm over the whole batch (patches of all samples side by side) on both threads.
//!
//! cargo run --release -p ddpm-unet --example gemm_shapes

use std::time::Instant;

use gemm::Parallelism;
use rayon::prelude::*;

#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    par: Parallelism,
) {
    // SAFETY: the buffers below are sized for these shapes and strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[3]
}

fn main() {
    for (o, k, p) in [(32usize, 288usize, 784usize), (64, 576, 196), (96, 864, 49)] {
        let b = 64;
        let flops = 2.0 * (o * k * p * b) as f64;
        let w = vec![0.5f32; o * k];
        let cols = vec![0.25f32; b * k * p];
        let mut y = vec![0f32; b * o * p];
        let per_sample = time(|| {
            y.par_chunks_mut(o * p)
                .zip(cols.par_chunks(k * p))
                .for_each(|(y_n, c_n)| {
                    mm(
                        o,
                        p,
                        k,
                        y_n,
                        (p, 1),
                        &w,
                        (k, 1),
                        c_n,
                        (p, 1),
                        Parallelism::None,
                    )
                });
        });
        let per_sample_par = time(|| {
            for (y_n, c_n) in y.chunks_mut(o * p).zip(cols.chunks(k * p)) {
                mm(
                    o,
                    p,
                    k,
                    y_n,
                    (p, 1),
                    &w,
                    (k, 1),
                    c_n,
                    (p, 1),
                    Parallelism::Rayon(2),
                );
            }
        });
        // Patches as (B·P, K) rows; output (B·P, O) rows (channels-last), one gemm.
        let whole = time(|| {
            mm(
                b * p,
                o,
                k,
                &mut y,
                (o, 1),
                &cols,
                (k, 1),
                &w,
                (1, k),
                Parallelism::Rayon(2),
            );
        });
        println!(
            "O={o} K={k} P={p} B={b}: per sample, 1 thread each {per_sample:.2} ms ({:.0} GFLOP/s); per sample, 2 threads {per_sample_par:.2} ms ({:.0}); whole batch {whole:.2} ms ({:.0})",
            flops / per_sample / 1e6,
            flops / per_sample_par / 1e6,
            flops / whole / 1e6
        );
    }
}
