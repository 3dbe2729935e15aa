//! A tiny model trained for a few dozen steps on generated data: the loss falls, a run
//! stopped mid-epoch and resumed ends bit for bit where an uninterrupted run does, and a
//! non-finite loss stops the run with the step; mixed precision follows f32.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use ddpm_data::{Batch, BatchLoader, LabeledImages, LoaderConfig};
use ddpm_diffusion::{GaussianDiffusion, NoiseRng};
use ddpm_schedule::{BetaSchedule, NoiseSchedule};
use ddpm_train::{
    list_checkpoints, mixed_precision_forward, named_vars, seeded_init, Precision, TrainError,
    Trainer, TrainerConfig, METRICS_HEADER,
};
use ddpm_unet::{DownBlockKind, UNet, UNetConfig, UpBlockKind};

/// 64 images of 8×8: a bright 3×3 square on black in one of four corners (the label).
fn data() -> Arc<LabeledImages> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..64usize {
        let label = i % 4;
        let (oy, ox) = ((label / 2) * 5, (label % 2) * 5);
        for y in 0..8 {
            for x in 0..8 {
                let inside = (oy..oy + 3).contains(&y) && (ox..ox + 3).contains(&x);
                pixels.push(if inside { 255 } else { 0 });
            }
        }
        labels.push(label as u8);
    }
    Arc::new(LabeledImages {
        height: 8,
        width: 8,
        pixels,
        labels,
        class_names: (0..4).map(|c| c.to_string()).collect(),
    })
}

fn unet_config() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![16, 32],
        layers_per_block: 1,
        down_block_types: vec![DownBlockKind::DownBlock2D, DownBlockKind::AttnDownBlock2D],
        up_block_types: vec![UpBlockKind::AttnUpBlock2D, UpBlockKind::UpBlock2D],
        norm_num_groups: 8,
        attention_head_dim: Some(16),
        num_class_embeds: Some(5),
        sample_size: Some(8),
        ..UNetConfig::fashion_mnist()
    }
}

fn trainer(dir: &std::path::Path, steps: u64) -> Trainer {
    trainer_in(dir, steps, Precision::F32)
}

fn trainer_in(dir: &std::path::Path, steps: u64, precision: Precision) -> Trainer {
    let schedule = NoiseSchedule::new(BetaSchedule::cosine(), 100).unwrap();
    let diffusion = GaussianDiffusion::epsilon(schedule, &Device::Cpu).unwrap();
    let loader = BatchLoader::new(
        data(),
        LoaderConfig {
            batch_size: 8,
            seed: 3,
            horizontal_flip: true,
            ..Default::default()
        },
    )
    .unwrap();
    let config = TrainerConfig {
        steps,
        lr: 2e-3,
        warmup_steps: 5,
        ema_decay: 0.9,
        checkpoint_every: 10,
        keep_checkpoints: 5,
        log_every: 1,
        seed: 11,
        precision,
        ..Default::default()
    };
    Trainer::new(
        &unet_config(),
        diffusion,
        loader,
        config,
        dir,
        HashMap::from([("config".into(), "test".into())]),
    )
    .unwrap()
}

fn bits(weights: &HashMap<String, Tensor>) -> Vec<(String, Vec<u32>)> {
    let mut out: Vec<(String, Vec<u32>)> = weights
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// (step, epoch, loss, lr, grad_norm) of every metrics row; images/s is a timing.
fn metrics(dir: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(METRICS_HEADER));
    lines
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

#[test]
fn the_loss_falls_and_resuming_is_exact() {
    let straight_dir = tempfile::tempdir().unwrap();
    let mut straight = trainer(straight_dir.path(), 40);
    let mut losses = Vec::new();
    straight
        .run(&AtomicBool::new(false), &mut |_, r| {
            losses.push(r.loss);
            Ok(())
        })
        .unwrap();
    assert_eq!(losses.len(), 40);
    let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = losses[30..].iter().sum::<f32>() / 10.0;
    eprintln!("mean loss, steps 1-10: {first:.4}; steps 31-40: {last:.4}");
    assert!(last < 0.7 * first, "loss did not fall: {first} → {last}");
    let names: Vec<String> = list_checkpoints(straight_dir.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.last().map(String::as_str),
        Some("step-00000040.safetensors")
    );

    // Stopped at step 13 (mid-epoch: 8 batches per epoch), as Ctrl-C does, then resumed.
    let resumed_dir = tempfile::tempdir().unwrap();
    let mut first_part = trainer(resumed_dir.path(), 40);
    let stop = AtomicBool::new(false);
    first_part
        .run(&stop, &mut |_, r| {
            if r.step == 13 {
                stop.store(true, Ordering::Relaxed)
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(first_part.progress().step, 13);
    let checkpoint = resumed_dir.path().join("step-00000013.safetensors");
    assert!(checkpoint.exists());
    drop(first_part);
    let mut second_part = trainer(resumed_dir.path(), 40);
    second_part.resume_from(&checkpoint).unwrap();
    assert_eq!(
        (
            second_part.progress().epoch,
            second_part.progress().batch_in_epoch
        ),
        (1, 5)
    );
    second_part
        .run(&AtomicBool::new(false), &mut |_, _| Ok(()))
        .unwrap();

    assert!(
        bits(&second_part.weights()) == bits(&straight.weights()),
        "resumed weights differ"
    );
    assert!(
        metrics(resumed_dir.path()) == metrics(straight_dir.path()),
        "resumed metrics differ"
    );
    // The EMA model samples: it runs and is finite.
    let ema = second_part.ema_unet().unwrap();
    let x = Tensor::zeros((2, 1, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let out = ema
        .forward(
            &x,
            &Tensor::new(&[3u32, 90], &Device::Cpu).unwrap(),
            Some(&Tensor::new(&[0u32, 4], &Device::Cpu).unwrap()),
            false,
        )
        .unwrap();
    assert!(out
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn a_non_finite_loss_stops_with_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(dir.path(), 5);
    let images = Tensor::full(f32::NAN, (8, 1, 8, 8), &Device::Cpu).unwrap();
    let batch = Batch {
        images,
        labels: Tensor::zeros(8, candle_core::DType::U32, &Device::Cpu).unwrap(),
        epoch: 0,
        index: 0,
    };
    let err = t.train_step(&batch).err().unwrap();
    assert!(
        matches!(err, TrainError::NonFiniteLoss { step: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("at step 1"), "{err}");
    assert_eq!(t.progress().step, 0);
}

/// The mixed-precision forward on f32 master weights, in f16 on the CPU (candle's CPU matmul
/// has no bf16; the graph is the same for both). The loss and the gradients agree with the
/// f32 network's to f16's precision: 11 significant bits, a relative 2⁻¹¹ ≈ 5e-4 per
/// rounding, with room for accumulation over a few dozen layers. The gradients arrive in
/// f32, on the f32 weights.
#[test]
fn mixed_precision_gradients_follow_f32() {
    let config = unet_config();
    let (unet, varmap) = UNet::init(&config, DType::F32, &Device::Cpu).unwrap();
    let mut named = named_vars(&varmap).unwrap();
    seeded_init(&mut named, 5).unwrap();
    let vars: HashMap<String, Var> = named.iter().cloned().collect();
    let mut rng = NoiseRng::new(9);
    let x = rng.randn((4, 1, 8, 8), &Device::Cpu).unwrap();
    let target = rng.randn((4, 1, 8, 8), &Device::Cpu).unwrap();
    let t = Tensor::new(&[3u32, 40, 77, 99], &Device::Cpu).unwrap();
    let y = Tensor::new(&[0u32, 1, 2, 4], &Device::Cpu).unwrap();
    let loss_of = |pred: Tensor| (pred - &target).unwrap().sqr().unwrap().mean_all().unwrap();

    let full = loss_of(unet.forward(&x, &t, Some(&y), true).unwrap());
    let mixed = loss_of(
        mixed_precision_forward(&config, &vars, DType::F16, &x, &t, Some(&y), true).unwrap(),
    );
    let (full_loss, mixed_loss) = (
        full.to_scalar::<f32>().unwrap(),
        mixed.to_scalar::<f32>().unwrap(),
    );
    let (full_grads, mixed_grads) = (full.backward().unwrap(), mixed.backward().unwrap());
    let (mut diff2, mut norm2) = (0.0f64, 0.0f64);
    for (name, var) in &named {
        let g32 = full_grads.get(var.as_tensor()).unwrap();
        let g16 = mixed_grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no mixed-precision gradient for {name}"));
        assert_eq!(g16.dtype(), DType::F32, "{name}");
        let (a, b) = (
            g32.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            g16.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (a, b) in a.iter().zip(&b) {
            diff2 += ((a - b) as f64).powi(2);
            norm2 += (*a as f64).powi(2);
        }
    }
    let loss_error = ((mixed_loss - full_loss) / full_loss).abs();
    let grad_error = (diff2 / norm2).sqrt();
    eprintln!(
        "loss {full_loss} (f32) vs {mixed_loss} (f16); gradient relative error {grad_error:.2e}"
    );
    assert!(loss_error < 5e-3, "loss differs by {loss_error}");
    assert!(grad_error < 2e-2, "gradients differ by {grad_error}");
}

/// bf16 training is refused on the CPU with a message that says why.
#[test]
fn bf16_on_the_cpu_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let schedule = NoiseSchedule::new(BetaSchedule::cosine(), 100).unwrap();
    let diffusion = GaussianDiffusion::epsilon(schedule, &Device::Cpu).unwrap();
    let loader = BatchLoader::new(data(), LoaderConfig::default()).unwrap();
    let config = TrainerConfig {
        precision: Precision::Bf16,
        ..Default::default()
    };
    let err = Trainer::new(
        &unet_config(),
        diffusion,
        loader,
        config,
        dir.path(),
        HashMap::new(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("bf16 needs a CUDA device"),
        "{err}"
    );
}
