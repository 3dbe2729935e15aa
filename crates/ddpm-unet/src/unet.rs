//! The whole network, and its weights in diffusers' layout.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder, VarMap};

use crate::blocks::{DownBlock, MidBlock, UpBlock, UpChannels};
use crate::embeddings::{timestep_embedding, TimestepEmbedding};
use crate::layers::{Conv2d, GroupNorm};
use crate::resnet::conv3x3;
use crate::{DownBlockKind, Result, UNetConfig, UNetError, UpBlockKind};

/// The file names of a diffusers model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a diffusers model directory.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// ε_θ(x_t, t[, y]): diffusers' `UNet2DModel`, module for module and name for name.
#[derive(Debug, Clone)]
pub struct UNet {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<Embedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    /// The network for `config`, with weights under `vb` named as in diffusers
    /// (`conv_in`, `time_embedding.linear_1`, `down_blocks.0.resnets.1.norm1`, …).
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        config.validate()?;
        let cfg = config;
        let widths = &cfg.block_out_channels;
        let levels = cfg.levels();
        let temb = cfg.time_embed_dim();
        let class_embedding = match cfg.num_class_embeds {
            Some(n) => Some(candle_nn::embedding(n, temb, vb.pp("class_embedding"))?),
            None => None,
        };
        let mut down_blocks = Vec::with_capacity(levels);
        let mut c_out = widths[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let c_in = c_out;
            c_out = widths[i];
            let attention = *kind == DownBlockKind::AttnDownBlock2D;
            down_blocks.push(DownBlock::new(
                vb.pp("down_blocks").pp(i),
                cfg,
                c_in,
                c_out,
                attention,
                i + 1 < levels,
            )?);
        }
        let reversed: Vec<usize> = widths.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(levels);
        let mut c_out = reversed[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let ch = UpChannels {
                prev_output_channels: c_out,
                out_channels: reversed[i],
                in_channels: reversed[(i + 1).min(levels - 1)],
            };
            c_out = ch.out_channels;
            let attention = *kind == UpBlockKind::AttnUpBlock2D;
            up_blocks.push(UpBlock::new(
                vb.pp("up_blocks").pp(i),
                cfg,
                ch,
                attention,
                i + 1 < levels,
            )?);
        }
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), cfg.in_channels, widths[0], 1, 1)?,
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), widths[0], temb)?,
            class_embedding,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), cfg, widths[levels - 1])?,
            up_blocks,
            conv_norm_out: GroupNorm::new(
                cfg.norm_num_groups,
                widths[0],
                cfg.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv3x3(vb.pp("conv_out"), widths[0], cfg.out_channels, 1, 1)?,
            config: config.clone(),
        })
    }

    /// A freshly initialised network of `dtype` on `device`, with its variables (for training).
    pub fn init(config: &UNetConfig, dtype: DType, device: &Device) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let model = Self::new(VarBuilder::from_varmap(&varmap, dtype, device), config)?;
        Ok((model, varmap))
    }

    /// The configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The prediction for `x` (B, C, H, W) at timesteps `t` (B,) (the 0-based index, any
    /// numeric dtype), with class labels `y` (u32, (B,)) for class-conditional models.
    /// Dropout is active only when `train`.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.config.check_input_size(h, w)?;
        let dtype = x.dtype();
        let cfg = &self.config;
        let t_emb = timestep_embedding(
            t,
            cfg.block_out_channels[0],
            cfg.flip_sin_to_cos,
            cfg.freq_shift,
        )?
        .to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        match (&self.class_embedding, y) {
            (Some(embedding), Some(y)) => emb = (emb + embedding.forward(y)?)?,
            (Some(_), None) => {
                return Err(UNetError::Config(
                    "this model is class-conditional: class labels are required (use the null class for none)".into(),
                ))
            }
            (None, Some(_)) => return Err(UNetError::Config("this model has no class embedding; pass no labels".into())),
            (None, None) => {}
        }

        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            h = block.forward(&h, &emb, train, &mut skips)?;
        }
        h = self.mid_block.forward(&h, &emb, train)?;
        for block in &self.up_blocks {
            h = block.forward(&h, &emb, train, &mut skips)?;
        }
        let h = self.conv_norm_out.forward_silu(&h)?;
        Ok(self.conv_out.forward(&h)?)
    }

    /// Loads a diffusers model directory (`config.json` and
    /// `diffusion_pytorch_model.safetensors`), such as the converted DDPM checkpoints; the
    /// deprecated attention names of older conversions (`query`, `key`, `value`,
    /// `proj_attn`) are accepted.
    pub fn from_diffusers(dir: impl AsRef<Path>, device: &Device) -> Result<(Self, VarMap)> {
        let dir = dir.as_ref();
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| UNetError::File {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let config = UNetConfig::from_diffusers_json(&text).map_err(|e| UNetError::File {
            path: config_path,
            reason: e.to_string(),
        })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let tensors =
            candle_core::safetensors::load(&weights_path, device).map_err(|e| UNetError::File {
                path: weights_path.clone(),
                reason: e.to_string(),
            })?;
        let (model, varmap) = Self::init(&config, DType::F32, device)?;
        load_weights(&varmap, rename_deprecated(tensors)).map_err(|e| UNetError::File {
            path: weights_path,
            reason: e.to_string(),
        })?;
        Ok((model, varmap))
    }

    /// Writes `varmap` (this model's variables) as a diffusers model directory that
    /// `UNet2DModel.from_pretrained` reads, through temporary files and renames.
    pub fn save_diffusers(&self, varmap: &VarMap, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let file_error = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| UNetError::File {
                path,
                reason: e.to_string(),
            }
        };
        std::fs::create_dir_all(dir).map_err(file_error(dir))?;
        let weights = dir.join(WEIGHTS_FILE);
        let tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
        let tensors: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .map_err(|_| UNetError::Config("variable map lock poisoned".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, &weights).map_err(file_error(&weights))?;
        let config = dir.join(CONFIG_FILE);
        let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
        std::fs::write(&tmp, self.config.to_diffusers_json()).map_err(file_error(&tmp))?;
        std::fs::rename(&tmp, &config).map_err(file_error(&config))?;
        Ok(())
    }
}

/// Sets every variable of `varmap` from `tensors`. Every variable must be present with its
/// shape, and every tensor must be a variable: a missing, unexpected or misshapen weight is
/// an error naming it.
pub fn load_weights(varmap: &VarMap, tensors: HashMap<String, Tensor>) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| UNetError::Config("variable map lock poisoned".into()))?;
    let mut unexpected: Vec<&String> = tensors.keys().filter(|k| !data.contains_key(*k)).collect();
    unexpected.sort();
    if let Some(name) = unexpected.first() {
        return Err(UNetError::Config(format!(
            "unexpected weight {name} ({} unexpected in all): the checkpoint is for another architecture",
            unexpected.len()
        )));
    }
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let value = tensors
            .get(name)
            .ok_or_else(|| UNetError::Config(format!("missing weight {name}")))?;
        if value.shape() != var.shape() {
            return Err(UNetError::Config(format!(
                "weight {name} has shape {:?}, the model expects {:?}",
                value.dims(),
                var.dims()
            )));
        }
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Maps the attention names of old diffusers conversions to the current ones.
fn rename_deprecated(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(name, t)| {
            let renamed = [
                (".query.", ".to_q."),
                (".key.", ".to_k."),
                (".value.", ".to_v."),
                (".proj_attn.", ".to_out.0."),
            ]
            .iter()
            .fold(name, |n, (old, new)| n.replace(old, new));
            (renamed, t)
        })
        .collect()
}

/// Number of scalar parameters of a variable map.
pub fn parameter_count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}
