//! Times the U-Net's building blocks at the fashion-mnist model's shapes, batch 64, with the
//! hand-written CPU kernels and with candle's ops: forward, and forward + backward.
//!
//! cargo run --release -p ddpm-unet --example op_bench [NAME-FILTER [ours]]
//!
//! It allocates as the `ddpm` binary does (mimalloc, freed memory never returned to the
//! kernel), so that the backward columns do not count page faults the binary does not pay.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use ddpm_unet::cpu_ops;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` = −1: never purge (as `ddpm`'s `keep_freed_memory`).
fn keep_freed_memory() {
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setter of the linked allocator.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut samples = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[reps / 2])
}

fn report(name: &str, f: &dyn Fn() -> Result<Tensor>, inputs: &[&Var]) -> Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    if !name.contains(&filter) {
        return Ok(());
    }
    let only_ours = std::env::args().nth(2).is_some_and(|a| a == "ours");
    for candle in [false, true] {
        if candle && only_ours {
            continue;
        }
        cpu_ops::set_enabled(!candle);
        let fwd = time(5, || f().map(|_| ()))?;
        let both = time(5, || {
            let y = f()?;
            let g = y.sum_all()?.backward()?;
            for v in inputs {
                g.get(v)
                    .map(|_| ())
                    .ok_or_else(|| candle_core::Error::Msg("no grad".into()))?;
            }
            Ok(())
        })?;
        println!(
            "{name:<34} {:<7} forward {fwd:8.2} ms   forward+backward {both:8.2} ms",
            if candle { "candle" } else { "ours" }
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    keep_freed_memory();
    let dev = Device::Cpu;
    let b = 64;
    for (c, side) in [(32usize, 28usize), (64, 14), (96, 7)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, c, side, side), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (c, c, 3, 3), &dev)?)?;
        let bias = Var::from_tensor(&Tensor::zeros(c, DType::F32, &dev)?)?;
        report(
            &format!("conv3x3 {c}->{c} @{side}"),
            &|| cpu_ops::conv2d(&x, &w, Some(&bias), 1, 1),
            &[&x, &w],
        )?;
        let gamma = Var::from_tensor(&Tensor::ones(c, DType::F32, &dev)?)?;
        let beta = Var::from_tensor(&Tensor::zeros(c, DType::F32, &dev)?)?;
        report(
            &format!("groupnorm+silu {c} @{side}"),
            &|| cpu_ops::group_norm(&x, &gamma, &beta, 8, 1e-5, true),
            &[&x, &gamma],
        )?;
        let t = Var::from_tensor(&Tensor::randn(0f32, 1., (b, c, 1, 1), &dev)?)?;
        report(
            &format!("broadcast add {c} @{side}"),
            &|| x.broadcast_add(&t),
            &[&x],
        )?;
        report(&format!("add {c} @{side}"), &|| x.add(&x), &[&x])?;
        report(
            &format!("cat+contiguous {c} @{side}"),
            &|| Tensor::cat(&[x.as_tensor(), x.as_tensor()], 1),
            &[&x],
        )?;
    }
    let q = Var::from_tensor(&Tensor::randn(0f32, 1., (b, 2, 196, 32), &dev)?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 1., (b, 2, 196, 32), &dev)?)?;
    report(
        "attention scores q·kᵀ (64,2,196,32)",
        &|| q.matmul(&k.t()?),
        &[&q, &k],
    )?;
    let s = Var::from_tensor(&Tensor::randn(0f32, 1., (b * 2, 196, 196), &dev)?)?;
    report(
        "softmax (128,196,196)",
        &|| cpu_ops::softmax_last_dim(&s, 0.17),
        &[&s],
    )?;
    // The whole attention block (GroupNorm, projections, attention, output projection and
    // residual) at the model's two attention resolutions, heads of 32 channels.
    for (c, side) in [(64usize, 14usize), (96, 7)] {
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let block = ddpm_unet::SpatialAttention::new(vb, c, 32, 8, 1e-5)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, c, side, side), &dev)?)?;
        report(
            &format!("attention block {c} @{side}"),
            &|| candle_core::Module::forward(&block, &x),
            &[&x],
        )?;
    }
    Ok(())
}
