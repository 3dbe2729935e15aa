//! `ddpm compare-schedules`: the figures that show why the cosine schedule was introduced.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use ddpm_data::{IdxDataset, Split};
use ddpm_diffusion::{GaussianDiffusion, NoiseRng};
use ddpm_schedule::{BetaSchedule, NoiseSchedule};
use plotters::style::RGBColor;

use crate::figures::{save_labelled_grid, save_line_chart, LabelledGrid, LineChart, Series};

/// `ddpm compare-schedules`.
#[derive(Debug, Clone, Args)]
pub struct CompareSchedulesCommand {
    /// Number of diffusion steps T of both schedules.
    #[arg(long, default_value_t = 1000)]
    pub timesteps: usize,
    /// Where the PNGs and CSVs are written.
    #[arg(long, default_value = "assets")]
    pub out_dir: PathBuf,
    /// An image to noise (any format; converted to grayscale, fit within 64×64). Without it,
    /// a Fashion-MNIST test image is used.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Directory holding Fashion-MNIST (searched before $DDPM_DATA_DIR, the cache and
    /// ../shared/data/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Which Fashion-MNIST test image to noise.
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// Seed of the noise ε, shared by both rows.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

const COLUMNS: usize = 11;
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);

/// A grayscale image scaled to [−1, 1], and where it came from.
struct SourceImage {
    height: usize,
    width: usize,
    values: Vec<f32>,
    description: String,
}

impl CompareSchedulesCommand {
    pub fn run(&self) -> Result<()> {
        std::fs::create_dir_all(&self.out_dir)
            .with_context(|| format!("creating output directory {}", self.out_dir.display()))?;
        let schedules = [
            (
                "linear",
                NoiseSchedule::new(BetaSchedule::linear(), self.timesteps)?,
            ),
            (
                "cosine",
                NoiseSchedule::new(BetaSchedule::cosine(), self.timesteps)?,
            ),
        ];
        self.alpha_bar_figure(&schedules)?;
        self.noising_figure(&schedules)?;
        Ok(())
    }

    /// `schedule_comparison.png` and `.csv`: ᾱ_t against t/T.
    fn alpha_bar_figure(&self, schedules: &[(&str, NoiseSchedule); 2]) -> Result<()> {
        let big_t = self.timesteps as f64;
        let alpha_bar = |s: &NoiseSchedule, t: usize| if t == 0 { 1.0 } else { s.alpha_bar(t) };
        let mut csv = String::from("t,t_over_T,alpha_bar_linear,alpha_bar_cosine\n");
        for t in 0..=self.timesteps {
            let (lin, cos) = (alpha_bar(&schedules[0].1, t), alpha_bar(&schedules[1].1, t));
            writeln!(csv, "{t},{:.16e},{lin:.16e},{cos:.16e}", t as f64 / big_t)?;
        }
        write_file(
            &self.out_dir.join("schedule_comparison.csv"),
            csv.as_bytes(),
        )?;

        let series = schedules
            .iter()
            .zip([BLUE, ORANGE])
            .map(|((name, s), color)| Series {
                label: format!("{name} (T = {})", self.timesteps),
                points: (0..=self.timesteps)
                    .map(|t| (t as f64 / big_t, alpha_bar(s, t)))
                    .collect(),
                color,
            })
            .collect();
        let chart = LineChart {
            title: "Signal kept by the forward process: ᾱ_t of the linear and cosine schedules",
            x_label: "diffusion step t / T",
            y_label: "ᾱ_t  (x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε)",
            x_range: 0.0..1.0,
            y_range: 0.0..1.02,
            series,
        };
        let path = self.out_dir.join("schedule_comparison.png");
        save_line_chart(&chart, &path, (1000, 650))?;
        tracing::info!(path = %path.display(), "wrote ᾱ comparison");
        Ok(())
    }

    /// `noising_comparison.png` and `.csv`: one image noised at t = 0, T/10, …, T per schedule.
    fn noising_figure(&self, schedules: &[(&str, NoiseSchedule); 2]) -> Result<()> {
        let source = self.source_image()?;
        let device = Device::Cpu;
        let ts: Vec<usize> = (0..COLUMNS)
            .map(|k| ((k * self.timesteps) as f64 / (COLUMNS - 1) as f64).round() as usize)
            .collect();
        let shape = (1, 1, source.height, source.width);
        let x0 =
            Tensor::from_vec(source.values.clone(), shape, &device)?.repeat((COLUMNS, 1, 1, 1))?;
        // One ε for every cell, so the rows differ only by their schedule.
        let noise = NoiseRng::new(self.seed)
            .randn(shape, &device)?
            .repeat((COLUMNS, 1, 1, 1))?;
        let t = Tensor::from_vec(
            ts.iter().map(|&t| t as u32).collect::<Vec<_>>(),
            COLUMNS,
            &device,
        )?;

        let mut csv = String::from("schedule,t,t_over_T,alpha_bar,sqrt_alpha_bar,sqrt_one_minus_alpha_bar,correlation_with_x0\n");
        let mut cells = Vec::new();
        for (name, schedule) in schedules {
            let diffusion = GaussianDiffusion::epsilon(schedule.clone(), &device)?;
            let x_t = diffusion.q_sample(&x0, &t, &noise)?;
            let mut row = Vec::new();
            for (k, &tt) in ts.iter().enumerate() {
                let values = x_t.get(k)?.flatten_all()?.to_vec1::<f32>()?;
                let ab = if tt == 0 { 1.0 } else { schedule.alpha_bar(tt) };
                writeln!(
                    csv,
                    "{name},{tt},{:.6},{ab:.16e},{:.16e},{:.16e},{:.6}",
                    tt as f64 / self.timesteps as f64,
                    ab.sqrt(),
                    (1.0 - ab).sqrt(),
                    correlation(&values, &source.values)
                )?;
                row.push(values.iter().map(|v| (v + 1.0) / 2.0).collect());
            }
            cells.push(row);
        }
        write_file(&self.out_dir.join("noising_comparison.csv"), csv.as_bytes())?;

        let title = format!(
            "Forward noising of {}, same ε in every cell",
            source.description
        );
        let grid = LabelledGrid {
            title: &title,
            row_labels: schedules.iter().map(|(name, _)| name.to_string()).collect(),
            col_labels: ts.iter().map(|t| format!("t = {t}")).collect(),
            height: source.height,
            width: source.width,
            cells,
            scale: (112 / source.height.max(source.width)).max(1),
        };
        let path = self.out_dir.join("noising_comparison.png");
        save_labelled_grid(&grid, &path)?;
        tracing::info!(path = %path.display(), "wrote noising comparison");
        Ok(())
    }

    fn source_image(&self) -> Result<SourceImage> {
        if let Some(path) = &self.image {
            let img =
                image::open(path).with_context(|| format!("reading image {}", path.display()))?;
            let img = if img.width() > 64 || img.height() > 64 {
                img.resize(64, 64, image::imageops::FilterType::Lanczos3)
            } else {
                img
            };
            let gray = img.to_luma8();
            return Ok(SourceImage {
                height: gray.height() as usize,
                width: gray.width() as usize,
                values: gray.pixels().map(|p| p.0[0] as f32 / 127.5 - 1.0).collect(),
                description: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            });
        }
        let dataset = IdxDataset::FashionMnist;
        let mut dirs = dataset.search_dirs(self.data_dir.as_deref());
        dirs.push(PathBuf::from("../shared/data/fashion-mnist"));
        let dir = dataset
            .locate_in(&dirs, Split::Test)
            .context("no image to noise: pass --image PATH or --data-dir with Fashion-MNIST")?;
        let data = dataset.load(&dir, Split::Test, false)?;
        anyhow::ensure!(
            self.index < data.len(),
            "--index {} is out of range: the Fashion-MNIST test set has {} images",
            self.index,
            data.len()
        );
        let class = &data.class_names[data.labels[self.index] as usize];
        Ok(SourceImage {
            height: data.height,
            width: data.width,
            values: data
                .to_tensor(&[self.index], &Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            description: format!(
                "a Fashion-MNIST test image ({}, #{})",
                class.to_lowercase(),
                self.index
            ),
        })
    }
}

/// Pearson correlation of two equally long vectors.
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&v| v as f64).sum::<f64>() / n,
        b.iter().map(|&v| v as f64).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    tracing::info!(path = %path.display(), "wrote");
    Ok(())
}
