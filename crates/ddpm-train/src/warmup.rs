//! The learning rate over training.

/// Linear warm-up to a constant rate (Ho et al. 2020 warm up over 5,000 steps):
/// η(k) = η·min(1, k/warmup) at step k = 1, 2, …
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupSchedule {
    /// η after warm-up.
    pub lr: f64,
    /// Steps of the warm-up; 0 starts at η.
    pub warmup_steps: u64,
}

impl WarmupSchedule {
    /// The learning rate of step `step` (1-based).
    pub fn at(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * (step as f64 / self.warmup_steps as f64).min(1.0)
        }
    }
}
