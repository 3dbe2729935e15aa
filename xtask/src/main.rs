//! `cargo xtask <job> [args…] [--cuda]`: builds the `ddpm` binary in release mode (with
//! candle's CUDA backend under `--cuda`) and runs `ddpm <job> [args…]` from the workspace
//! root, so users never type feature flags or binary paths.
//!
//! Jobs are `ddpm`'s subcommands (`cargo xtask help` lists them).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let cuda = args.iter().any(|a| a == "--cuda");
    args.retain(|a| a != "--cuda");
    if args.is_empty() {
        args.push("help".to_string());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();

    let mut build = Command::new(&cargo);
    build.current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "ddpm-cli",
        "--bin",
        "ddpm",
    ]);
    if cuda {
        build.args(["--features", "cuda"]);
    }
    match build.status() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("xtask: building ddpm failed ({status})");
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("xtask: could not run {cargo}: {err}");
            return ExitCode::FAILURE;
        }
    }

    let binary = root
        .join("target")
        .join("release")
        .join(format!("ddpm{}", std::env::consts::EXE_SUFFIX));
    match Command::new(&binary)
        .current_dir(&root)
        .args(&args)
        .status()
    {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(err) => {
            eprintln!("xtask: could not run {}: {err}", binary.display());
            ExitCode::FAILURE
        }
    }
}
