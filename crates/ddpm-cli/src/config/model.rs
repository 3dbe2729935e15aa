//! `model`: a preset name or a full `UNetConfig` table.

use anyhow::{Context, Result};
use ddpm_unet::UNetConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `model = "fashion-mnist"` or a `[model]` table (diffusers' `UNet2DModel` keys, each
/// defaulting to the fashion-mnist preset's value).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// A named preset (`fashion-mnist`, `cifar10-ddpm`).
    Preset(String),
    /// A full configuration.
    Config(UNetConfig),
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self::Preset("fashion-mnist".into())
    }
}

impl ModelSpec {
    /// The configuration, checked.
    pub fn resolve(&self) -> Result<UNetConfig> {
        let config = match self {
            Self::Preset(name) => UNetConfig::preset(name).context("model")?,
            Self::Config(config) => config.clone(),
        };
        config.validate().context("model")?;
        Ok(config)
    }
}

impl Serialize for ModelSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Preset(name) => serializer.serialize_str(name),
            Self::Config(config) => config.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(deserializer)? {
            toml::Value::String(name) => Ok(Self::Preset(name)),
            value @ toml::Value::Table(_) => value
                .try_into::<UNetConfig>()
                .map(Self::Config)
                .map_err(|e| D::Error::custom(format!("model: {}", e.message().trim()))),
            other => Err(D::Error::custom(format!(
                "model: expected a preset name or a table, found {}",
                other.type_str()
            ))),
        }
    }
}
