//! The progress display of a long scan: on a terminal only, so logs and pipes get nothing.

use crate::escape::escaped;
use std::{io::IsTerminal, path::Path, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};

const READING_TEMPLATE: &str =
    "{spinner} hashing [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec}, {eta} left";

/// A spinner while the roots are listed, then a bar over the bytes to read. Cleared when
/// dropped, so whatever the caller prints next starts on a clean line.
pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(wanted: bool) -> Self {
        if !(wanted && std::io::stderr().is_terminal()) {
            return Self(ProgressBar::hidden());
        }
        let spinner = ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(100));
        Self(spinner)
    }

    pub fn listing(&self, root: &Path) {
        self.0.set_message(format!("listing {}", escaped(&root)));
    }

    pub fn reading(&self, total_bytes: u64) {
        self.0.set_style(reading_style());
        self.0.set_length(total_bytes);
        self.0.set_position(0);
        self.0.reset_eta();
    }

    pub fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn reading_style() -> ProgressStyle {
    // A test checks the template; the plain bar is only a fallback that cannot panic.
    ProgressStyle::with_template(READING_TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_valid() {
        ProgressStyle::with_template(READING_TEMPLATE).unwrap();
    }

    #[test]
    fn is_hidden_unless_wanted() {
        assert!(Progress::new(false).0.is_hidden());
    }
}
