//! Training checkpoints: one safetensors file holding the model, its EMA, the optimizer's
//! moments and, in the header's metadata, the step, the data position and the RNG state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ddpm_diffusion::NoiseRngState;

use crate::{Result, TrainError};

/// Where training stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingProgress {
    /// Optimizer steps taken.
    pub step: u64,
    /// The epoch the next batch comes from.
    pub epoch: u64,
    /// The index, within that epoch, of the next batch.
    pub batch_in_epoch: u64,
    /// The noise generator's state.
    pub rng: NoiseRngState,
}

/// Everything a run needs to continue exactly.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where training stands.
    pub progress: TrainingProgress,
    /// The model's weights by name.
    pub model: HashMap<String, Tensor>,
    /// The EMA weights by name.
    pub ema: HashMap<String, Tensor>,
    /// The optimizer's moments (see [`crate::AdamW::state`]).
    pub optimizer: HashMap<String, Tensor>,
    /// Free-form text entries (the resolved config, versions…).
    pub extra: HashMap<String, String>,
}

const SECTIONS: [&str; 3] = ["model.", "ema.", "optimizer."];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Checkpoint {
    /// Writes the checkpoint to `path` through a temporary file and a rename, so that a
    /// crash never leaves a half-written checkpoint under the final name.
    pub fn save(&self, path: &Path) -> Result<()> {
        let fail = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut metadata = self.extra.clone();
        let p = &self.progress;
        metadata.insert("step".into(), p.step.to_string());
        metadata.insert("epoch".into(), p.epoch.to_string());
        metadata.insert("batch_in_epoch".into(), p.batch_in_epoch.to_string());
        metadata.insert("rng_key".into(), hex(&p.rng.key));
        metadata.insert("rng_stream".into(), p.rng.stream.to_string());
        metadata.insert("rng_word_pos".into(), p.rng.word_pos.to_string());
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (prefix, map) in SECTIONS
            .iter()
            .zip([&self.model, &self.ema, &self.optimizer])
        {
            for (name, t) in map {
                tensors.push((
                    format!("{prefix}{name}"),
                    t.to_device(&Device::Cpu)?.contiguous()?,
                ));
            }
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some(metadata),
            &tmp,
        )
        .map_err(|e| fail(format!("writing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| fail(format!("renaming {}: {e}", tmp.display())))?;
        Ok(())
    }

    /// Reads a checkpoint written by [`save`](Self::save), placing tensors on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let fail = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
        let mut extra = header.metadata().clone().unwrap_or_default();
        let mut take = |key: &str| {
            extra.remove(key).ok_or_else(|| {
                fail(format!(
                    "metadata has no {key}: not a ddpm training checkpoint"
                ))
            })
        };
        let number = |key: &str, text: String| {
            text.parse::<u128>()
                .map_err(|_| fail(format!("metadata {key} = {text:?} is not a number")))
        };
        let step = number("step", take("step")?)? as u64;
        let epoch = number("epoch", take("epoch")?)? as u64;
        let batch_in_epoch = number("batch_in_epoch", take("batch_in_epoch")?)? as u64;
        let key_text = take("rng_key")?;
        let key = unhex(&key_text).ok_or_else(|| {
            fail(format!(
                "metadata rng_key = {key_text:?} is not 64 hex digits"
            ))
        })?;
        let stream = number("rng_stream", take("rng_stream")?)? as u64;
        let word_pos = number("rng_word_pos", take("rng_word_pos")?)?;
        let all = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| fail(e.to_string()))?;
        let mut sections: [HashMap<String, Tensor>; 3] = Default::default();
        for (name, tensor) in all {
            let Some(i) = SECTIONS.iter().position(|p| name.starts_with(p)) else {
                return Err(fail(format!("unexpected tensor {name}")));
            };
            sections[i].insert(name[SECTIONS[i].len()..].to_string(), tensor);
        }
        let [model, ema, optimizer] = sections;
        Ok(Self {
            progress: TrainingProgress {
                step,
                epoch,
                batch_in_epoch,
                rng: NoiseRngState {
                    key,
                    stream,
                    word_pos,
                },
            },
            model,
            ema,
            optimizer,
            extra,
        })
    }
}

/// The file name of the checkpoint after `step` steps: `step-00001234.safetensors`.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}.safetensors")
}

/// The checkpoints in `dir`, oldest first.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Deletes all but the newest `keep` checkpoints in `dir`.
pub fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(dir)?;
    for old in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_file(old).map_err(|e| TrainError::Checkpoint {
            path: old.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}
