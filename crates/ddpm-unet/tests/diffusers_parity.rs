//! Our U-Net against diffusers' UNet2DModel on the same weights and inputs.
//!
//! The fixtures were written by `scripts/diffusers_unet_fixture.py` (diffusers 0.42.1,
//! torch 2.15): two small models with perturbed random weights saved as diffusers model
//! directories, and each one's input, timesteps, class labels and output. Both sides
//! compute in f32; 1e-4 bounds their rounding differences.
//!
//! Set `DDPM_EXPORT_DIR` to also write our copy of each model with `save_diffusers`, then
//! check that diffusers loads it: `.venv/bin/python scripts/diffusers_unet_fixture.py
//! --check-ours $DDPM_EXPORT_DIR/small`.

use std::path::PathBuf;

use candle_core::{DType, Device};
use ddpm_unet::{UNet, UNetConfig};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check(name: &str) {
    let dir = fixture(name);
    let (unet, varmap) = UNet::from_diffusers(&dir, &Device::Cpu).unwrap();
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let x = &io["x"];
    let t = io["t"].to_dtype(DType::U32).unwrap();
    let y = io.get("y").map(|y| y.to_dtype(DType::U32).unwrap());
    let ours = unet.forward(x, &t, y.as_ref(), false).unwrap();
    let err = (ours - &io["out"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("{name}: max |ours − diffusers| = {err:e}");
    assert!(err < 1e-4, "{name}: max error {err}");
    if let Some(export) = std::env::var_os("DDPM_EXPORT_DIR") {
        unet.save_diffusers(&varmap, PathBuf::from(export).join(name))
            .unwrap();
    }
}

#[test]
fn matches_diffusers_multi_head_attention() {
    check("small");
}

#[test]
fn matches_diffusers_with_classes_two_attention_levels_and_asymmetric_downsampling() {
    check("class_cond");
}

#[test]
fn reads_the_fixture_configs_as_diffusers_wrote_them() {
    let text = std::fs::read_to_string(fixture("class_cond").join("config.json")).unwrap();
    let cfg = UNetConfig::from_diffusers_json(&text).unwrap();
    assert_eq!(cfg.block_out_channels, vec![8, 16, 16]);
    assert_eq!(cfg.attention_head_dim, None);
    assert_eq!(
        (cfg.freq_shift, cfg.flip_sin_to_cos, cfg.downsample_padding),
        (1, false, 0)
    );
    assert_eq!(cfg.num_class_embeds, Some(5));
    assert_eq!(cfg.null_class(), Some(4));
}
