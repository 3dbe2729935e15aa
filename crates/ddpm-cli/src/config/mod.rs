//! The training configuration: one TOML file with the sections `[data]`, `[model]`,
//! `[diffusion]`, `[training]` and `[sampling]`. Every key has a default, so an empty file is
//! a valid configuration (the fashion-mnist setup); unknown keys and out-of-range values are
//! errors that name the key.

mod data;
mod diffusion;
mod model;
mod overrides;
mod sampling;
mod training;

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use data::{DataConfig, DataSource};
pub use diffusion::DiffusionConfig;
pub use model::ModelSpec;
pub use overrides::apply_override;
pub use sampling::{SamplerArgs, SamplerKind, SamplingConfig};
pub use training::{TrainingConfig, TrainingPrecision};

/// The U-Net a `--config` value names: a model preset (`fashion-mnist`, …), or a run config
/// file (`.toml`) whose model is used.
pub fn model_from_spec(spec: &str) -> Result<ddpm_unet::UNetConfig> {
    if spec.ends_with(".toml") {
        return RunConfig::load(std::path::Path::new(spec), &[])?
            .model
            .resolve();
    }
    Ok(ddpm_unet::UNetConfig::preset(spec)?)
}

/// A whole training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The run's name: run directories are `runs/<name>-<timestamp>`. Defaults to the
    /// config file's stem.
    pub name: String,
    /// Where the images come from.
    pub data: DataConfig,
    /// The network: a preset name (`model = "fashion-mnist"`) or a full `[model]` table in
    /// diffusers' `UNet2DModel` vocabulary.
    pub model: ModelSpec,
    /// The forward process and the loss.
    pub diffusion: DiffusionConfig,
    /// The optimisation.
    pub training: TrainingConfig,
    /// The sampler used for the grids written during training and by `ddpm sample`.
    pub sampling: SamplingConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "ddpm".into(),
            data: DataConfig::default(),
            model: ModelSpec::default(),
            diffusion: DiffusionConfig::default(),
            training: TrainingConfig::default(),
            sampling: SamplingConfig::default(),
        }
    }
}

impl RunConfig {
    /// Parses TOML text, applies `key=value` overrides, and validates.
    /// `origin` names the source in error messages.
    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).with_context(|| format!("{origin}: not valid TOML"))?;
        for item in overrides {
            apply_override(&mut table, item).with_context(|| format!("--set {item}"))?;
        }
        // serde_path_to_error keeps the key of a failing value (`training.precision: unknown
        // variant …`), which deserialising a table (rather than text) would lose.
        let config: RunConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().message().trim().to_string();
                if path.is_empty() || path == "." {
                    anyhow::anyhow!("{message}")
                } else {
                    anyhow::anyhow!("{path}: {message}")
                }
            })
            .with_context(|| format!("{origin}: invalid configuration"))?;
        config
            .validate()
            .with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(config)
    }

    /// Reads a config file (see [`from_toml`](Self::from_toml)); `name` defaults to the
    /// file's stem.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let has_name = toml::from_str::<toml::Table>(&text)
            .map(|t| t.contains_key("name"))
            .unwrap_or(false)
            || overrides.iter().any(|o| o.trim_start().starts_with("name"));
        let mut config = Self::from_toml(&text, &path.display().to_string(), overrides)?;
        if !has_name {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                config.name = stem.to_string();
            }
        }
        Ok(config)
    }

    /// The configuration as TOML, every key written out (the run's `config.toml`).
    pub fn to_toml(&self) -> Result<String> {
        let mut resolved = self.clone();
        resolved.model = ModelSpec::Config(self.model.resolve()?);
        Ok(toml::to_string(&resolved)?)
    }

    /// Checks every value's range and the sections' agreement, naming the key at fault.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "name: {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.name
            );
        }
        self.data.validate()?;
        let model = self.model.resolve()?;
        self.diffusion.validate()?;
        self.training.validate()?;
        self.sampling.validate(self.diffusion.timesteps)?;
        if model.in_channels != self.data.channels {
            bail!(
                "model.in_channels = {} but data.channels = {}",
                model.in_channels,
                self.data.channels
            );
        }
        if model.out_channels != model.in_channels {
            bail!(
                "model.out_channels = {} must equal model.in_channels = {} (the network predicts noise of the image's shape)",
                model.out_channels,
                model.in_channels
            );
        }
        let side = self.data.image_size + 2 * self.data.pad;
        model
            .check_input_size(side, side)
            .with_context(|| format!("data.image_size + 2·data.pad = {side}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!(
            "{:#}",
            RunConfig::from_toml(text, "test.toml", &[]).unwrap_err()
        )
    }

    #[test]
    fn empty_file_is_the_default() {
        let config = RunConfig::from_toml("", "empty", &[]).unwrap();
        assert_eq!(config, RunConfig::default());
    }

    #[test]
    fn resolved_config_round_trips() {
        let config = RunConfig::from_toml(
            "[diffusion.schedule]\nkind = \"cosine\"\n[sampling]\nsampler = \"ddim\"\nsteps = 20",
            "t",
            &[],
        )
        .unwrap();
        let text = config.to_toml().unwrap();
        let back = RunConfig::from_toml(&text, "resolved", &[]).unwrap();
        assert_eq!(back.to_toml().unwrap(), text);
        assert_eq!(
            back.model.resolve().unwrap(),
            config.model.resolve().unwrap()
        );
        assert_eq!(back.diffusion, config.diffusion);
        assert_eq!(back.sampling, config.sampling);
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(err("[training]\nlearning_rate = 1e-3").contains("learning_rate"));
        assert!(err("[data]\nsoruce = \"mnist\"").contains("soruce"));
        assert!(err("bogus = 1").contains("bogus"));
        assert!(err("[model]\nwidths = [1]").contains("widths"));
    }

    #[test]
    fn out_of_range_values_are_named() {
        assert!(err("[training]\nlr = -1.0").contains("training.lr"));
        assert!(err("[training]\nbatch_size = 0").contains("training.batch_size"));
        assert!(err("[training]\nema_decay = 1.5").contains("training.ema_decay"));
        assert!(err("[diffusion]\ntimesteps = 0").contains("diffusion.timesteps"));
        assert!(err("[sampling]\nsteps = 5000").contains("sampling.steps"));
        assert!(err("[data]\nchannels = 3").contains("data.channels"));
        assert!(err("model = \"no-such-model\"").contains("no-such-model"));
        assert!(err("[training]\nsteps = 10\nepochs = 2").contains("training.epochs"));
    }

    #[test]
    fn overrides_set_dotted_keys() {
        let config = RunConfig::from_toml(
            "",
            "t",
            &[
                "training.lr=1e-3".into(),
                "sampling.sampler=ddim".into(),
                "model.dropout=0.1".into(),
                "diffusion.schedule.kind=\"cosine\"".into(),
            ],
        )
        .unwrap();
        assert_eq!(config.training.lr, 1e-3);
        assert_eq!(config.sampling.sampler, SamplerKind::Ddim);
        assert_eq!(config.model.resolve().unwrap().dropout, 0.1);
        assert!(matches!(
            config.diffusion.schedule,
            ddpm_schedule::BetaSchedule::Cosine { .. }
        ));
        let bad = RunConfig::from_toml("", "t", &["training.lr".into()]).unwrap_err();
        assert!(format!("{bad:#}").contains("key=value"));
    }

    #[test]
    fn shipped_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
            }
        }
    }
}
