//! Crash points for the kill tests of `pobox import maildir` and `pobox
//! export maildir`. A debug build started with `POBOX_FAULT=<point>:<n>`
//! sends itself SIGKILL the n-th time (1-based) it reaches `<point>`, so a
//! test can stop a copy after exactly n messages and check that a rerun
//! copies each message exactly once. Release builds compile it out: no
//! environment variable can make an installed pobox kill itself.

static COPY: pobox_fetch::fault::Faults = pobox_fetch::fault::Faults::new("POBOX_FAULT");

/// Dies here if `POBOX_FAULT` names this point (debug builds only).
pub fn point(name: &str) {
    COPY.point(name);
}
