//! Development front end: `pobox-fetch-dev [FETCH ARGS]` behaves like
//! `pobox fetch`, for this crate's end-to-end and kill tests before (and
//! independently of) the `pobox` binary.

#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(name = "pobox-fetch-dev", about = "pobox fetch (development binary)")]
struct Cli {
    /// The accounts file (default: $XDG_CONFIG_HOME/pobox/fetch.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    fetch: pobox_fetch::FetchArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut fetch = cli.fetch;
    fetch.config = cli.config;
    pobox_fetch::run(fetch)
}
