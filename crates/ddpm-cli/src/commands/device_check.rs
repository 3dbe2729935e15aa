//! `ddpm device-check`: one forward and backward of the U-Net on a device against the CPU.
//!
//! Both sides get the same weights (seeded initialisation on the CPU, copied), the same
//! inputs and the same loss, `L = mean((ε_θ(x_t, t, y) − target)²)`. The check passes when
//! the output and the gradient of every parameter agree to `tolerance`, relative to the
//! largest magnitude of the CPU's tensor: `max|a − b| ≤ tolerance · max(max|b|, floor)`.
//! The floor, 1e-3 of the largest gradient anywhere, is there for gradients that are zero
//! in exact arithmetic, which both sides compute as rounding noise: the key projection's
//! bias, since softmax ignores a shift shared by all keys.
//!
//! The reference is the CPU path training uses (the project's CPU kernels). With
//! `--device cpu` the other side is candle's own CPU ops, which checks those kernels as a
//! whole network.
//!
//! The forward runs with `train = false`, which only switches dropout off: its masks are
//! random, so the two passes would drop different activations (the cifar10-ddpm preset's
//! dropout of 0.1 made every gradient differ). Dropout is candle's own op on every path,
//! so no kernel goes unchecked, and gradients flow the same in either mode.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use ddpm_diffusion::NoiseRng;
use ddpm_train::{named_vars, seeded_init};
use ddpm_unet::{cpu_ops, UNet, UNetConfig};

use crate::device::open_device;

/// `ddpm device-check`.
#[derive(Debug, Clone, Args)]
pub struct DeviceCheckCommand {
    /// A model preset (fashion-mnist, cifar10, …) or a run config (.toml) whose model to use.
    #[arg(long, default_value = "fashion-mnist")]
    pub config: String,
    /// The device to check: cuda, cuda:N, or cpu (candle's CPU ops against ours).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Batch size of the check.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Largest allowed difference, relative to the largest magnitude of each CPU tensor.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The output and parameter gradients of one forward and backward.
struct Pass {
    output: Tensor,
    grads: HashMap<String, Tensor>,
}

/// Inputs shared by both sides, on the CPU.
struct Inputs {
    x_t: Tensor,
    t: Tensor,
    labels: Option<Tensor>,
    target: Tensor,
}

/// `max|a − b|` and `max|b|` of two tensors of the same shape, in f64 on the CPU.
fn max_difference(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok((diff, scale))
}

impl DeviceCheckCommand {
    /// The forward and backward on `device` with the weights `weights`.
    fn pass(
        config: &UNetConfig,
        weights: &HashMap<String, Tensor>,
        inputs: &Inputs,
        device: &Device,
    ) -> Result<Pass> {
        let (unet, varmap) = UNet::init(config, DType::F32, device)?;
        let named = named_vars(&varmap)?;
        for (name, var) in &named {
            let Some(value) = weights.get(name) else {
                bail!("no initial value for {name}");
            };
            var.set(&value.to_device(device)?)?;
        }
        let labels = match &inputs.labels {
            Some(labels) => Some(labels.to_device(device)?),
            None => None,
        };
        let output = unet.forward(
            &inputs.x_t.to_device(device)?,
            &inputs.t.to_device(device)?,
            labels.as_ref(),
            false,
        )?;
        let loss = (&output - inputs.target.to_device(device)?)?
            .sqr()?
            .mean_all()?;
        let grads = loss.backward()?;
        let mut by_name = HashMap::new();
        for (name, var) in &named {
            match grads.get(var.as_tensor()) {
                Some(g) => by_name.insert(name.clone(), g.clone()),
                None => bail!("{name} got no gradient on {device:?}"),
            };
        }
        Ok(Pass {
            output,
            grads: by_name,
        })
    }

    pub fn run(&self) -> Result<()> {
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            bail!("--tolerance {}: expected a number > 0", self.tolerance);
        }
        if self.batch == 0 {
            bail!("--batch 0: expected at least 1");
        }
        let config = crate::config::model_from_spec(&self.config)?;
        let device = open_device(&self.device)?;
        let side = config.sample_size.unwrap_or(32);

        let (_, varmap) = UNet::init(&config, DType::F32, &Device::Cpu)?;
        let mut named = named_vars(&varmap)?;
        seeded_init(&mut named, self.seed)?;
        let weights: HashMap<String, Tensor> = named
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let mut rng = NoiseRng::new(self.seed + 1);
        let shape = (self.batch, config.in_channels, side, side);
        let t: Vec<u32> = (0..self.batch)
            .map(|i| ((i * 997 + 13) % 1000) as u32)
            .collect();
        let inputs = Inputs {
            x_t: rng.randn(shape, &Device::Cpu)?,
            t: Tensor::from_vec(t, self.batch, &Device::Cpu)?,
            labels: match config.null_class() {
                Some(null) => {
                    let labels: Vec<u32> = (0..self.batch as u32).map(|i| i % (null + 1)).collect();
                    Some(Tensor::from_vec(labels, self.batch, &Device::Cpu)?)
                }
                None => None,
            },
            target: rng.randn((self.batch, config.out_channels, side, side), &Device::Cpu)?,
        };

        let was_enabled = cpu_ops::enabled();
        cpu_ops::set_enabled(true);
        let reference = Self::pass(&config, &weights, &inputs, &Device::Cpu);
        let other = if device.is_cpu() {
            cpu_ops::set_enabled(false);
            let other = Self::pass(&config, &weights, &inputs, &Device::Cpu);
            cpu_ops::set_enabled(was_enabled);
            other
        } else {
            cpu_ops::set_enabled(was_enabled);
            Self::pass(&config, &weights, &inputs, &device)
        };
        let (reference, other) = (reference?, other?);
        let other_name = if device.is_cpu() {
            "candle's CPU ops"
        } else {
            "CUDA"
        };

        // (relative difference, absolute difference, scale, tensor)
        let mut rows: Vec<(f64, f64, f64, String)> = Vec::new();
        let (diff, scale) = max_difference(&other.output, &reference.output)?;
        rows.push((
            diff / scale.max(f64::MIN_POSITIVE),
            diff,
            scale,
            "output".into(),
        ));
        let mut gradients = Vec::new();
        for (name, g) in &reference.grads {
            let (diff, scale) = max_difference(&other.grads[name], g)?;
            gradients.push((diff, scale, format!("∂L/∂{name}")));
        }
        let floor = 1e-3 * gradients.iter().map(|g| g.1).fold(0.0, f64::max);
        for (diff, scale, name) in gradients {
            let scale = scale.max(floor).max(f64::MIN_POSITIVE);
            rows.push((diff / scale, diff, scale, name));
        }
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        println!(
            "{other_name} against our CPU path: {} tensors (the output and {} gradients), batch {}",
            rows.len(),
            rows.len() - 1,
            self.batch
        );
        println!(
            "{:>12} {:>12} {:>12}  tensor",
            "relative", "max |a−b|", "scale"
        );
        for (rel, diff, scale, name) in rows.iter().take(8) {
            println!("{rel:>12.3e} {diff:>12.3e} {scale:>12.3e}  {name}");
        }
        let worst = rows.first().map_or(0.0, |r| r.0);
        let failing = rows
            .iter()
            .filter(|r| r.0.is_nan() || r.0 > self.tolerance)
            .count();
        println!(
            "worst relative difference {worst:.3e} (tolerance {:.1e}): {}",
            self.tolerance,
            if failing == 0 { "PASS" } else { "FAIL" }
        );
        if failing > 0 {
            bail!(
                "{failing} of {} tensors differ by more than {:.1e} (relative)",
                rows.len(),
                self.tolerance
            );
        }
        Ok(())
    }
}
