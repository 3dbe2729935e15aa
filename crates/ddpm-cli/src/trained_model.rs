//! Trained models on disk: our training checkpoints, and diffusers directories (a
//! `DDPMPipeline` with `unet/` and `scheduler/`, or a bare `UNet2DModel` directory), which is
//! also the format a finished run exports its EMA weights in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ddpm_diffusion::{Objective, ReverseVariance};
use ddpm_schedule::BetaSchedule;
use ddpm_train::Checkpoint;
use ddpm_unet::{load_weights, UNet, CONFIG_FILE};

use crate::config::{ModelSpec, RunConfig};

/// The checkpoint metadata entry holding the run's resolved config.
pub const CONFIG_ENTRY: &str = "config";

/// Our own copy of the resolved config inside an exported pipeline directory: it keeps what
/// `scheduler_config.json` cannot say (a sigmoid schedule, the sampler used in training).
pub const RUN_CONFIG_FILE: &str = "ddpm.toml";

/// A network ready to sample, with the configuration it was trained under.
pub struct TrainedModel {
    /// The network (EMA weights for our checkpoints).
    pub unet: UNet,
    /// The run's configuration (for a foreign diffusers model: its U-Net and schedule, the
    /// rest default).
    pub config: RunConfig,
}

/// Loads a training checkpoint (`.safetensors` file; its EMA weights) or a diffusers
/// directory.
pub fn load_trained_model(path: &Path, device: &Device) -> Result<TrainedModel> {
    if path.is_dir() {
        load_diffusers_dir(path, device)
    } else if path.is_file() {
        load_checkpoint(path, device)
    } else {
        bail!(
            "{}: no such checkpoint file or model directory",
            path.display()
        )
    }
}

/// The resolved run config a `ddpm train` checkpoint carries in its metadata.
pub fn checkpoint_config(path: &Path, checkpoint: &Checkpoint) -> Result<RunConfig> {
    let text = checkpoint.extra.get(CONFIG_ENTRY).with_context(|| {
        format!(
            "{}: no `{CONFIG_ENTRY}` entry in the metadata: not written by `ddpm train`",
            path.display()
        )
    })?;
    RunConfig::from_toml(text, &format!("{} (its config)", path.display()), &[])
}

fn load_checkpoint(path: &Path, device: &Device) -> Result<TrainedModel> {
    let checkpoint = Checkpoint::load(path, device)?;
    let config = checkpoint_config(path, &checkpoint)?;
    let unet_config = config.model.resolve()?;
    let vb = VarBuilder::from_tensors(checkpoint.ema, DType::F32, device);
    let unet = UNet::new(vb, &unet_config)
        .with_context(|| format!("{}: EMA weights do not fit the model", path.display()))?;
    Ok(TrainedModel { unet, config })
}

fn load_diffusers_dir(dir: &Path, device: &Device) -> Result<TrainedModel> {
    let (unet_dir, scheduler_file) = if dir.join("unet").join(CONFIG_FILE).is_file() {
        (
            dir.join("unet"),
            Some(dir.join("scheduler").join("scheduler_config.json")),
        )
    } else if dir.join(CONFIG_FILE).is_file() {
        (dir.to_path_buf(), None)
    } else {
        bail!(
            "{}: not a diffusers model directory (no config.json, no unet/config.json)",
            dir.display()
        );
    };
    let ours = dir.join(RUN_CONFIG_FILE);
    let mut config = if ours.is_file() {
        RunConfig::load(&ours, &[])?
    } else {
        let mut config = RunConfig::default();
        if let Some(file) = scheduler_file.filter(|f| f.is_file()) {
            read_scheduler_config(&file, &mut config)?;
        }
        config
    };
    let (trained, varmap) = UNet::from_diffusers(&unet_dir, device)?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("the model's variables are poisoned by a panic"))?
        .clone();
    let unet = frozen(trained.config(), &vars, device)?;
    config.model = ModelSpec::Config(unet.config().clone());
    Ok(TrainedModel { unet, config })
}

/// The network on plain tensors (detached copies of `vars`) instead of `Var`s: a model that
/// is only sampled must not record an autograd graph of every forward (memory and time for
/// nothing).
pub fn frozen<'a>(
    config: &ddpm_unet::UNetConfig,
    vars: impl IntoIterator<Item = (&'a String, &'a candle_core::Var)>,
    device: &Device,
) -> Result<UNet> {
    let weights: HashMap<String, Tensor> = vars
        .into_iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(weights, DType::F32, device);
    Ok(UNet::new(vb, config)?)
}

/// Takes the schedule and objective from a diffusers `scheduler_config.json`.
fn read_scheduler_config(path: &Path, config: &mut RunConfig) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let field = |name: &str| json.get(name);
    let number = |name: &str, default: f64| -> Result<f64> {
        match field(name) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .with_context(|| format!("{}: {name} must be a number", path.display())),
        }
    };
    if let Some(t) = field("num_train_timesteps") {
        config.diffusion.timesteps = t.as_u64().with_context(|| {
            format!("{}: num_train_timesteps must be an integer", path.display())
        })? as usize;
    }
    let (beta_start, beta_end) = (number("beta_start", 1e-4)?, number("beta_end", 0.02)?);
    let kind = field("beta_schedule")
        .and_then(|v| v.as_str())
        .unwrap_or("linear");
    config.diffusion.schedule = match kind {
        "linear" => BetaSchedule::Linear {
            beta_start,
            beta_end,
        },
        "scaled_linear" => BetaSchedule::ScaledLinear {
            beta_start,
            beta_end,
        },
        "squaredcos_cap_v2" => BetaSchedule::Cosine {
            s: 0.008,
            max_beta: 0.999,
        },
        other => bail!(
            "{}: beta_schedule {other:?} is not supported (linear, scaled_linear, squaredcos_cap_v2)",
            path.display()
        ),
    };
    config.diffusion.objective = match field("prediction_type").and_then(|v| v.as_str()) {
        None | Some("epsilon") => Objective::Epsilon,
        Some("sample") => Objective::X0,
        Some("v_prediction") => Objective::V,
        Some(other) => bail!(
            "{}: prediction_type {other:?} is not supported",
            path.display()
        ),
    };
    if let Some(kind) = field("variance_type").and_then(|v| v.as_str()) {
        config.sampling.variance = match kind {
            "fixed_large" => ReverseVariance::Beta,
            _ => ReverseVariance::PosteriorVariance,
        };
    }
    if let Some(clip) = field("clip_sample").and_then(|v| v.as_bool()) {
        config.sampling.clip_x0 = clip;
    }
    Ok(())
}

/// diffusers' name and parameters of a schedule, when it has one.
fn diffusers_schedule(schedule: BetaSchedule) -> Option<(&'static str, f64, f64)> {
    match schedule {
        BetaSchedule::Linear {
            beta_start,
            beta_end,
        } => Some(("linear", beta_start, beta_end)),
        BetaSchedule::ScaledLinear {
            beta_start,
            beta_end,
        } => Some(("scaled_linear", beta_start, beta_end)),
        BetaSchedule::Cosine { s, max_beta } if s == 0.008 && max_beta == 0.999 => {
            Some(("squaredcos_cap_v2", 1e-4, 0.02))
        }
        _ => None,
    }
}

/// Writes `weights` as a diffusers `DDPMPipeline` directory (`model_index.json`,
/// `unet/`, `scheduler/`) plus our `ddpm.toml`, built in `<dir>.tmp` and renamed into place.
pub fn export_pipeline(
    dir: &Path,
    config: &RunConfig,
    weights: HashMap<String, Tensor>,
    device: &Device,
) -> Result<()> {
    let unet_config = config.model.resolve()?;
    let tmp = PathBuf::from(format!("{}.tmp", dir.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let write = |path: PathBuf, text: String| -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    let (unet, varmap) = UNet::init(&unet_config, DType::F32, device)?;
    load_weights(&varmap, weights)?;
    unet.save_diffusers(&varmap, tmp.join("unet"))?;
    write(
        tmp.join("model_index.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "_class_name": "DDPMPipeline",
            "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        }))?,
    )?;
    if let Some((name, beta_start, beta_end)) = diffusers_schedule(config.diffusion.schedule) {
        let prediction_type = match config.diffusion.objective {
            Objective::Epsilon => "epsilon",
            Objective::X0 => "sample",
            Objective::V => "v_prediction",
        };
        write(
            tmp.join("scheduler").join("scheduler_config.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "_class_name": "DDPMScheduler",
                "_diffusers_version": "0.42.1",
                "num_train_timesteps": config.diffusion.timesteps,
                "beta_schedule": name,
                "beta_start": beta_start,
                "beta_end": beta_end,
                "prediction_type": prediction_type,
                "variance_type": match config.sampling.variance {
                    ReverseVariance::Beta => "fixed_large",
                    ReverseVariance::PosteriorVariance => "fixed_small",
                },
                "clip_sample": config.sampling.clip_x0,
                "clip_sample_range": 1.0,
            }))?,
        )?;
    } else {
        tracing::warn!("the schedule has no diffusers equivalent: scheduler/ not written");
    }
    write(tmp.join(RUN_CONFIG_FILE), config.to_toml()?)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = include_str!("../tests/fixtures/tiny.toml");

    /// A loaded pipeline samples on plain tensors: its forward records no autograd graph,
    /// where the training-side loader (`UNet::from_diffusers`, on `Var`s) does.
    #[test]
    fn a_loaded_pipeline_records_no_graph() {
        let device = Device::Cpu;
        let config = RunConfig::from_toml(TINY, "tiny", &[]).unwrap();
        let (_, varmap) =
            UNet::init(&config.model.resolve().unwrap(), DType::F32, &device).unwrap();
        let weights = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let pipeline = dir.path().join("pipeline");
        export_pipeline(&pipeline, &config, weights, &device).unwrap();

        let x = Tensor::zeros((1, 1, 8, 8), DType::F32, &device).unwrap();
        let t = Tensor::new(&[5u32], &device).unwrap();
        let (training_side, _) = UNet::from_diffusers(pipeline.join("unet"), &device).unwrap();
        assert!(training_side
            .forward(&x, &t, None, false)
            .unwrap()
            .track_op());
        let model = load_trained_model(&pipeline, &device).unwrap();
        let y = model.unet.forward(&x, &t, None, false).unwrap();
        assert!(!y.track_op());
        assert_eq!(y.dims(), x.dims());
    }
}
