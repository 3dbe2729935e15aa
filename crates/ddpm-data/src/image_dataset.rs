//! What the batch loader asks of a dataset.

use crate::{LabeledImages, Result};

/// Labelled images of one size, addressable by index, safe to read from a loader thread.
pub trait ImageDataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (channels, height, width) of every example.
    fn dims(&self) -> (usize, usize, usize);

    /// Class names by label.
    fn class_names(&self) -> &[String];

    /// Example `index` as channel-major values in [−1, 1] (`channels·height·width` of them)
    /// and its label.
    fn get(&self, index: usize) -> Result<(Vec<f32>, u32)>;
}

impl ImageDataset for LabeledImages {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn dims(&self) -> (usize, usize, usize) {
        (1, self.height, self.width)
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn get(&self, index: usize) -> Result<(Vec<f32>, u32)> {
        let values = self
            .image(index)
            .iter()
            .map(|&p| p as f32 / 127.5 - 1.0)
            .collect();
        Ok((values, self.labels[index] as u32))
    }
}
