//! `ddpm schedule` end to end: its numbers against closed forms computed here, and its
//! errors on bad input.

use std::process::Command;

fn ddpm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("runs ddpm")
}

fn rows(csv: &str) -> Vec<Vec<f64>> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

#[test]
fn csv_has_the_exact_header_and_full_precision() {
    let out = ddpm(&["schedule", "--kind", "linear", "--timesteps", "1000"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().next().unwrap(),
        "t,beta,alpha,alpha_bar,sqrt_alpha_bar,sqrt_one_minus_alpha_bar,posterior_variance"
    );
    assert_eq!(text.lines().count(), 1001);
    // At least 15 significant digits in every value.
    for field in text.lines().nth(500).unwrap().split(',').skip(1) {
        let mantissa = field.split('e').next().unwrap().replace(['.', '-'], "");
        assert!(mantissa.len() >= 15, "{field}");
    }
}

#[test]
fn linear_values_match_the_closed_form() {
    let out = ddpm(&["schedule", "--kind", "linear", "--timesteps", "1000"]);
    let mut alpha_bar = 1.0f64;
    for (i, row) in rows(&String::from_utf8(out.stdout).unwrap())
        .iter()
        .enumerate()
    {
        let t = i + 1;
        assert_eq!(row[0], t as f64);
        let beta = 1e-4 + (0.02 - 1e-4) * (t - 1) as f64 / 999.0;
        let alpha_bar_prev = alpha_bar;
        alpha_bar *= 1.0 - beta;
        let want = [
            beta,
            1.0 - beta,
            alpha_bar,
            alpha_bar.sqrt(),
            (1.0 - alpha_bar).sqrt(),
            beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
        ];
        for (got, want) in row[1..].iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "t={t}: {got} vs {want}");
        }
    }
}

#[test]
fn cosine_values_match_the_closed_form() {
    let out = ddpm(&[
        "schedule",
        "--kind",
        "cosine",
        "--timesteps",
        "1000",
        "--format",
        "json",
    ]);
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let f = |t: f64| {
        (((t / 1000.0 + 0.008) / 1.008) * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    for row in &rows[..999] {
        let t = row["t"].as_u64().unwrap() as f64;
        let alpha_bar = f(t) / f(0.0);
        assert!(
            (row["alpha_bar"].as_f64().unwrap() - alpha_bar).abs() < 1e-12,
            "t={t}"
        );
        let beta = 1.0 - f(t) / f(t - 1.0);
        assert!(
            (row["beta"].as_f64().unwrap() - beta).abs() < 1e-12,
            "t={t}"
        );
    }
    assert_eq!(rows[999]["beta"].as_f64().unwrap(), 0.999);
}

#[test]
fn overrides_and_bad_input() {
    let out = ddpm(&[
        "schedule",
        "--kind",
        "linear",
        "--timesteps",
        "3",
        "--beta-start",
        "0.1",
        "--beta-end",
        "0.3",
    ]);
    let r = rows(&String::from_utf8(out.stdout).unwrap());
    assert!((r[1][1] - 0.2).abs() < 1e-15);

    for (args, message) in [
        (vec!["schedule", "--timesteps", "0"], "at least 1"),
        (
            vec!["schedule", "--kind", "linear", "--s", "0.1"],
            "--s does not apply to the linear schedule",
        ),
        (
            vec!["schedule", "--beta-start", "0.5", "--beta-end", "0.1"],
            "beta_start = 0.5 exceeds beta_end = 0.1",
        ),
        (
            vec!["schedule", "--kind", "cosine", "--max-beta", "1.5"],
            "max_beta = 1.5",
        ),
        (
            vec!["schedule", "--kind", "quadratic"],
            "invalid value 'quadratic'",
        ),
    ] {
        let out = ddpm(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `ddpm bench` at batch 2, one repetition, with `extra` arguments: its standard output,
/// after checking that it succeeded.
fn tiny_bench(extra: &[&str]) -> String {
    let mut args = vec![
        "bench",
        "--batch",
        "2",
        "--sample-batch",
        "2",
        "--reps",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = ddpm(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--profile` adds each kernel's share of the step and names the costliest shapes.
#[test]
fn bench_profile_names_the_kernels() {
    let text = tiny_bench(&["--profile"]);
    for row in [
        "where the time goes, training step, batch 2",
        "where the time goes, sampling step, batch 2",
        "conv2d ∂w ∂b",
        "group_norm backward",
        "attention backward",
        "candle's ops and the rest",
        "costliest shapes",
    ] {
        assert!(text.contains(row), "no {row:?} in {text}");
    }
}

#[test]
fn bench_prints_its_table() {
    let text = tiny_bench(&[]);
    for row in [
        "train, batch 2",
        "sampling step, batch 2",
        "training step, batch 2: forward",
        "peak RSS",
        "sgemm",
    ] {
        assert!(text.contains(row), "no {row:?} in {text}");
    }
    let out = ddpm(&["bench", "--config", "imagenet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model preset"));
    let out = ddpm(&["bench", "--precision", "bf16", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--precision bf16: needs a CUDA device"));
}
