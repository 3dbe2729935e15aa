//! Checkpoints round-trip exactly, are written atomically, and broken files are errors.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use ddpm_diffusion::NoiseRng;
use ddpm_train::{
    checkpoint_name, list_checkpoints, prune_checkpoints, Checkpoint, TrainingProgress,
};

fn sample() -> Checkpoint {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(42);
    let _ = rng.randn(1001, &dev).unwrap();
    let t = |v: &[f32]| Tensor::new(v, &dev).unwrap();
    Checkpoint {
        progress: TrainingProgress {
            step: 1234,
            epoch: 3,
            batch_in_epoch: 17,
            rng: rng.state(),
        },
        model: HashMap::from([
            ("conv_in.weight".into(), t(&[1.0, 2.0])),
            ("conv_in.bias".into(), t(&[0.5])),
        ]),
        ema: HashMap::from([
            ("conv_in.weight".into(), t(&[0.9, 1.9])),
            ("conv_in.bias".into(), t(&[0.4])),
        ]),
        optimizer: HashMap::from([
            ("m.conv_in.weight".into(), t(&[0.01, 0.02])),
            ("v.conv_in.weight".into(), t(&[1e-4, 2e-4])),
        ]),
        extra: HashMap::from([("config".into(), "[training]\nbatch_size = 64\n".into())]),
    }
}

#[test]
fn round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(checkpoint_name(1234));
    let original = sample();
    original.save(&path).unwrap();
    assert!(!dir.path().join("step-00001234.safetensors.tmp").exists());
    let loaded = Checkpoint::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.progress, original.progress);
    assert_eq!(loaded.extra, original.extra);
    for (a, b) in [
        (&loaded.model, &original.model),
        (&loaded.ema, &original.ema),
        (&loaded.optimizer, &original.optimizer),
    ] {
        assert_eq!(a.len(), b.len());
        for (k, v) in b {
            assert_eq!(
                a[k].to_vec1::<f32>().unwrap(),
                v.to_vec1::<f32>().unwrap(),
                "{k}"
            );
        }
    }
    // The restored generator continues the same stream.
    let mut a = NoiseRng::from_state(loaded.progress.rng);
    let mut b = NoiseRng::from_state(original.progress.rng);
    assert_eq!(
        a.randn(5, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap(),
        b.randn(5, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn broken_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    let err = Checkpoint::load(&garbage, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("garbage.safetensors"), "{err}");
    // A safetensors file without our metadata (a plain weights file) is refused clearly.
    let plain = dir.path().join("weights.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([("w", Tensor::new(&[1f32], &Device::Cpu).unwrap())]),
        &plain,
    )
    .unwrap();
    let err = Checkpoint::load(&plain, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("not a ddpm training checkpoint"),
        "{err}"
    );
    let err = Checkpoint::load(&dir.path().join("missing.safetensors"), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
}

#[test]
fn pruning_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    for step in [100, 200, 300, 400] {
        sample()
            .save(&dir.path().join(checkpoint_name(step)))
            .unwrap();
    }
    std::fs::write(dir.path().join("metrics.csv"), "step\n").unwrap();
    prune_checkpoints(dir.path(), 2).unwrap();
    let left: Vec<String> = list_checkpoints(dir.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["step-00000300.safetensors", "step-00000400.safetensors"]
    );
    assert!(dir.path().join("metrics.csv").exists());
}
