//! Raw samples on disk. `ddpm sample --tensors FILE` writes them and `ddpm eval --samples`
//! reads one or more such files. The safetensors header records how the images were drawn
//! ([`Provenance`]), so that an evaluation assembled from many files (drawn in pieces, over
//! interrupted sessions) can name its sampler and refuse files that repeat a seed: two draws
//! with the same seed hold the same images, which would flatter precision and understate
//! the spread of the samples.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

/// The tensor holding the images, (N, C, H, W) in [−1, 1].
const IMAGES: &str = "images";

/// How a file of samples was drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// The model (checkpoint or pipeline directory) as given on the command line.
    pub checkpoint: String,
    /// "ddpm" or "ddim".
    pub sampler: String,
    /// Reverse steps.
    pub steps: usize,
    /// DDIM's η (0 for DDPM, where it does not apply).
    pub eta: f64,
    /// Classifier-free guidance weight.
    pub guidance: f64,
    /// The one class drawn, or `None` for all classes in turn.
    pub class: Option<u32>,
    /// The seed of the first batch; batch i uses `seed + i`.
    pub seed: u64,
    /// Batches the images were drawn in, so the file used seeds `seed .. seed + batches`.
    pub batches: u64,
}

impl Provenance {
    fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("checkpoint".into(), self.checkpoint.clone());
        m.insert("sampler".into(), self.sampler.clone());
        m.insert("steps".into(), self.steps.to_string());
        m.insert("eta".into(), self.eta.to_string());
        m.insert("guidance".into(), self.guidance.to_string());
        if let Some(c) = self.class {
            m.insert("class".into(), c.to_string());
        }
        m.insert("seed".into(), self.seed.to_string());
        m.insert("batches".into(), self.batches.to_string());
        m
    }

    fn from_metadata(path: &Path, m: &HashMap<String, String>) -> Result<Option<Self>> {
        if !m.contains_key("sampler") {
            return Ok(None); // written before provenance was recorded
        }
        let field = |key: &str| -> Result<&String> {
            m.get(key).with_context(|| {
                format!("{}: metadata has `sampler` but no `{key}`", path.display())
            })
        };
        let parse_err = |key: &str| format!("{}: metadata `{key}` is not a number", path.display());
        Ok(Some(Self {
            checkpoint: field("checkpoint")?.clone(),
            sampler: field("sampler")?.clone(),
            steps: field("steps")?
                .parse()
                .with_context(|| parse_err("steps"))?,
            eta: field("eta")?.parse().with_context(|| parse_err("eta"))?,
            guidance: field("guidance")?
                .parse()
                .with_context(|| parse_err("guidance"))?,
            class: match m.get("class") {
                Some(c) => Some(c.parse().with_context(|| parse_err("class"))?),
                None => None,
            },
            seed: field("seed")?.parse().with_context(|| parse_err("seed"))?,
            batches: field("batches")?
                .parse()
                .with_context(|| parse_err("batches"))?,
        }))
    }

    /// Everything but the seeds: files that agree on this were drawn the same way.
    fn method(&self) -> (&str, &str, usize, u64, u64, Option<u32>) {
        (
            &self.checkpoint,
            &self.sampler,
            self.steps,
            self.eta.to_bits(),
            self.guidance.to_bits(),
            self.class,
        )
    }
}

/// Writes `images` with their provenance, through a temporary file and a rename.
pub fn write_samples(path: &Path, images: &Tensor, provenance: &Provenance) -> Result<()> {
    let images = images
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file([(IMAGES, &images)], Some(provenance.to_metadata()), &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

/// Samples read from one or more files.
pub struct SampleSet {
    /// All images, concatenated in the order of the files.
    pub images: Tensor,
    /// How they were drawn, when every file records it (and they all agree).
    pub provenance: Option<Provenance>,
}

/// Reads and concatenates sample files. Files that record their provenance must agree on
/// how they were drawn (model, sampler, steps, η, guidance, class) and must not share a
/// seed; files without it (older ones) are accepted, and the set's provenance is unknown.
pub fn read_samples(paths: &[PathBuf], device: &Device) -> Result<SampleSet> {
    if paths.is_empty() {
        bail!("no sample files given");
    }
    let mut images = Vec::new();
    let mut provenances: Vec<(PathBuf, Option<Provenance>)> = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let provenance = Provenance::from_metadata(path, &metadata)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .with_context(|| format!("reading {}", path.display()))?;
        let tensor = tensors.get(IMAGES).with_context(|| {
            format!(
                "{}: no `{IMAGES}` tensor (write samples with `ddpm sample --tensors FILE`)",
                path.display()
            )
        })?;
        if tensor.rank() != 4 {
            bail!(
                "{}: `{IMAGES}` has shape {:?}; expected (N, C, H, W)",
                path.display(),
                tensor.dims()
            );
        }
        if let Some(first) = images.first() {
            let first: &Tensor = first;
            if first.dims()[1..] != tensor.dims()[1..] {
                bail!(
                    "{}: images of shape {:?}, but {} holds {:?}",
                    path.display(),
                    &tensor.dims()[1..],
                    paths[0].display(),
                    &first.dims()[1..]
                );
            }
        }
        images.push(tensor.to_dtype(DType::F32)?);
        provenances.push((path.clone(), provenance));
    }
    Ok(SampleSet {
        images: Tensor::cat(&images, 0)?,
        provenance: combined_provenance(&provenances)?,
    })
}

/// The provenance shared by all files, after checking that they agree and that no two used
/// the same seed.
fn combined_provenance(files: &[(PathBuf, Option<Provenance>)]) -> Result<Option<Provenance>> {
    let mut known = Vec::new();
    for (path, p) in files {
        match p {
            Some(p) => known.push((path, p)),
            None => return Ok(None),
        }
    }
    let (first_path, first) = known[0];
    for &(path, p) in &known[1..] {
        if p.method() != first.method() {
            bail!(
                "{} and {} were drawn differently ({:?} against {:?}); evaluate them separately",
                first_path.display(),
                path.display(),
                first.method(),
                p.method()
            );
        }
    }
    for (i, &(a_path, a)) in known.iter().enumerate() {
        for &(b_path, b) in &known[i + 1..] {
            let a_end = a.seed.saturating_add(a.batches);
            let b_end = b.seed.saturating_add(b.batches);
            if a.seed < b_end && b.seed < a_end {
                bail!(
                    "{} (seeds {}..{}) and {} (seeds {}..{}) share seeds, so they hold the same images; draw each file with its own --seed",
                    a_path.display(),
                    a.seed,
                    a_end,
                    b_path.display(),
                    b.seed,
                    b_end
                );
            }
        }
    }
    let mut combined = first.clone();
    combined.seed = known
        .iter()
        .map(|(_, p)| p.seed)
        .min()
        .unwrap_or(first.seed);
    combined.batches = known.iter().map(|(_, p)| p.batches).sum();
    Ok(Some(combined))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provenance(seed: u64, batches: u64) -> Provenance {
        Provenance {
            checkpoint: "model".into(),
            sampler: "ddpm".into(),
            steps: 1000,
            eta: 0.0,
            guidance: 0.0,
            class: None,
            seed,
            batches,
        }
    }

    fn write(dir: &Path, name: &str, n: usize, p: &Provenance) -> PathBuf {
        let path = dir.join(name);
        let images = Tensor::full(p.seed as f32, (n, 1, 2, 2), &Device::Cpu).unwrap();
        write_samples(&path, &images, p).unwrap();
        path
    }

    #[test]
    fn files_concatenate_in_order_with_their_provenance() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.safetensors", 3, &provenance(0, 1));
        let b = write(dir.path(), "b.safetensors", 2, &provenance(1, 2));
        let set = read_samples(&[a, b], &Device::Cpu).unwrap();
        let values: Vec<f32> = set.images.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(values, [vec![0.0; 12], vec![1.0; 8]].concat());
        let p = set.provenance.unwrap();
        assert_eq!(
            (p.sampler.as_str(), p.steps, p.seed, p.batches),
            ("ddpm", 1000, 0, 3)
        );
    }

    #[test]
    fn overlapping_seeds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.safetensors", 3, &provenance(0, 2));
        let b = write(dir.path(), "b.safetensors", 3, &provenance(1, 1));
        let err = read_samples(&[a, b], &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("share seeds"), "{err}");
    }

    #[test]
    fn files_drawn_differently_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.safetensors", 3, &provenance(0, 1));
        let mut other = provenance(1, 1);
        other.steps = 50;
        let b = write(dir.path(), "b.safetensors", 3, &other);
        let err = read_samples(&[a, b], &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("drawn differently"), "{err}");
    }
}
