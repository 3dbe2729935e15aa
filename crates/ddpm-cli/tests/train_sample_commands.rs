//! `ddpm train` and `ddpm sample` end to end on a generated folder of 8×8 images with a tiny
//! U-Net: the run directory's files, resuming, sampling from a checkpoint and from the
//! exported diffusers pipeline, errors that name what is wrong, and `device-check`.

use std::path::Path;
use std::process::{Command, Output};

fn ddpm(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs ddpm")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Two classes of 8×8 gray images: bright squares on dark, dark squares on bright.
fn write_images(root: &Path) {
    for (class, (fg, bg)) in [("light", (230u8, 20u8)), ("dark", (20, 230))] {
        let dir = root.join("images").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..8u32 {
            let img = image::GrayImage::from_fn(8, 8, |x, y| {
                let inside = (2 + i % 3..6 + i % 3).contains(&x) && (2..6).contains(&y);
                image::Luma([if inside { fg } else { bg }])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

/// The tiny run config shared with the unit tests of `trained_model`.
const CONFIG: &str = include_str!("fixtures/tiny.toml");

#[test]
fn train_resume_and_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_images(root);
    std::fs::write(root.join("tiny.toml"), CONFIG).unwrap();

    let out = ddpm(root, &["train", "--config", "tiny.toml", "--device", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs: Vec<_> = std::fs::read_dir(root.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    let name = run.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("tiny-") && name.len() == "tiny-YYYYmmdd-HHMMSS".len());
    for file in [
        "config.toml",
        "metrics.csv",
        "loss.png",
        "samples/step-00000003.png",
        "samples/step-00000006.png",
        "step-00000003.safetensors",
        "step-00000006.safetensors",
        "pipeline/model_index.json",
        "pipeline/unet/config.json",
        "pipeline/unet/diffusion_pytorch_model.safetensors",
        "pipeline/scheduler/scheduler_config.json",
        "pipeline/ddpm.toml",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    assert_eq!(lines[0], "step,epoch,loss,lr,grad_norm,images_per_s");
    assert_eq!(lines.len(), 7, "{metrics}");
    // The resolved config is complete and loads again.
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("[training]") && resolved.contains("adam_beta2"));

    // Extend the run by two steps.
    let run_arg = run.to_string_lossy().into_owned();
    let out = ddpm(
        root,
        &["train", "--resume", &run_arg, "--set", "training.steps=8"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run.join("step-00000008.safetensors").is_file());
    assert!(
        !run.join("step-00000003.safetensors").exists(),
        "pruned to 2"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 9, "{metrics}");

    // Sample from a checkpoint, with a progression and a GIF.
    let checkpoint = run.join("step-00000008.safetensors");
    let out = ddpm(
        root,
        &[
            "sample",
            "--checkpoint",
            &checkpoint.to_string_lossy(),
            "--n",
            "6",
            "--steps",
            "4",
            "--out",
            "grid.png",
            "--progression",
            "progression.png",
            "--gif",
            "anim.gif",
            "--tensors",
            "samples.safetensors",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for file in [
        "grid.png",
        "progression.png",
        "anim.gif",
        "samples.safetensors",
    ] {
        assert!(root.join(file).is_file(), "{file} missing");
    }
    let grid = image::open(root.join("grid.png")).unwrap();
    // 3 columns (⌈√6⌉) of 8-pixel tiles with 2-pixel borders.
    assert_eq!(grid.width(), 3 * 8 + 4 * 2);
    let tensors =
        candle_core::safetensors::load(root.join("samples.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(tensors["images"].dims(), &[6, 1, 8, 8]);
    // The header records how they were drawn, for `ddpm eval --samples`.
    let bytes = std::fs::read(root.join("samples.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap();
    assert_eq!(metadata["steps"], "4");
    assert_eq!(metadata["seed"], "0");
    assert_eq!(metadata["batches"], "1");

    // The exported pipeline samples too, and the same seed gives the same images as the
    // checkpoint's EMA weights (they are the same weights and config).
    let pipeline = run.join("pipeline");
    let out = ddpm(
        root,
        &[
            "sample",
            "--checkpoint",
            &pipeline.to_string_lossy(),
            "--n",
            "6",
            "--steps",
            "4",
            "--out",
            "grid2.png",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let a = image::open(root.join("grid.png")).unwrap().to_luma8();
    let b = image::open(root.join("grid2.png")).unwrap().to_luma8();
    assert_eq!(a.as_raw(), b.as_raw());

    // `export` writes the same pipeline from the last checkpoint, file for file.
    let out = ddpm(
        root,
        &[
            "export",
            "--checkpoint",
            &checkpoint.to_string_lossy(),
            "--out",
            "exported",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for file in [
        "unet/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "model_index.json",
        "ddpm.toml",
    ] {
        let ours = std::fs::read(root.join("exported").join(file)).unwrap();
        assert!(
            ours == std::fs::read(pipeline.join(file)).unwrap(),
            "{file} differs"
        );
    }
    // A file that is not a checkpoint is a clear error.
    let out = ddpm(
        root,
        &["export", "--checkpoint", "grid.png", "--out", "bad"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("grid.png"), "{}", stderr(&out));
}

/// `device-check` on the CPU: the network with candle's ops against ours, forward and
/// backward, to 1e-4; a CUDA device in a build without CUDA is a clear error.
#[test]
fn device_check_compares_the_cpu_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(root.join("tiny.toml"), CONFIG).unwrap();
    let args = ["device-check", "--config", "tiny.toml", "--batch", "2"];
    let out = ddpm(root, &[&args[..], &["--device", "cpu"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains("PASS") && stdout.contains("∂L/∂"),
        "{stdout}"
    );
    // With dropout in the model the check still compares like with like (it runs without
    // dropout, whose random masks would differ between the passes: this failed before).
    let with_dropout = CONFIG.replace("[model]", "[model]\ndropout = 0.3");
    assert_ne!(with_dropout, CONFIG);
    std::fs::write(root.join("dropout.toml"), with_dropout).unwrap();
    let out = ddpm(
        root,
        &[
            "device-check",
            "--config",
            "dropout.toml",
            "--batch",
            "2",
            "--device",
            "cpu",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert!(stdout.contains("PASS"), "{stdout}");
    if !cfg!(feature = "cuda") {
        let out = ddpm(root, &[&args[..], &["--device", "cuda"]].concat());
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("built without CUDA"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_configs_and_paths_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(root.join("bad.toml"), "[training]\nlearning_rate = 1e-3\n").unwrap();
    let out = ddpm(root, &["train", "--config", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml") && err.contains("learning_rate"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    std::fs::write(root.join("range.toml"), "").unwrap();
    let out = ddpm(
        root,
        &[
            "train",
            "--config",
            "range.toml",
            "--set",
            "training.ema_decay=2",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("training.ema_decay"),
        "{}",
        stderr(&out)
    );

    for (value, expected) in [("bf16", "needs a CUDA device"), ("fp8", "unknown variant")] {
        let set = format!("training.precision={value}");
        let out = ddpm(
            root,
            &[
                "train",
                "--config",
                "range.toml",
                "--device",
                "cpu",
                "--set",
                &set,
            ],
        );
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains("training.precision") && err.contains(expected),
            "{err}"
        );
    }

    // Missing data: the error names the directory, once, and no run directory is left.
    std::fs::write(
        root.join("nodata.toml"),
        "[data]\nsource = \"folder\"\ndir = \"no-such-images\"\n",
    )
    .unwrap();
    let out = ddpm(root, &["train", "--config", "nodata.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("data.dir = no-such-images"), "{err}");
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    assert!(
        !root.join("runs").exists(),
        "a failed start left a run directory"
    );

    let out = ddpm(root, &["train", "--resume", "no-such-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-such-run"), "{}", stderr(&out));

    let out = ddpm(root, &["sample", "--checkpoint", "missing.safetensors"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("missing.safetensors"),
        "{}",
        stderr(&out)
    );

    std::fs::write(root.join("junk.safetensors"), b"not a checkpoint").unwrap();
    let out = ddpm(root, &["sample", "--checkpoint", "junk.safetensors"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("junk.safetensors"),
        "{}",
        stderr(&out)
    );
}
