//! `ddpm bench`: training images/s, the time of one sampling step, peak memory, the machine's
//! matrix-multiply rate, and (with `--vs-pytorch`) the same for diffusers' `UNet2DModel`
//! with the same config, measured interleaved in one run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Args;
use ddpm_diffusion::{GaussianDiffusion, NoiseRng, ReverseVariance};
use ddpm_schedule::{BetaSchedule, NoiseSchedule};
use ddpm_train::{
    clip_grad_norm, mixed_precision_forward, named_vars, seeded_init, AdamW, AdamWConfig, Precision,
};
use ddpm_unet::{UNet, UNetConfig};

use crate::device::open_device;
use crate::trained_model::frozen;

/// `ddpm bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchCommand {
    /// Model preset (`fashion-mnist`, `cifar10-ddpm`) or a config TOML with a `[model]`.
    #[arg(long, default_value = "fashion-mnist")]
    pub config: String,
    /// Training batch sizes.
    #[arg(long = "batch", default_values_t = [64, 128])]
    pub batches: Vec<usize>,
    /// Batch of the sampling step.
    #[arg(long, default_value_t = 64)]
    pub sample_batch: usize,
    /// Timed repetitions of each measurement (after one untimed warm-up); the median counts.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Also measure the PyTorch twin (scripts/bench_pytorch.py; installs torch and diffusers
    /// into .venv on first use).
    #[arg(long)]
    pub vs_pytorch: bool,
    /// Python for the twin (default: .venv/bin/python if present, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Use candle's own ops instead of the hand-written CPU kernels (for before/after).
    #[arg(long)]
    pub candle_ops: bool,
    /// Also print where the time goes: each CPU kernel's share of the first training batch
    /// size's step and of the sampling step, the rest being candle's ops.
    #[arg(long)]
    pub profile: bool,
    /// Write the numbers as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto (`--vs-pytorch` compares on the CPU only).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Training arithmetic: f32, or bf16 (mixed precision on f32 weights; CUDA only).
    #[arg(long, default_value = "f32")]
    pub precision: String,
}

/// Median of samples.
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Peak resident memory of this process (Linux; 0 elsewhere), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One training step of ours, set up once per batch size.
struct OurTrainer {
    unet: UNet,
    /// The same network on plain tensors, as `ddpm sample` runs it: its forward records no
    /// autograd graph (PyTorch's twin samples under `torch.no_grad()`).
    frozen: UNet,
    config: UNetConfig,
    weights: HashMap<String, Var>,
    precision: Precision,
    device: Device,
    vars: Vec<Var>,
    optimizer: AdamW,
    diffusion: GaussianDiffusion,
    x0: Tensor,
    /// Class labels for class-conditional models: 0, 1, …, cycling through the real classes.
    labels: Option<Tensor>,
    rng: NoiseRng,
}

impl OurTrainer {
    fn new(
        config: &UNetConfig,
        batch: usize,
        side: usize,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let device = device.clone();
        let (unet, varmap) = UNet::init(config, DType::F32, &device)?;
        let mut named = named_vars(&varmap)?;
        seeded_init(&mut named, 0)?;
        let vars = named.iter().map(|(_, v)| v.clone()).collect();
        let weights = named.iter().cloned().collect();
        let frozen = frozen(config, named.iter().map(|(n, v)| (n, v)), &device)?;
        let optimizer = AdamW::new(named.into_iter().collect(), AdamWConfig::default())?;
        let diffusion =
            GaussianDiffusion::epsilon(NoiseSchedule::new(BetaSchedule::linear(), 1000)?, &device)?;
        let mut rng = NoiseRng::new(1);
        let x0 = rng.randn((batch, config.in_channels, side, side), &device)?;
        let labels = match config.null_class() {
            Some(null) => {
                let labels: Vec<u32> = (0..batch as u32).map(|i| i % null.max(1)).collect();
                Some(Tensor::from_vec(labels, batch, &device)?)
            }
            None => None,
        };
        Ok(Self {
            unet,
            frozen,
            config: config.clone(),
            weights,
            precision,
            device,
            vars,
            optimizer,
            diffusion,
            x0,
            labels,
            rng,
        })
    }

    /// Seconds of one step: draw t and ε, forward, loss, backward, clip, AdamW.
    fn step(&mut self) -> Result<StepTimes> {
        let start = Instant::now();
        let batch = self.diffusion.training_batch(&self.x0, &mut self.rng)?;
        let pred = match self.precision {
            Precision::F32 => {
                self.unet
                    .forward(&batch.x_t, &batch.model_t, self.labels.as_ref(), true)?
            }
            Precision::Bf16 => mixed_precision_forward(
                &self.config,
                &self.weights,
                Precision::Bf16.compute_dtype(),
                &batch.x_t,
                &batch.model_t,
                self.labels.as_ref(),
                true,
            )?,
        };
        let loss = self.diffusion.loss(&pred, &batch)?;
        self.device.synchronize()?;
        let forward = start.elapsed().as_secs_f64();
        let mut grads = loss.backward()?;
        self.device.synchronize()?;
        let backward = start.elapsed().as_secs_f64() - forward;
        clip_grad_norm(&mut grads, &self.vars, 1.0)?;
        self.optimizer.step(&grads, 2e-4)?;
        self.device.synchronize()?;
        let total = start.elapsed().as_secs_f64();
        Ok(StepTimes {
            total,
            forward,
            backward,
            update: total - forward - backward,
        })
    }

    /// Seconds of one sampling step at this trainer's batch: forward without gradients and
    /// the DDPM update.
    fn sample_step(&mut self) -> Result<f64> {
        let x_t = self.rng.randn(self.x0.shape(), &self.device)?;
        self.device.synchronize()?;
        let start = Instant::now();
        let t = Tensor::full(499u32, x_t.dim(0)?, &self.device)?;
        let eps = self.frozen.forward(&x_t, &t, self.labels.as_ref(), false)?;
        let z = self.rng.randn(x_t.shape(), &self.device)?;
        let x_prev = self
            .diffusion
            .ddpm_step(&x_t, 500, &eps, ReverseVariance::Beta, &z)?;
        x_prev.sum_all()?.to_scalar::<f32>()?;
        Ok(start.elapsed().as_secs_f64())
    }
}

/// The `--profile` table of one measurement: each kernel's mean time per step and share of
/// the step (over `reps` steps of `total` seconds), then its five costliest shapes (every
/// shape is logged at debug level).
fn profile_report(
    what: &str,
    entries: Vec<ddpm_unet::cpu_ops::profile::Entry>,
    total: f64,
    reps: usize,
) -> String {
    use std::fmt::Write;
    let per_step = |seconds: f64| seconds / reps as f64 * 1e3;
    let mut by_kernel: Vec<(&str, f64, usize)> = Vec::new();
    for e in &entries {
        match by_kernel.iter_mut().find(|(k, _, _)| *k == e.kernel) {
            Some(slot) => {
                slot.1 += e.seconds;
                slot.2 += e.calls;
            }
            None => by_kernel.push((e.kernel, e.seconds, e.calls)),
        }
    }
    by_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
    let kernels: f64 = by_kernel.iter().map(|k| k.1).sum();
    let mut out = format!(
        "where the time goes, {what} ({:.0} ms a step):\n",
        per_step(total)
    );
    let mut row = |name: &str, seconds: f64, calls: Option<usize>| {
        let calls = calls.map_or(String::new(), |c| format!("  {} calls", c / reps.max(1)));
        let _ = writeln!(
            out,
            "  {name:<34} {:>8.1} ms {:>5.1}%{calls}",
            per_step(seconds),
            100.0 * seconds / total
        );
    };
    for (kernel, seconds, calls) in &by_kernel {
        row(kernel, *seconds, Some(*calls));
    }
    row("candle's ops and the rest", total - kernels, None);
    let _ = writeln!(out, "  costliest shapes:");
    for e in entries.iter().take(5) {
        let _ = writeln!(
            out,
            "    {:<20} {:<44} {:>8.1} ms",
            e.kernel,
            e.shape,
            per_step(e.seconds)
        );
    }
    // Every shape, for `RUST_LOG=ddpm=debug`.
    for e in &entries {
        tracing::debug!(
            what,
            kernel = e.kernel,
            shape = %e.shape,
            ms_per_step = per_step(e.seconds),
            calls_per_step = e.calls / reps.max(1),
            calls = e.calls,
            ms_per_call = e.seconds * 1e3 / e.calls.max(1) as f64,
            "profile"
        );
    }
    out
}

/// Seconds of one training step and of its phases.
#[derive(Debug, Clone, Copy)]
struct StepTimes {
    total: f64,
    /// Drawing t and ε, the noisy batch, the U-Net's forward and the loss.
    forward: f64,
    /// `loss.backward()`.
    backward: f64,
    /// Global-norm clipping and the AdamW update.
    update: f64,
}

/// The PyTorch worker process.
struct Twin {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    torch: String,
}

impl Twin {
    fn start(python: Option<&PathBuf>, config: &UNetConfig, threads: usize) -> Result<Self> {
        let script = PathBuf::from("scripts/bench_pytorch.py");
        if !script.is_file() {
            bail!(
                "{} not found: run from the repository root",
                script.display()
            );
        }
        let python = python.cloned().unwrap_or_else(|| {
            let venv = PathBuf::from(".venv/bin/python");
            if venv.is_file() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
        let config_path =
            std::env::temp_dir().join(format!("ddpm-bench-unet-{}.json", std::process::id()));
        std::fs::write(&config_path, config.to_diffusers_json())?;
        let mut child = Command::new(&python)
            .arg(&script)
            .arg("--config")
            .arg(&config_path)
            .arg("--threads")
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let stdin = child.stdin.take().context("twin stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("twin stdout")?);
        let mut twin = Self {
            child,
            stdin,
            stdout,
            torch: String::new(),
        };
        let hello = twin.read()?;
        twin.torch = hello["torch"].as_str().unwrap_or("?").to_string();
        Ok(twin)
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            bail!("the PyTorch twin exited (see its messages above)");
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("the PyTorch twin said {line:?}"))?;
        if let Some(err) = value.get("error") {
            bail!("the PyTorch twin failed: {err}");
        }
        Ok(value)
    }

    fn ask(&mut self, request: &str, key: &str) -> Result<f64> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        self.read()?[key]
            .as_f64()
            .with_context(|| format!("the PyTorch twin's answer to {request:?} has no {key}"))
    }
}

impl Drop for Twin {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// Our matmul rate on `device`: the median of n³ f32 products (n = 1024 on the CPU, 8192 on
/// a GPU), in GFLOP/s.
fn sgemm_gflops(reps: usize, device: &Device) -> Result<f64> {
    let n = if device.is_cpu() { 1024 } else { 8192 };
    let mut rng = NoiseRng::new(2);
    let a = rng.randn((n, n), device)?;
    let b = rng.randn((n, n), device)?;
    a.matmul(&b)?;
    device.synchronize()?;
    let seconds = median(
        (0..reps.max(3))
            .map(|_| {
                let start = Instant::now();
                a.matmul(&b)?;
                device.synchronize()?;
                Ok(start.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?,
    );
    Ok(2.0 * (n * n * n) as f64 / seconds / 1e9)
}

impl BenchCommand {
    pub fn run(&self) -> Result<()> {
        if self.reps == 0 || self.sample_batch == 0 || self.batches.contains(&0) {
            bail!("--reps, --batch and --sample-batch must be at least 1");
        }
        ddpm_unet::cpu_ops::set_enabled(!self.candle_ops);
        let device = open_device(&self.device)?;
        let precision = match self.precision.as_str() {
            "f32" => Precision::F32,
            "bf16" if device.is_cpu() => {
                bail!("--precision bf16: needs a CUDA device (candle's CPU matmul has no bf16)")
            }
            "bf16" => Precision::Bf16,
            other => bail!("--precision {other}: expected f32 or bf16"),
        };
        if self.vs_pytorch && !device.is_cpu() {
            bail!("--vs-pytorch compares on the CPU: drop --device or use --device cpu");
        }
        let config = crate::config::model_from_spec(&self.config)?;
        let side = config.sample_size.unwrap_or(32);
        let threads = candle_core::utils::get_num_threads();
        let mut twin = if self.vs_pytorch {
            Some(Twin::start(self.python.as_ref(), &config, threads)?)
        } else {
            None
        };
        let ops = if self.candle_ops {
            "candle's ops"
        } else {
            "our CPU kernels"
        };
        let (where_, ops) = if device.is_cpu() {
            (format!("CPU, {threads} threads"), ops)
        } else {
            ("CUDA".to_string(), "candle's ops")
        };
        eprintln!(
            "U-Net {} at {side}×{side}, {where_}, {ops}, {}, median of {} (after a warm-up){}",
            self.config,
            precision.name(),
            self.reps,
            twin.as_ref()
                .map(|t| format!("; PyTorch {} interleaved", t.torch))
                .unwrap_or_default()
        );

        let mut rows: Vec<serde_json::Value> = Vec::new();
        let mut table: Vec<(String, f64, Option<f64>, &str)> = Vec::new();
        let mut train_main = None;
        let mut phases = Vec::new();
        let mut profiles = Vec::new();
        for &batch in &self.batches {
            let mut ours = OurTrainer::new(&config, batch, side, &device, precision)?;
            ours.step()?;
            let (mut mine, mut theirs, mut steps) = (Vec::new(), Vec::new(), Vec::new());
            let profiled = self.profile && train_main.is_none();
            if profiled {
                ddpm_unet::cpu_ops::profile::start();
            }
            for _ in 0..self.reps {
                let times = ours.step()?;
                tracing::debug!(batch, ?times, "training step");
                mine.push(times.total);
                steps.push(times);
                if let Some(twin) = twin.as_mut() {
                    theirs.push(twin.ask(&format!("train {batch}"), "seconds")?);
                }
            }
            if profiled {
                let total = steps.iter().map(|t| t.total).sum::<f64>();
                profiles.push(profile_report(
                    &format!("training step, batch {batch}"),
                    ddpm_unet::cpu_ops::profile::take(),
                    total,
                    self.reps,
                ));
            }
            let phase = |f: fn(&StepTimes) -> f64| median(steps.iter().map(f).collect()) * 1e3;
            let (forward_ms, backward_ms, update_ms) = (
                phase(|t| t.forward),
                phase(|t| t.backward),
                phase(|t| t.update),
            );
            phases.push(format!(
                "training step, batch {batch}: forward {forward_ms:.0} ms, backward {backward_ms:.0} ms, clipping + AdamW {update_ms:.0} ms (medians)"
            ));
            let ours_ips = batch as f64 / median(mine);
            let theirs_ips = (!theirs.is_empty()).then(|| batch as f64 / median(theirs));
            table.push((
                format!("train, batch {batch}"),
                ours_ips,
                theirs_ips,
                "images/s",
            ));
            rows.push(serde_json::json!({
                "what": "train", "batch": batch, "images_per_s": ours_ips,
                "pytorch_images_per_s": theirs_ips, "forward_ms": forward_ms,
                "backward_ms": backward_ms, "update_ms": update_ms,
            }));
            if train_main.is_none() {
                train_main = Some((batch, ours_ips, theirs_ips));
            }
        }
        let mut sampler =
            OurTrainer::new(&config, self.sample_batch, side, &device, Precision::F32)?;
        sampler.sample_step()?;
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        if self.profile {
            ddpm_unet::cpu_ops::profile::start();
        }
        for _ in 0..self.reps {
            let seconds = sampler.sample_step()?;
            tracing::debug!(batch = self.sample_batch, seconds, "sampling step");
            mine.push(seconds);
            if let Some(twin) = twin.as_mut() {
                theirs.push(twin.ask(&format!("sample {}", self.sample_batch), "seconds")?);
            }
        }
        if self.profile {
            profiles.push(profile_report(
                &format!("sampling step, batch {}", self.sample_batch),
                ddpm_unet::cpu_ops::profile::take(),
                mine.iter().sum(),
                self.reps,
            ));
        }
        let sample_ms = median(mine) * 1e3;
        let theirs_sample_ms = (!theirs.is_empty()).then(|| median(theirs) * 1e3);
        table.push((
            format!("sampling step, batch {}", self.sample_batch),
            sample_ms,
            theirs_sample_ms,
            "ms",
        ));
        let gflops = sgemm_gflops(self.reps, &device)?;
        let rss = peak_rss_mib();

        println!("{:<26} {:>12} {:>12} {:>8}", "", "ours", "pytorch", "ratio");
        for (what, ours, theirs, unit) in &table {
            let ratio = theirs.map(|t| if *unit == "ms" { t / ours } else { ours / t });
            println!(
                "{:<26} {:>12} {:>12} {:>8}  {unit}",
                what,
                format!("{ours:.2}"),
                theirs.map_or("-".into(), |t| format!("{t:.2}")),
                ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            );
        }
        for line in &phases {
            println!("{line}");
        }
        for report in &profiles {
            print!("{report}");
        }
        println!(
            "{:<26} {:>12.0} {:>12} {:>8}  MiB",
            "peak RSS", rss, "-", "-"
        );
        println!(
            "{:<26} {:>12.1} {:>12} {:>8}  GFLOP/s",
            if device.is_cpu() {
                "sgemm 1024³"
            } else {
                "sgemm 8192³"
            },
            gflops,
            "-",
            "-"
        );

        let mut report = serde_json::json!({
            "config": self.config, "threads": threads, "reps": self.reps,
            "device": if device.is_cpu() { "cpu" } else { "cuda" }, "precision": precision.name(),
            "kernels": if self.candle_ops { "candle" } else { "ddpm" },
            "results": rows,
            "sample_step_ms": sample_ms, "pytorch_sample_step_ms": theirs_sample_ms,
            "peak_rss_mib": rss, "sgemm_gflops": gflops,
        });
        if let (Some(twin), Some((batch, ours_ips, theirs_ips))) = (twin.as_mut(), train_main) {
            let flops = twin.ask(&format!("flops {batch}"), "flops")?;
            let per_image = flops / batch as f64;
            let achieved = ours_ips * per_image / 1e9;
            println!(
                "training step: {:.2} GFLOP per image (forward + backward, FlopCounterMode), {achieved:.1} GFLOP/s = {:.0}% of sgemm",
                per_image / 1e9,
                100.0 * achieved / gflops
            );
            report["gflop_per_image"] = serde_json::json!(per_image / 1e9);
            report["train_gflops"] = serde_json::json!(achieved);
            let theirs_ips = theirs_ips.unwrap_or(f64::NAN);
            let sample_ratio = theirs_sample_ms.map_or(f64::NAN, |t| t / sample_ms);
            println!(
                "train_images_per_s={ours_ips:.2} pytorch_train_images_per_s={theirs_ips:.2} train_ratio={:.2} sample_ratio={sample_ratio:.2}",
                ours_ips / theirs_ips
            );
        }
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}
