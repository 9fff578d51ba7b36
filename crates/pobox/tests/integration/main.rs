//! Black-box tests of the real `pobox` binary: `pobox serve` on 127.0.0.1
//! ephemeral ports, driven by real clients and by raw sockets.
//!
//! One integration binary (architecture.md rule 10), ripgrep-style:
//! - `util`: `Dir`, `TestCommand`, `Server` (killed on drop), raw clients.
//! - `pop3`: RFC 1939/2449 behaviour over the wire, with poplib and raw bytes.
//! - `tls`: POP3S, STLS, curl, openssl s_client, STARTTLS injection.
//! - `lmtp`: LMTP intake with smtplib.LMTP, swaks and raw bytes.
//! - `cli`: `pobox deliver`, `pobox user`, start-up errors, SIGTERM.
//! - `robustness`: overlong lines, garbage, bad TLS, malformed passwd-file.
//! - `reload`: SIGHUP re-reads the configuration (issue 12 item 4).
//! - `retention`, `filters`: retention, Sieve and quotas (their own issues).
//! - `logs`, `limits`: session summary lines, plain log values, connection
//!   limits (issue 12, items 7 and 9).
//! - `metrics`: the OpenMetrics endpoint, counters checked against a script.
//! - `autoconfig`: the client autoconfiguration listener (Thunderbird,
//!   Autodiscover, PACC, Apple) and `pobox dns` (issue 13 items 4 and 5).
//! - `saslprep`: a non-ASCII password through PASS, PLAIN and SCRAM (issue 18).
//! - `import_dovecot`: `pobox import dovecot` and `pobox uidl verify` against a
//!   real Dovecot 2.3 with mpop (issue 13), and 2.4 fixture files.
//! - `vacation`: Sieve vacation and redirect through a relay (an SMTP sink the
//!   test runs: plain, STARTTLS with its own CA, the relay down, SIGHUP).
//! - `store_copy`: `pobox export maildir` / `import maildir` on Maildir
//!   (resumable after SIGKILL, UIDLs and bytes kept).
//! - `audit`: the POP3 findings of the issue-17 audit (no-QUIT retention,
//!   error limits and the login deadline, CAPA in both states).
//!
//! Client tools these tests run (Debian packages; `.ci/run` installs them):
//! `python3` (poplib, smtplib; `python3-prometheus-client` for the
//! OpenMetrics parser), `curl`, `openssl`, `swaks`. A test whose tool
//! is missing fails and names the package; none skips silently.
//!
//! Test names say what they prove.

// A test binary: `pub` only marks what modules share with each other.
#![allow(unreachable_pub)]

mod audit;
mod autoconfig;
mod cli;
mod filters;
mod import_dovecot;
mod limits;
mod lmtp;
mod logs;
mod metrics;
mod pop3;
mod reload;
mod retention;
mod saslprep;
mod store_copy;
mod robustness;
mod service;
mod tls;
mod util;
mod vacation;
