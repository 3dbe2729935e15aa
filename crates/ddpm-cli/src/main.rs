//! `ddpm`: train, sample and inspect denoising diffusion probabilistic models.
//!
//! A thin binary over the library crates: it parses, configures and reports; the math is in
//! `ddpm-schedule` and `ddpm-diffusion`, the data in `ddpm-data`.

mod commands;
mod config;
mod dataset;
mod device;
mod figures;
mod generation;
mod progress;
mod sample_file;
mod trained_model;

use std::process::ExitCode;

/// Large tensor buffers are allocated and freed many times per training step; mimalloc keeps
/// them for reuse, where glibc's malloc unmaps them and page-faults them back in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc never to return freed memory to the kernel: a training step frees and
/// re-allocates the same large buffers, and each page handed back is zeroed and faulted in
/// again (15% of a step's time before this). Only when the option reads as one of the
/// documented defaults, so that a different mimalloc build is left alone.
fn keep_freed_memory() {
    /// `mi_option_purge_delay` in `mimalloc.h` (v2 and v3): default 10 ms (v2) or 1000 ms
    /// (v3); −1 never purges.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option getters and setters of the linked allocator.
    unsafe {
        if matches!(libmimalloc_sys::mi_option_get(PURGE_DELAY), 10 | 1000) {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

/// candle's CPU ops split each op with a worker thread of its own (its "barrier pool"),
/// which afterwards spins 25,000 pauses, about a millisecond, before it sleeps. Between
/// candle's ops our kernels run on rayon's threads, and on a machine of two cores a
/// spinning worker takes a core from them. `ddpm bench --batch 64 --reps 5`, four rounds
/// alternating the limit (session 13): training 88.9 images/s on average at 0 and 88.5 at
/// 1,000 against 83.1 at 25,000; sampling steps 227 ms at 0 (waking the worker for every
/// op), 220 at 1,000 and 220 at 25,000. So 1,000, unless the environment sets it. Called
/// first in `main`, before any thread starts.
fn shorten_candle_spin() {
    const LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(LIMIT).is_none() {
        std::env::set_var(LIMIT, "1000");
    }
}

use clap::{Parser, Subcommand};

use commands::{
    bench::BenchCommand, compare_schedules::CompareSchedulesCommand,
    device_check::DeviceCheckCommand, eval::EvalCommand, export::ExportCommand,
    sample::SampleCommand, schedule::ScheduleCommand, train::TrainCommand,
    train_classifier::TrainClassifierCommand,
};

/// Denoising diffusion probabilistic models on candle.
#[derive(Debug, Parser)]
#[command(name = "ddpm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model from a TOML config (`--resume RUN_DIR` continues a run).
    Train(TrainCommand),
    /// Draw images from a trained model: a grid, a progression figure, a GIF.
    Sample(SampleCommand),
    /// Write a checkpoint's EMA weights as a diffusers pipeline directory.
    Export(ExportCommand),
    /// Train the Fashion-MNIST classifier whose features the quality metrics use.
    TrainClassifier(TrainClassifierCommand),
    /// Measure samples against the test set: FID, KID, precision, recall, class histogram.
    Eval(EvalCommand),
    /// Print a noise schedule's coefficients, one row per t = 1..T.
    Schedule(ScheduleCommand),
    /// Plot ᾱ_t of the linear and cosine schedules and noise one image with each.
    CompareSchedules(CompareSchedulesCommand),
    /// Measure training and sampling speed (optionally against PyTorch).
    Bench(BenchCommand),
    /// Check a forward and backward of the U-Net on a device (CUDA) against the CPU.
    DeviceCheck(DeviceCheckCommand),
}

fn main() -> ExitCode {
    shorten_candle_spin();
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(progress::log_writer)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Train(cmd) => match cmd.run() {
            Ok(true) => return ExitCode::from(commands::train::INTERRUPTED),
            Ok(false) => Ok(()),
            Err(err) => Err(err),
        },
        Command::Sample(cmd) => cmd.run(),
        Command::Export(cmd) => cmd.run(),
        Command::TrainClassifier(cmd) => cmd.run(),
        Command::Eval(cmd) => cmd.run(),
        Command::Schedule(cmd) => cmd.run(&mut std::io::BufWriter::new(std::io::stdout().lock())),
        Command::CompareSchedules(cmd) => cmd.run(),
        Command::Bench(cmd) => cmd.run(),
        Command::DeviceCheck(cmd) => cmd.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by ": ", leaving out a cause whose message already ends
/// its parent's (library errors print their source in their own message).
fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// `ddpm schedule | head` closes our stdout early; that is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
