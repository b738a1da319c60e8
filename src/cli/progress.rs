//! Progress of long CLI work: a bar on a terminal, a plain line a second otherwise (logs, pipes).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Counts work done and shows it on standard error.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    done: u64,
    last_line: Instant,
}

/// How often a plain progress line is written.
const LINE_EVERY: Duration = Duration::from_secs(1);

impl Progress {
    /// Progress of `label`, out of about `total` if known.
    pub fn new(label: &str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::new_spinner(),
            };
            let template = "{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_owned());
            bar
        });
        Self {
            bar,
            label: label.to_owned(),
            done: 0,
            last_line: Instant::now(),
        }
    }

    /// Counts `n` more done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_line.elapsed() >= LINE_EVERY => {
                eprintln!("{}: {} done", self.label, self.done);
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    /// Ends the display.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
