//! Progress display: a bar per account (messages and bytes) when standard
//! error is a terminal, nothing otherwise (cron mail stays clean). Summaries
//! are printed by the caller, one line per account, either way.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The display shared by all accounts of one run.
#[derive(Debug, Clone)]
pub struct Display {
    multi: Option<MultiProgress>,
}

impl Display {
    /// Bars only if `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Display {
        let on = enabled && std::io::stderr().is_terminal();
        Display { multi: on.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())) }
    }

    /// A bar for one account (hidden when the display is off).
    pub fn account(&self, name: &str) -> AccountProgress {
        let bar = match &self.multi {
            Some(m) => {
                let bar = m.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>12} [{bar:30}] {msg} {bytes}/{total_bytes} {bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_prefix(name.to_string());
                bar
            }
            None => ProgressBar::hidden(),
        };
        AccountProgress { bar, done: std::sync::atomic::AtomicU64::new(0), count: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Prints a line above the bars (or plainly when there are none).
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => println!("{line}"),
        }
    }
}

/// One account's bar.
#[derive(Debug)]
pub struct AccountProgress {
    bar: ProgressBar,
    done: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

impl AccountProgress {
    /// A progress that shows nothing (tests, library use).
    pub fn hidden() -> AccountProgress {
        Display { multi: None }.account("")
    }

    pub(crate) fn start(&self, messages: u64, bytes: u64) {
        self.count.store(messages, std::sync::atomic::Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.bar.set_message(format!("0/{messages} msgs"));
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    pub(crate) fn message_done(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let count = self.count.load(std::sync::atomic::Ordering::Relaxed);
        self.bar.set_message(format!("{done}/{count} msgs"));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
