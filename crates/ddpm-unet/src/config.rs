//! The U-Net's configuration, in diffusers' vocabulary so that `config.json` files of
//! `UNet2DModel` read directly.

use serde::{Deserialize, Serialize};

use crate::{Result, UNetError};

/// A down block: residual blocks, with self-attention after each for the `Attn` kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockKind {
    /// `DownBlock2D`: residual blocks only.
    DownBlock2D,
    /// `AttnDownBlock2D`: each residual block followed by self-attention.
    AttnDownBlock2D,
}

/// An up block: residual blocks over the concatenated skip connections, with
/// self-attention after each for the `Attn` kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockKind {
    /// `UpBlock2D`: residual blocks only.
    UpBlock2D,
    /// `AttnUpBlock2D`: each residual block followed by self-attention.
    AttnUpBlock2D,
}

/// The network ε_θ(x_t, t[, y]) of DDPM: diffusers' `UNet2DModel` with positional time
/// embeddings, "default" time conditioning, convolutional down- and upsampling.
///
/// Field names and meanings are diffusers', so a diffusers `config.json` deserialises into
/// this type (see [`UNetConfig::from_diffusers_json`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// Channels of the input image (1 for grayscale, 3 for RGB).
    pub in_channels: usize,
    /// Channels of the prediction (the same as the input for ε-prediction).
    pub out_channels: usize,
    /// Width of each resolution level, from the input resolution down. There are
    /// `len()` levels and `len() − 1` downsamplings by 2.
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per down block (up blocks have one more, for the extra skip).
    pub layers_per_block: usize,
    /// The kind of each down block, from the input resolution down.
    pub down_block_types: Vec<DownBlockKind>,
    /// The kind of each up block, from the lowest resolution up.
    pub up_block_types: Vec<UpBlockKind>,
    /// Whether the mid block (resnet, attention, resnet) has its attention.
    pub add_attention: bool,
    /// Groups of every GroupNorm; must divide every width.
    pub norm_num_groups: usize,
    /// ε of every GroupNorm.
    pub norm_eps: f64,
    /// Dropout probability inside the residual blocks, during training.
    pub dropout: f64,
    /// Order of the sinusoidal embedding's halves: [cos, sin] when true, [sin, cos] when
    /// false (the DDPM release uses false).
    pub flip_sin_to_cos: bool,
    /// Frequencies are exp(−ln(10000)·i/(half − freq_shift)); the DDPM release uses 1.
    pub freq_shift: usize,
    /// Channels per attention head; `None` (null in JSON, omitted in TOML) gives one head
    /// over all channels, as in the DDPM release.
    #[serde(default)]
    pub attention_head_dim: Option<usize>,
    /// Padding of the stride-2 downsampling convolutions: 1 (all sides) or 0 (diffusers
    /// then pads right and bottom by one, as the DDPM release did).
    pub downsample_padding: usize,
    /// Number of class embeddings for class-conditional models; `None` for unconditional.
    /// For classifier-free guidance use one more than the number of classes: the last
    /// label, [`UNetConfig::null_class`], means "no class".
    pub num_class_embeds: Option<usize>,
    /// Side of the images the model was trained on (informational; any valid size runs).
    pub sample_size: Option<usize>,
}

impl Default for UNetConfig {
    /// The fashion-mnist preset.
    fn default() -> Self {
        Self::fashion_mnist()
    }
}

impl UNetConfig {
    /// A 2.69 M-parameter model for 28×28 grayscale images (Fashion-MNIST): widths 32, 64,
    /// 96 at 28, 14 and 7 pixels, attention (heads of 32 channels) at 14×14 and 7×7 and in
    /// the middle.
    pub fn fashion_mnist() -> Self {
        Self {
            in_channels: 1,
            out_channels: 1,
            block_out_channels: vec![32, 64, 96],
            layers_per_block: 2,
            down_block_types: vec![
                DownBlockKind::DownBlock2D,
                DownBlockKind::AttnDownBlock2D,
                DownBlockKind::AttnDownBlock2D,
            ],
            up_block_types: vec![
                UpBlockKind::AttnUpBlock2D,
                UpBlockKind::AttnUpBlock2D,
                UpBlockKind::UpBlock2D,
            ],
            add_attention: true,
            norm_num_groups: 8,
            norm_eps: 1e-5,
            dropout: 0.0,
            flip_sin_to_cos: true,
            freq_shift: 0,
            attention_head_dim: Some(32),
            downsample_padding: 1,
            num_class_embeds: None,
            sample_size: Some(28),
        }
    }

    /// The DDPM paper's CIFAR-10 model (Ho et al. 2020, appendix B), as converted to
    /// diffusers in `google/ddpm-cifar10-32`: widths 128·(1, 2, 2, 2), two residual blocks
    /// per level, attention at 16×16, dropout 0.1, 35.7 M parameters.
    pub fn cifar10_ddpm() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 256, 256],
            layers_per_block: 2,
            down_block_types: vec![
                DownBlockKind::DownBlock2D,
                DownBlockKind::AttnDownBlock2D,
                DownBlockKind::DownBlock2D,
                DownBlockKind::DownBlock2D,
            ],
            up_block_types: vec![
                UpBlockKind::UpBlock2D,
                UpBlockKind::UpBlock2D,
                UpBlockKind::AttnUpBlock2D,
                UpBlockKind::UpBlock2D,
            ],
            add_attention: true,
            norm_num_groups: 32,
            norm_eps: 1e-6,
            dropout: 0.1,
            flip_sin_to_cos: false,
            freq_shift: 1,
            attention_head_dim: None,
            downsample_padding: 0,
            num_class_embeds: None,
            sample_size: Some(32),
        }
    }

    /// A preset by name: `fashion-mnist` or `cifar10-ddpm`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "fashion-mnist" => Ok(Self::fashion_mnist()),
            "cifar10-ddpm" => Ok(Self::cifar10_ddpm()),
            other => Err(UNetError::Config(format!(
                "unknown model preset {other:?}; known: fashion-mnist, cifar10-ddpm"
            ))),
        }
    }

    /// Number of resolution levels.
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Width of the time embedding: 4 × the first level's width.
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels.first().copied().unwrap_or(0) * 4
    }

    /// The label meaning "no class" for classifier-free guidance: the last embedding.
    pub fn null_class(&self) -> Option<u32> {
        self.num_class_embeds.map(|n| n.saturating_sub(1) as u32)
    }

    /// Channels per head for attention over `channels` channels.
    pub(crate) fn head_dim(&self, channels: usize) -> usize {
        self.attention_head_dim.unwrap_or(channels)
    }

    /// Checks that the configuration describes a buildable network; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(UNetError::Config(msg));
        let levels = self.levels();
        if levels == 0 {
            return fail("block_out_channels must name at least one level".into());
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return fail(format!(
                "down_block_types ({}) and up_block_types ({}) must both have one entry per level of block_out_channels ({levels})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.layers_per_block == 0 {
            return fail(
                "in_channels, out_channels and layers_per_block must be at least 1".into(),
            );
        }
        if self.norm_num_groups == 0 {
            return fail("norm_num_groups must be at least 1".into());
        }
        for &c in &self.block_out_channels {
            if c == 0 || c % self.norm_num_groups != 0 {
                return fail(format!(
                    "block_out_channels entry {c} is not a positive multiple of norm_num_groups = {}",
                    self.norm_num_groups
                ));
            }
            let head = self.head_dim(c);
            if head == 0 || c % head != 0 {
                return fail(format!(
                    "attention_head_dim = {head} does not divide the width {c}"
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        let positive_eps = self.norm_eps.is_finite() && self.norm_eps > 0.0;
        if !positive_eps {
            return fail(format!("norm_eps = {} must be positive", self.norm_eps));
        }
        if self.downsample_padding > 1 {
            return fail(format!(
                "downsample_padding = {} must be 0 or 1",
                self.downsample_padding
            ));
        }
        let half = self.block_out_channels[0] / 2;
        if self.freq_shift >= half.max(1) {
            return fail(format!(
                "freq_shift = {} must be less than half the first width ({half})",
                self.freq_shift
            ));
        }
        if self.num_class_embeds == Some(0) {
            return fail("num_class_embeds must be at least 1 when given".into());
        }
        Ok(())
    }

    /// Checks that an input of `height × width` pixels can pass through the network: both
    /// must be divisible by 2^(levels − 1) so that skip connections line up.
    pub fn check_input_size(&self, height: usize, width: usize) -> Result<()> {
        let factor = 1usize << (self.levels() - 1);
        if height == 0
            || width == 0
            || !height.is_multiple_of(factor)
            || !width.is_multiple_of(factor)
        {
            return Err(UNetError::InputSize {
                height,
                width,
                levels: self.levels(),
                factor,
            });
        }
        Ok(())
    }

    /// Reads a diffusers `UNet2DModel` `config.json`. Options this implementation does not
    /// have (other time embeddings, "scale_shift" conditioning, resnet up/downsampling,
    /// other activations) are errors that name the key and value.
    pub fn from_diffusers_json(text: &str) -> Result<Self> {
        let raw: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| UNetError::Config(format!("config.json: {e}")))?;
        let supported: [(&str, &[&str]); 7] = [
            ("act_fn", &["silu", "swish"]),
            ("time_embedding_type", &["positional"]),
            ("resnet_time_scale_shift", &["default"]),
            ("downsample_type", &["conv"]),
            ("upsample_type", &["conv"]),
            ("mid_block_type", &["UNetMidBlock2D"]),
            ("_class_name", &["UNet2DModel"]),
        ];
        for (key, allowed) in supported {
            if let Some(value) = raw.get(key).filter(|v| !v.is_null()) {
                let text = value.as_str().unwrap_or_default();
                if !allowed.contains(&text) {
                    return Err(UNetError::Config(format!(
                        "config.json: {key} = {value} is not supported (supported: {})",
                        allowed.join(", ")
                    )));
                }
            }
        }
        for (key, neutral) in [
            ("center_input_sample", serde_json::Value::Bool(false)),
            ("mid_block_scale_factor", serde_json::json!(1)),
        ] {
            if let Some(value) = raw.get(key) {
                if value != &neutral && value.as_f64() != neutral.as_f64() {
                    return Err(UNetError::Config(format!(
                        "config.json: {key} = {value} is not supported"
                    )));
                }
            }
        }
        // Keys that may only restate what this implementation derives.
        let first_width = raw
            .get("block_out_channels")
            .and_then(|v| v.get(0))
            .and_then(|v| v.as_u64());
        for (key, derived) in [
            (
                "attn_norm_num_groups",
                raw.get("norm_num_groups")
                    .and_then(|v| v.as_u64())
                    .or(Some(32)),
            ),
            ("time_embedding_dim", first_width.map(|w| 4 * w)),
        ] {
            if let Some(value) = raw.get(key).filter(|v| !v.is_null()) {
                if value.as_u64() != derived {
                    return Err(UNetError::Config(format!(
                        "config.json: {key} = {value} is not supported"
                    )));
                }
            }
        }
        if let Some(value) = raw.get("class_embed_type").filter(|v| !v.is_null()) {
            return Err(UNetError::Config(format!(
                "config.json: class_embed_type = {value} is not supported"
            )));
        }
        let known = [
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "down_block_types",
            "up_block_types",
            "add_attention",
            "norm_num_groups",
            "norm_eps",
            "dropout",
            "flip_sin_to_cos",
            "freq_shift",
            "attention_head_dim",
            "downsample_padding",
            "num_class_embeds",
            "sample_size",
        ];
        let ours: serde_json::Map<String, serde_json::Value> = raw
            .into_iter()
            .filter(|(k, _)| known.contains(&k.as_str()))
            .collect();
        // diffusers' defaults where the file omits a key.
        let mut config = Self {
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0,
            attention_head_dim: Some(8),
            downsample_padding: 1,
            dropout: 0.0,
            sample_size: None,
            num_class_embeds: None,
            ..Self::fashion_mnist()
        };
        let mut merged =
            serde_json::to_value(&config).map_err(|e| UNetError::Config(e.to_string()))?;
        if let Some(map) = merged.as_object_mut() {
            map.extend(ours);
        }
        config = serde_json::from_value(merged)
            .map_err(|e| UNetError::Config(format!("config.json: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// This configuration as a diffusers `config.json` for `UNet2DModel`.
    pub fn to_diffusers_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("_class_name".into(), "UNet2DModel".into());
            map.insert("act_fn".into(), "silu".into());
            map.insert("time_embedding_type".into(), "positional".into());
            map.insert("center_input_sample".into(), false.into());
            map.insert("mid_block_scale_factor".into(), 1.into());
            map.insert("resnet_time_scale_shift".into(), "default".into());
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}
