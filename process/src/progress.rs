//! Progress of an operator's long command (a backfill, a replay): a bar on stderr when it is a
//! terminal, otherwise a plain line every 5 s (systemd's journal, CI logs, `| tee`), so the
//! output stays readable where a bar's redraws would not be.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct OperatorProgress {
    bar: indicatif::ProgressBar,
    tty: bool,
    label: &'static str,
    last_line: Instant,
}

impl OperatorProgress {
    /// `label` starts each plain line (`backfill: 120/400 …`).
    pub fn new(label: &'static str) -> Self {
        let bar = indicatif::ProgressBar::new(0);
        let tty = std::io::stderr().is_terminal();
        if tty {
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} ({per_sec}, {eta} left)",
                )
                .expect("valid template"),
            );
        } else {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Self { bar, tty, label, last_line: Instant::now() }
    }

    /// `position` of `total` `unit`s done; `message` says what came of them so far.
    pub fn update(&mut self, position: u64, total: u64, unit: &str, message: &str) {
        self.bar.set_length(total);
        self.bar.set_position(position);
        self.bar.set_message(format!("{unit} · {message}"));
        if !self.tty && self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            let percent = 100.0 * position as f64 / total.max(1) as f64;
            eprintln!("{}: {position}/{total} {unit} ({percent:.0}%), {message}", self.label);
        }
    }

    /// Removes the bar (the command prints its summary after it).
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
