//! Progress bars that share the terminal with `tracing` logs: while a bar is shown, each log
//! line is printed above it instead of through it.

use std::io::Write;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A bar over `len` units, registered so that logs print above it; finish it with
/// [`finish`].
pub fn start(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    if let Ok(mut active) = ACTIVE.lock() {
        *active = Some(bar.clone());
    }
    bar
}

/// Clears the bar and stops routing logs around it.
pub fn finish(bar: &ProgressBar) {
    bar.finish_and_clear();
    if let Ok(mut active) = ACTIVE.lock() {
        *active = None;
    }
}

/// The `tracing` writer: buffers one event and prints it to stderr, above the active bar.
#[derive(Default)]
pub struct LogWriter(Vec<u8>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.0);
        let print = || {
            let _ = std::io::stderr().lock().write_all(&bytes);
        };
        let bar = ACTIVE.lock().ok().and_then(|active| active.clone());
        match bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }
}

/// Makes a [`LogWriter`] per event.
pub fn log_writer() -> LogWriter {
    LogWriter::default()
}
