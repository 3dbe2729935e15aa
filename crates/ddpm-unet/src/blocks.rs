//! The U-Net's down, mid and up blocks (diffusers' `DownBlock2D`/`AttnDownBlock2D`,
//! `UNetMidBlock2D`, `UpBlock2D`/`AttnUpBlock2D`).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::attention::SpatialAttention;
use crate::resample::{Downsample2D, Upsample2D};
use crate::resnet::{ResnetBlock2D, ResnetConfig};
use crate::UNetConfig;

/// Residual blocks (each followed by attention when `attention`), then an optional
/// downsampling; every intermediate output is kept for the skip connections.
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialAttention>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// Weights under `vb` (`resnets.{j}`, `attentions.{j}`, `downsamplers.0`).
    pub fn new(
        vb: VarBuilder,
        cfg: &UNetConfig,
        in_channels: usize,
        out_channels: usize,
        attention: bool,
        downsample: bool,
    ) -> candle_core::Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..cfg.layers_per_block {
            let c_in = if j == 0 { in_channels } else { out_channels };
            resnets.push(ResnetBlock2D::new(
                vb.pp("resnets").pp(j),
                resnet_config(cfg, c_in, out_channels),
            )?);
            if attention {
                attentions.push(build_attention(
                    vb.pp("attentions").pp(j),
                    cfg,
                    out_channels,
                )?);
            }
        }
        let downsampler = if downsample {
            Some(Downsample2D::new(
                vb.pp("downsamplers").pp("0"),
                out_channels,
                cfg.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// The block's output and, appended to `skips`, every intermediate state.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        train: bool,
        skips: &mut Vec<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb, train)?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(&h)?;
            }
            skips.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h)?;
            skips.push(h.clone());
        }
        Ok(h)
    }
}

/// Residual block, attention, residual block, at the lowest resolution.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnet_0: ResnetBlock2D,
    attention: Option<SpatialAttention>,
    resnet_1: ResnetBlock2D,
}

impl MidBlock {
    /// Weights under `vb` (`resnets.0`, `attentions.0`, `resnets.1`).
    pub fn new(vb: VarBuilder, cfg: &UNetConfig, channels: usize) -> candle_core::Result<Self> {
        let attention = if cfg.add_attention {
            Some(build_attention(vb.pp("attentions").pp("0"), cfg, channels)?)
        } else {
            None
        };
        Ok(Self {
            resnet_0: ResnetBlock2D::new(
                vb.pp("resnets").pp("0"),
                resnet_config(cfg, channels, channels),
            )?,
            attention,
            resnet_1: ResnetBlock2D::new(
                vb.pp("resnets").pp("1"),
                resnet_config(cfg, channels, channels),
            )?,
        })
    }

    /// The block applied to `x`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = self.resnet_0.forward(x, temb, train)?;
        if let Some(attn) = &self.attention {
            h = attn.forward(&h)?;
        }
        self.resnet_1.forward(&h, temb, train)
    }
}

/// `layers_per_block + 1` residual blocks, each over its input concatenated with the last
/// remaining skip connection (each followed by attention when `attention`), then an
/// optional upsampling.
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialAttention>,
    upsampler: Option<Upsample2D>,
}

/// Channel bookkeeping of an up block.
#[derive(Debug, Clone, Copy)]
pub struct UpChannels {
    /// Width of the matching down level's input (the last skip's channels).
    pub in_channels: usize,
    /// Width of the state coming from below.
    pub prev_output_channels: usize,
    /// Width of this level.
    pub out_channels: usize,
}

impl UpBlock {
    /// Weights under `vb` (`resnets.{j}`, `attentions.{j}`, `upsamplers.0`).
    pub fn new(
        vb: VarBuilder,
        cfg: &UNetConfig,
        ch: UpChannels,
        attention: bool,
        upsample: bool,
    ) -> candle_core::Result<Self> {
        let layers = cfg.layers_per_block + 1;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let skip = if j == layers - 1 {
                ch.in_channels
            } else {
                ch.out_channels
            };
            let c_in = if j == 0 {
                ch.prev_output_channels
            } else {
                ch.out_channels
            };
            resnets.push(ResnetBlock2D::new(
                vb.pp("resnets").pp(j),
                resnet_config(cfg, c_in + skip, ch.out_channels),
            )?);
            if attention {
                attentions.push(build_attention(
                    vb.pp("attentions").pp(j),
                    cfg,
                    ch.out_channels,
                )?);
            }
        }
        let upsampler = if upsample {
            Some(Upsample2D::new(
                vb.pp("upsamplers").pp("0"),
                ch.out_channels,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// The block applied to `x`, consuming skip connections from the end of `skips`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        train: bool,
        skips: &mut Vec<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().ok_or_else(|| {
                candle_core::Error::Msg("U-Net ran out of skip connections".into())
            })?;
            h = resnet.forward(&crate::cpu_ops::concat_channels(&h, &skip)?, temb, train)?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(&h)?;
            }
        }
        if let Some(up) = &self.upsampler {
            h = up.forward(&h)?;
        }
        Ok(h)
    }
}

/// Self-attention over `channels` channels with the configuration's heads and norm.
fn build_attention(
    vb: VarBuilder,
    cfg: &UNetConfig,
    channels: usize,
) -> candle_core::Result<SpatialAttention> {
    SpatialAttention::new(
        vb,
        channels,
        cfg.head_dim(channels),
        cfg.norm_num_groups,
        cfg.norm_eps,
    )
}

fn resnet_config(cfg: &UNetConfig, in_channels: usize, out_channels: usize) -> ResnetConfig {
    ResnetConfig {
        in_channels,
        out_channels,
        temb_channels: cfg.time_embed_dim(),
        groups: cfg.norm_num_groups,
        eps: cfg.norm_eps,
        dropout: cfg.dropout,
    }
}
