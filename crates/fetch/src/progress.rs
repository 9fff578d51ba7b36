//! Progress display: a bar per account (messages and bytes) when standard
//! error is a terminal, nothing otherwise (cron mail stays clean). Summaries
//! are printed by the caller, one line per account, either way.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The display shared by all accounts of one run.
#[derive(Debug, Clone)]
pub struct Display {
    multi: Option<MultiProgress>,
    /// Width of the account-name column (the longest name).
    width: usize,
}

impl Display {
    /// Bars only if `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Display {
        let on = enabled && std::io::stderr().is_terminal();
        Display { multi: on.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())), width: 12 }
    }

    /// Sizes the name column for these account names, so the bars line up
    /// and no name is cut.
    #[must_use]
    pub fn with_names<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Display {
        self.width = names.into_iter().map(|n| n.chars().count()).max().unwrap_or(0).clamp(4, 40);
        self
    }

    /// A bar for one account (hidden when the display is off).
    pub fn account(&self, name: &str) -> AccountProgress {
        let bar = match &self.multi {
            Some(m) => {
                let bar = m.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(&format!(
                        "{{prefix:>{}}} [{{wide_bar}}] {{msg}}  {{bytes}}/{{total_bytes}}  {{binary_bytes_per_sec}}  {{eta}}",
                        self.width
                    ))
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_prefix(name.to_string());
                bar.set_message("connecting");
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

    /// Prints a line for standard error above the bars (they are drawn on
    /// standard error too), or plainly when there are none.
    pub fn eprintln(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
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
        Display { multi: None, width: 0 }.account("")
    }

    /// Sets the bar's totals: `messages` to come, `bytes` (LIST sizes) in all.
    pub fn start(&self, messages: u64, bytes: u64) {
        self.count.store(messages, std::sync::atomic::Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.bar.set_message(format!("0/{messages} msgs"));
    }

    /// `n` octets of a message arrived, counted as on the wire (CRLF), the
    /// way LIST sizes (the bar's length) count them.
    pub(crate) fn add_bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    /// A message is complete. `listed` is its LIST size and `received` the
    /// octets counted for it: a header-only download (TOP) advances the
    /// bar by the rest of the listed size, so the bar ends full.
    pub(crate) fn message_done(&self, listed: u64, received: u64) {
        self.bar.inc(listed.saturating_sub(received));
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let count = self.count.load(std::sync::atomic::Ordering::Relaxed);
        self.bar.set_message(format!("{done}/{count} msgs"));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
