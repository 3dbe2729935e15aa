//! Batches for training: seeded shuffling per epoch, optional flips and padding, assembled
//! on a background thread so that data never stalls the training step.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};
use crate::ImageDataset;

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Examples per batch.
    pub batch_size: usize,
    /// Visit the examples in a fresh random order each epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Drop the last batch of an epoch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Seed of the order and of the flips.
    pub seed: u64,
    /// Flip each example left-right with probability ½.
    pub horizontal_flip: bool,
    /// Pixels of padding added on every side (e.g. 2 turns 28×28 into 32×32), with value −1
    /// (black, the background of MNIST-style data in [−1, 1]).
    pub pad: usize,
    /// Batches assembled ahead of the consumer.
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            shuffle: true,
            drop_last: true,
            seed: 0,
            horizontal_flip: false,
            pad: 0,
            prefetch: 2,
        }
    }
}

/// One batch on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// (N, C, H, W) values in [−1, 1], row-major.
    pub images: Vec<f32>,
    /// N labels.
    pub labels: Vec<u32>,
    /// (N, C, H, W).
    pub shape: (usize, usize, usize, usize),
    /// Which epoch.
    pub epoch: usize,
    /// Which batch of the epoch.
    pub index: usize,
}

/// One batch on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// f32 (N, C, H, W) in [−1, 1].
    pub images: Tensor,
    /// u32 (N,).
    pub labels: Tensor,
    /// Which epoch.
    pub epoch: usize,
    /// Which batch of the epoch.
    pub index: usize,
}

/// Draws batches from a dataset.
#[derive(Clone)]
pub struct BatchLoader {
    dataset: Arc<dyn ImageDataset>,
    config: LoaderConfig,
}

impl BatchLoader {
    /// A loader over `dataset`. Errors if the batch size is 0, or if `drop_last` leaves no
    /// batch at all.
    pub fn new(dataset: Arc<dyn ImageDataset>, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::InvalidArgument {
                name: "batch size",
                reason: "must be at least 1".into(),
            });
        }
        if config.drop_last && config.batch_size > dataset.len() {
            return Err(DataError::InvalidArgument {
                name: "batch size",
                reason: format!(
                    "{} exceeds the {} examples of the dataset, so dropping the last partial batch leaves none",
                    config.batch_size,
                    dataset.len()
                ),
            });
        }
        Ok(Self { dataset, config })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn ImageDataset> {
        &self.dataset
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// (C, H, W) of the batches, padding included.
    pub fn example_dims(&self) -> (usize, usize, usize) {
        let (c, h, w) = self.dataset.dims();
        (c, h + 2 * self.config.pad, w + 2 * self.config.pad)
    }

    /// The order in which epoch `epoch` visits the examples: a permutation drawn from the
    /// ChaCha stream `epoch` of `seed`, so any epoch can be reproduced on its own (resume).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            order.shuffle(&mut self.rng(epoch, 0));
        }
        order
    }

    fn rng(&self, epoch: usize, purpose: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        rng.set_stream(((epoch as u64) << 1) | purpose);
        rng
    }

    /// Which examples epoch `epoch` flips, drawn in dataset order from the ChaCha stream
    /// next to the order's, so they do not depend on batching (empty without flips).
    pub fn flips(&self, epoch: usize) -> Vec<bool> {
        if !self.config.horizontal_flip {
            return Vec::new();
        }
        let mut rng = self.rng(epoch, 1);
        (0..self.dataset.len())
            .map(|_| rng.random::<bool>())
            .collect()
    }

    /// Assembles batch `index` of `epoch` on the calling thread.
    pub fn host_batch(&self, epoch: usize, index: usize) -> Result<HostBatch> {
        self.assemble(&self.order(epoch), &self.flips(epoch), epoch, index)
    }

    fn assemble(
        &self,
        order: &[usize],
        flips: &[bool],
        epoch: usize,
        index: usize,
    ) -> Result<HostBatch> {
        let b = self.config.batch_size;
        let members = &order[index * b..((index + 1) * b).min(order.len())];
        let (c, h, w) = self.dataset.dims();
        let (ph, pw) = (h + 2 * self.config.pad, w + 2 * self.config.pad);
        let mut images = vec![-1f32; members.len() * c * ph * pw];
        let mut labels = Vec::with_capacity(members.len());
        for (slot, &example) in members.iter().enumerate() {
            let (values, label) = self.dataset.get(example)?;
            let flip = flips.get(example).copied().unwrap_or(false);
            for ch in 0..c {
                for y in 0..h {
                    let src = &values[(ch * h + y) * w..(ch * h + y + 1) * w];
                    let row = ((slot * c + ch) * ph + y + self.config.pad) * pw + self.config.pad;
                    let dst = &mut images[row..row + w];
                    if flip {
                        dst.iter_mut()
                            .zip(src.iter().rev())
                            .for_each(|(d, s)| *d = *s);
                    } else {
                        dst.copy_from_slice(src);
                    }
                }
            }
            labels.push(label);
        }
        Ok(HostBatch {
            images,
            labels,
            shape: (members.len(), c, ph, pw),
            epoch,
            index,
        })
    }

    /// The batches of `epoch` from batch `start` on, assembled `prefetch` ahead on a
    /// background thread and uploaded to `device` as they are taken.
    pub fn epoch(&self, epoch: usize, start: usize, device: &Device) -> EpochBatches {
        let (sender, receiver) = sync_channel(self.config.prefetch.max(1));
        let loader = self.clone();
        let total = self.batches_per_epoch();
        let worker = std::thread::spawn(move || {
            let (order, flips) = (loader.order(epoch), loader.flips(epoch));
            for index in start..total {
                let batch = loader.assemble(&order, &flips, epoch, index);
                let failed = batch.is_err();
                // A closed channel means the consumer stopped early.
                if sender.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        EpochBatches {
            receiver,
            worker: Some(worker),
            device: device.clone(),
        }
    }
}

/// The batches of one epoch; see [`BatchLoader::epoch`].
pub struct EpochBatches {
    receiver: Receiver<Result<HostBatch>>,
    worker: Option<JoinHandle<()>>,
    device: Device,
}

impl Iterator for EpochBatches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let host = match self.receiver.recv() {
            Ok(host) => host,
            Err(_) => {
                if let Some(worker) = self.worker.take() {
                    // The worker ends when it has sent everything; a panic there is a bug.
                    if worker.join().is_err() {
                        return Some(Err(DataError::InvalidArgument {
                            name: "batch loader",
                            reason: "the loader thread panicked".into(),
                        }));
                    }
                }
                return None;
            }
        };
        Some(host.and_then(|h| {
            let n = h.labels.len();
            Ok(Batch {
                images: Tensor::from_vec(h.images, h.shape, &self.device)?,
                labels: Tensor::from_vec(h.labels, n, &self.device)?,
                epoch: h.epoch,
                index: h.index,
            })
        }))
    }
}
