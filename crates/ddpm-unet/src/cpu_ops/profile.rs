//! Where a step's time goes: when switched on, every CPU kernel call adds its wall time to a
//! table keyed by the kernel and its shape (`ddpm bench --profile` prints it). Switched off
//! (the default), a kernel call costs one atomic load for this.
//!
//! ```
//! use ddpm_unet::cpu_ops::profile;
//! profile::start();
//! // … run forward and backward passes on the CPU …
//! for entry in profile::take() {
//!     println!("{} {} {:.1} ms ×{}", entry.kernel, entry.shape, entry.seconds * 1e3, entry.calls);
//! }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// (kernel, shape) → (seconds, calls).
type Table = BTreeMap<(&'static str, String), (f64, usize)>;

static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Table> = Mutex::new(BTreeMap::new());

/// The time spent in one kernel at one shape since [`start`].
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The kernel, e.g. `conv2d`, `conv2d ∂w`, `group_norm backward`.
    pub kernel: &'static str,
    /// Its shape, e.g. `64→64 3×3 @14×14 s1, batch 64`.
    pub shape: String,
    /// Wall-clock seconds, summed over calls.
    pub seconds: f64,
    /// Calls.
    pub calls: usize,
}

/// Clears the table and starts recording.
pub fn start() {
    lock().clear();
    ON.store(true, Ordering::Relaxed);
}

/// Stops recording and returns the table, the most time first.
pub fn take() -> Vec<Entry> {
    ON.store(false, Ordering::Relaxed);
    let mut entries: Vec<Entry> = std::mem::take(&mut *lock())
        .into_iter()
        .map(|((kernel, shape), (seconds, calls))| Entry {
            kernel,
            shape,
            seconds,
            calls,
        })
        .collect();
    entries.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    entries
}

/// Runs `f`, and while recording adds its time under `kernel` and `shape()` (which is only
/// formatted then).
pub(crate) fn time<R>(
    kernel: &'static str,
    shape: impl FnOnce() -> String,
    f: impl FnOnce() -> R,
) -> R {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let started = Instant::now();
    let out = f();
    let seconds = started.elapsed().as_secs_f64();
    let mut table = lock();
    let slot = table.entry((kernel, shape())).or_insert((0.0, 0));
    slot.0 += seconds;
    slot.1 += 1;
    out
}

/// The table, even if a panicking thread poisoned its lock (the sums stay usable).
fn lock() -> std::sync::MutexGuard<'static, Table> {
    TABLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test for the whole module: the table is process-wide.
    #[test]
    fn records_only_between_start_and_take() {
        time("off", || "before".into(), || ());
        start();
        let v = time("k", || "a".into(), || 7);
        assert_eq!(v, 7);
        time(
            "k",
            || "a".into(),
            || std::thread::sleep(std::time::Duration::from_millis(2)),
        );
        time("k", || "b".into(), || ());
        let entries = take();
        assert_eq!(entries.len(), 2, "{entries:?}");
        let a = entries.iter().find(|e| e.shape == "a").expect("shape a");
        assert_eq!((a.kernel, a.calls), ("k", 2));
        assert!(a.seconds >= 0.002, "{a:?}");
        assert_eq!(entries[0].shape, "a", "most time first");
        time("off", || "after".into(), || ());
        assert!(take().is_empty());
    }
}
