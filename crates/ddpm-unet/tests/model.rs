//! Parameter counts, named configurations, input sizes and the save/load round trip.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ddpm_unet::{parameter_count, UNet, UNetConfig, UNetError};

#[derive(serde::Deserialize)]
struct ConfigFile {
    model: UNetConfig,
}

fn config_file(name: &str) -> UNetConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(format!("{name}.toml"));
    let text = std::fs::read_to_string(path).unwrap();
    toml::from_str::<ConfigFile>(&text).unwrap().model
}

#[test]
fn parameter_counts_equal_diffusers() {
    // The counts diffusers 0.42.1 gives UNet2DModel with the same configurations
    // (`sum(p.numel() for p in model.parameters())`); 35,746,307 rounds to the paper's 35.7 M.
    for (config, want) in [
        (UNetConfig::cifar10_ddpm(), 35_746_307),
        (UNetConfig::fashion_mnist(), 2_690_049),
    ] {
        let (_, varmap) = UNet::init(&config, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            parameter_count(&varmap),
            want,
            "{:?}",
            config.block_out_channels
        );
    }
}

#[test]
fn named_configs_are_the_presets() {
    assert_eq!(config_file("cifar10-ddpm"), UNetConfig::cifar10_ddpm());
    // The fashion-mnist run is the preset made class-conditional: ten classes and the null
    // class of classifier-free guidance.
    assert_eq!(
        config_file("fashion-mnist"),
        UNetConfig {
            num_class_embeds: Some(11),
            ..UNetConfig::fashion_mnist()
        }
    );
    assert_eq!(
        UNetConfig::preset("cifar10-ddpm").unwrap(),
        UNetConfig::cifar10_ddpm()
    );
    let err = UNetConfig::preset("imagenet").unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown model preset \"imagenet\""),
        "{err}"
    );
}

#[test]
fn sizes_must_fit_the_levels() {
    let (unet, _) = UNet::init(&UNetConfig::fashion_mnist(), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[10u32], &Device::Cpu).unwrap();
    for (h, w) in [(28, 28), (32, 32), (12, 20)] {
        let x = Tensor::zeros((1, 1, h, w), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            unet.forward(&x, &t, None, false).unwrap().dims(),
            &[1, 1, h, w]
        );
    }
    let x = Tensor::zeros((1, 1, 30, 28), DType::F32, &Device::Cpu).unwrap();
    let err = unet.forward(&x, &t, None, false).unwrap_err();
    assert!(
        matches!(
            err,
            UNetError::InputSize {
                height: 30,
                width: 28,
                levels: 3,
                factor: 4
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("30×28") && err.to_string().contains("3 levels"),
        "{err}"
    );
}

#[test]
fn invalid_configs_name_the_field() {
    let mut cfg = UNetConfig::fashion_mnist();
    cfg.norm_num_groups = 12;
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("norm_num_groups = 12"));
    let mut cfg = UNetConfig::fashion_mnist();
    cfg.up_block_types.pop();
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("up_block_types (2)"));
    let err = UNetConfig::from_diffusers_json(
        r#"{"block_out_channels": [32, 64], "time_embedding_type": "fourier"}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("time_embedding_type"), "{err}");
}

#[test]
fn class_labels_are_checked() {
    let mut cfg = UNetConfig::fashion_mnist();
    cfg.num_class_embeds = Some(11);
    let (unet, _) = UNet::init(&cfg, DType::F32, &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    assert!(unet.forward(&x, &t, None, false).is_err());
    let y = Tensor::new(&[3u32, cfg.null_class().unwrap()], &Device::Cpu).unwrap();
    assert_eq!(
        unet.forward(&x, &t, Some(&y), false).unwrap().dims(),
        &[2, 1, 28, 28]
    );
}

#[test]
fn save_and_load_give_bit_identical_outputs() {
    let mut cfg = UNetConfig::fashion_mnist();
    cfg.num_class_embeds = Some(11);
    let dev = Device::Cpu;
    let (unet, varmap) = UNet::init(&cfg, DType::F32, &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    unet.save_diffusers(&varmap, dir.path()).unwrap();
    let (loaded, _) = UNet::from_diffusers(dir.path(), &dev).unwrap();
    assert_eq!(loaded.config(), &cfg);
    let x = Tensor::randn(0f32, 1.0, (2, 1, 28, 28), &dev).unwrap();
    let t = Tensor::new(&[5u32, 700], &dev).unwrap();
    let y = Tensor::new(&[1u32, 10], &dev).unwrap();
    let a = unet
        .forward(&x, &t, Some(&y), false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = loaded
        .forward(&x, &t, Some(&y), false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(
        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert!(!dir
        .path()
        .join("diffusion_pytorch_model.safetensors.tmp")
        .exists());
    // A checkpoint of another architecture is refused with the offending weight's name.
    let (_, other) = UNet::init(&UNetConfig::fashion_mnist(), DType::F32, &dev).unwrap();
    let mut tensors: std::collections::HashMap<String, Tensor> = other
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    tensors.remove("conv_out.bias");
    let err = ddpm_unet::load_weights(&other, tensors).unwrap_err();
    assert!(
        err.to_string().contains("missing weight conv_out.bias"),
        "{err}"
    );
}

#[test]
fn half_precision_inference_follows_f32() {
    // f16 keeps 11 bits of mantissa (relative rounding 2⁻¹¹ ≈ 5e-4 per op); through a few
    // dozen layers the outputs stay within 0.05 of f32's (which are O(1)). bf16 is not
    // tested here: candle 0.11's CPU matmul has no bf16 kernel (it runs on CUDA).
    let dev = Device::Cpu;
    let cfg = UNetConfig {
        block_out_channels: vec![16, 32],
        down_block_types: vec![
            ddpm_unet::DownBlockKind::DownBlock2D,
            ddpm_unet::DownBlockKind::AttnDownBlock2D,
        ],
        up_block_types: vec![
            ddpm_unet::UpBlockKind::AttnUpBlock2D,
            ddpm_unet::UpBlockKind::UpBlock2D,
        ],
        attention_head_dim: Some(16),
        ..UNetConfig::fashion_mnist()
    };
    let (unet, varmap) = UNet::init(&cfg, DType::F32, &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    unet.save_diffusers(&varmap, dir.path()).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 1, 8, 8), &dev).unwrap();
    let t = Tensor::new(&[5u32, 700], &dev).unwrap();
    let reference = unet.forward(&x, &t, None, false).unwrap();
    let dtype = DType::F16;
    let tensors =
        candle_core::safetensors::load(dir.path().join(ddpm_unet::WEIGHTS_FILE), &dev).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, &dev);
    let half = UNet::new(vb, &cfg).unwrap();
    let out = half
        .forward(&x.to_dtype(dtype).unwrap(), &t, None, false)
        .unwrap();
    assert_eq!(out.dtype(), dtype);
    let err = (out.to_dtype(DType::F32).unwrap() - &reference)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("{dtype:?}: max |half − f32| = {err}");
    assert!(err < 0.05, "{dtype:?}: max error {err}");
}
