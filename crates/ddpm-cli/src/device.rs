//! `--device cpu|cuda|cuda:N|auto`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Opens the device a `--device` value names. `auto` is CUDA device 0 when this binary was
/// built with CUDA and a GPU answers, else the CPU; the choice is logged.
pub fn open_device(spec: &str) -> Result<Device> {
    let device = match spec.trim() {
        "cpu" => Device::Cpu,
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                match Device::new_cuda(0) {
                    Ok(device) => device,
                    Err(err) => {
                        tracing::warn!(error = %err, "CUDA is compiled in but no GPU answered");
                        Device::Cpu
                    }
                }
            } else {
                Device::Cpu
            }
        }
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .with_context(|| format!("--device {other}: expected cuda:N"))?,
                None => bail!("--device {other}: expected cpu, cuda, cuda:N or auto"),
            };
            if !candle_core::utils::cuda_is_available() {
                bail!(
                    "--device {other}: this binary was built without CUDA (build with `cargo xtask ... --cuda`)"
                );
            }
            Device::new_cuda(ordinal).with_context(|| format!("--device {other}"))?
        }
    };
    tracing::info!(
        device = if device.is_cuda() { "cuda" } else { "cpu" },
        threads = candle_core::utils::get_num_threads(),
        simd = ?ddpm_unet::cpu_ops::simd_level(),
        "device"
    );
    Ok(device)
}
