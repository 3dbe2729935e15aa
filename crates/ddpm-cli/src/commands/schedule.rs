//! `ddpm schedule`: print a noise schedule's coefficients, one row per t = 1..T.

use std::io::Write;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use ddpm_schedule::{BetaSchedule, NoiseSchedule};

/// The schedule families, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleKind {
    /// Ho et al. 2020: β linear from 1e-4 to 0.02.
    Linear,
    /// Nichol & Dhariwal 2021: ᾱ_t = f(t)/f(0), f(t) = cos(((t/T + s)/(1 + s))·π/2)².
    Cosine,
    /// Linear in √β (Stable Diffusion's "scaled_linear").
    ScaledLinear,
    /// Chen 2023: ᾱ follows a sigmoid.
    Sigmoid,
}

/// Which schedule, with optional overrides of its parameters.
#[derive(Debug, Clone, Args)]
pub struct ScheduleSpec {
    /// The schedule family.
    #[arg(long, value_enum, default_value_t = ScheduleKind::Linear)]
    pub kind: ScheduleKind,
    /// Number of diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    pub timesteps: usize,
    /// β_1 of the linear schedules (default 1e-4).
    #[arg(long)]
    pub beta_start: Option<f64>,
    /// β_T of the linear schedules (default 0.02).
    #[arg(long)]
    pub beta_end: Option<f64>,
    /// The cosine schedule's offset s (default 0.008).
    #[arg(long)]
    pub s: Option<f64>,
    /// The clip on β of the cosine and sigmoid schedules (default 0.999).
    #[arg(long)]
    pub max_beta: Option<f64>,
}

impl ScheduleSpec {
    /// The schedule family with the overrides applied; an override that does not belong to
    /// the family is an error naming it.
    pub fn beta_schedule(&self) -> Result<BetaSchedule> {
        let reject = |flag: &str, given: bool| -> Result<()> {
            if given {
                let kind = self
                    .kind
                    .to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default();
                bail!("--{flag} does not apply to the {kind} schedule");
            }
            Ok(())
        };
        Ok(match self.kind {
            ScheduleKind::Linear | ScheduleKind::ScaledLinear => {
                reject("s", self.s.is_some())?;
                reject("max-beta", self.max_beta.is_some())?;
                let (beta_start, beta_end) = (
                    self.beta_start.unwrap_or(1e-4),
                    self.beta_end.unwrap_or(0.02),
                );
                if self.kind == ScheduleKind::Linear {
                    BetaSchedule::Linear {
                        beta_start,
                        beta_end,
                    }
                } else {
                    BetaSchedule::ScaledLinear {
                        beta_start,
                        beta_end,
                    }
                }
            }
            ScheduleKind::Cosine => {
                reject("beta-start", self.beta_start.is_some())?;
                reject("beta-end", self.beta_end.is_some())?;
                BetaSchedule::Cosine {
                    s: self.s.unwrap_or(0.008),
                    max_beta: self.max_beta.unwrap_or(0.999),
                }
            }
            ScheduleKind::Sigmoid => {
                reject("beta-start", self.beta_start.is_some())?;
                reject("beta-end", self.beta_end.is_some())?;
                reject("s", self.s.is_some())?;
                match BetaSchedule::sigmoid() {
                    BetaSchedule::Sigmoid {
                        start, end, tau, ..
                    } => BetaSchedule::Sigmoid {
                        start,
                        end,
                        tau,
                        max_beta: self.max_beta.unwrap_or(0.999),
                    },
                    other => other,
                }
            }
        })
    }

    /// The schedule's numbers.
    pub fn build(&self) -> Result<NoiseSchedule> {
        Ok(NoiseSchedule::new(self.beta_schedule()?, self.timesteps)?)
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Comma-separated, with a header row; 17 significant digits.
    Csv,
    /// A JSON array of objects with the same keys as the CSV header.
    Json,
}

/// `ddpm schedule`.
#[derive(Debug, Clone, Args)]
pub struct ScheduleCommand {
    #[command(flatten)]
    pub spec: ScheduleSpec,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
}

/// The CSV header, in column order.
pub const COLUMNS: [&str; 7] = [
    "t",
    "beta",
    "alpha",
    "alpha_bar",
    "sqrt_alpha_bar",
    "sqrt_one_minus_alpha_bar",
    "posterior_variance",
];

/// One output row; field order is [`COLUMNS`]' order.
#[derive(serde::Serialize)]
struct Row {
    t: usize,
    beta: f64,
    alpha: f64,
    alpha_bar: f64,
    sqrt_alpha_bar: f64,
    sqrt_one_minus_alpha_bar: f64,
    posterior_variance: f64,
}

impl Row {
    fn at(s: &NoiseSchedule, t: usize) -> Self {
        Self {
            t,
            beta: s.beta(t),
            alpha: s.alpha(t),
            alpha_bar: s.alpha_bar(t),
            sqrt_alpha_bar: s.sqrt_alpha_bar(t),
            sqrt_one_minus_alpha_bar: s.sqrt_one_minus_alpha_bar(t),
            posterior_variance: s.posterior_variance(t),
        }
    }

    fn values(&self) -> [f64; 6] {
        [
            self.beta,
            self.alpha,
            self.alpha_bar,
            self.sqrt_alpha_bar,
            self.sqrt_one_minus_alpha_bar,
            self.posterior_variance,
        ]
    }
}

impl ScheduleCommand {
    pub fn run(&self, out: &mut dyn Write) -> Result<()> {
        let schedule = self.spec.build()?;
        match self.format {
            Format::Csv => {
                writeln!(out, "{}", COLUMNS.join(","))?;
                for t in 1..=schedule.num_timesteps() {
                    let values: Vec<String> = Row::at(&schedule, t)
                        .values()
                        .iter()
                        .map(|v| format!("{v:.16e}"))
                        .collect();
                    writeln!(out, "{t},{}", values.join(","))?;
                }
            }
            Format::Json => {
                let rows: Vec<Row> = (1..=schedule.num_timesteps())
                    .map(|t| Row::at(&schedule, t))
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
            }
        }
        out.flush()?;
        Ok(())
    }
}
