//! Deciding what to do with each message on the server: pure, so every
//! policy (delete, keep, delete-after-days, max_size) is unit-tested without
//! a server, and `--dry-run` prints exactly what a real run would do.

use crate::config::{Oversize, Retention};
use crate::journal::Journal;

/// A message as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Message number in this session.
    pub num: u32,
    /// Size in octets (LIST).
    pub size: u64,
    /// Unique id (UIDL), when the server has one.
    pub uidl: Option<String>,
}

/// What happens to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Download it; then DELE it if `then_delete`.
    Fetch {
        /// Only the header (`TOP n 0`), because it is over `max_size`.
        headers_only: bool,
        /// Send DELE once it is stored and journalled.
        then_delete: bool,
    },
    /// Already stored: DELE it now (delete mode, a pending delete from an
    /// interrupted run, or its `delete_after_days` are up).
    Delete,
    /// Already stored and staying on the server.
    Keep,
    /// Over `max_size`: left alone.
    SkipOversize,
}

/// A message and its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The message.
    pub msg: Listed,
    /// Its fate.
    pub action: Action,
}

/// Policy inputs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Server-side retention.
    pub retention: Retention,
    /// Largest message fetched in full.
    pub max_size: Option<u64>,
    /// What to do with larger ones.
    pub oversize: Oversize,
}

/// Plans the session. `now` is seconds since the epoch.
pub fn plan(listed: &[Listed], journal: &Journal, policy: Policy, now: u64) -> Vec<Step> {
    let delete_on_store = match policy.retention {
        Retention::Delete | Retention::DeleteAfterDays(0) => true,
        Retention::Keep | Retention::DeleteAfterDays(_) => false,
    };
    let too_big = |size: u64| policy.max_size.is_some_and(|m| size > m);
    listed
        .iter()
        .map(|m| {
            let entry = m.uidl.as_deref().and_then(|u| journal.get(u));
            let action = match entry {
                Some(e) if e.headers_only && !too_big(m.size) => {
                    // max_size was raised since: fetch it whole now.
                    Action::Fetch { headers_only: false, then_delete: delete_on_store }
                }
                Some(e) if e.headers_only => Action::Keep,
                Some(e) => match policy.retention {
                    Retention::Delete => Action::Delete,
                    Retention::Keep => Action::Keep,
                    Retention::DeleteAfterDays(d) if now >= e.stored_at.saturating_add(u64::from(d) * 86_400) => {
                        Action::Delete
                    }
                    Retention::DeleteAfterDays(_) => Action::Keep,
                },
                None if too_big(m.size) => match policy.oversize {
                    Oversize::Skip => Action::SkipOversize,
                    // An oversize message is never deleted: only its
                    // header is here.
                    Oversize::Headers => Action::Fetch { headers_only: true, then_delete: false },
                },
                None => Action::Fetch { headers_only: false, then_delete: delete_on_store },
            };
            Step { msg: m.clone(), action }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed() -> Vec<Listed> {
        (1..=4).map(|n| Listed { num: n, size: u64::from(n) * 100, uidl: Some(format!("u{n}")) }).collect()
    }

    fn journal_with(dir: &std::path::Path, stored: &[(&str, u64, bool)]) -> Journal {
        let mut j = Journal::open(dir, "t@h:1").unwrap();
        for (u, ts, h) in stored {
            j.record_stored(u, *ts, *h).unwrap();
        }
        j
    }

    fn actions(steps: &[Step]) -> Vec<Action> {
        steps.iter().map(|s| s.action).collect()
    }

    const FETCH_DEL: Action = Action::Fetch { headers_only: false, then_delete: true };
    const FETCH_KEEP: Action = Action::Fetch { headers_only: false, then_delete: false };

    #[test]
    fn delete_mode_fetches_new_and_retries_pending_deletes() {
        let d = tempfile::tempdir().unwrap();
        let j = journal_with(d.path(), &[("u2", 0, false)]);
        let p = Policy { retention: Retention::Delete, max_size: None, oversize: Oversize::Skip };
        assert_eq!(actions(&plan(&listed(), &j, p, 0)), [FETCH_DEL, Action::Delete, FETCH_DEL, FETCH_DEL]);
    }

    #[test]
    fn keep_mode_fetches_only_new_uidls() {
        let d = tempfile::tempdir().unwrap();
        let j = journal_with(d.path(), &[("u1", 0, false), ("u3", 0, false)]);
        let p = Policy { retention: Retention::Keep, max_size: None, oversize: Oversize::Skip };
        assert_eq!(actions(&plan(&listed(), &j, p, 0)), [Action::Keep, FETCH_KEEP, Action::Keep, FETCH_KEEP]);
    }

    #[test]
    fn delete_after_days_counts_from_first_download() {
        let d = tempfile::tempdir().unwrap();
        let day = 86_400;
        let j = journal_with(d.path(), &[("u1", 0, false), ("u2", 5 * day, false)]);
        let p = Policy { retention: Retention::DeleteAfterDays(7), max_size: None, oversize: Oversize::Skip };
        let a = actions(&plan(&listed(), &j, p, 7 * day));
        assert_eq!(a, [Action::Delete, Action::Keep, FETCH_KEEP, FETCH_KEEP]);
        let p0 = Policy { retention: Retention::DeleteAfterDays(0), ..p };
        assert_eq!(actions(&plan(&listed(), &j, p0, 0))[2], FETCH_DEL);
    }

    #[test]
    fn max_size_skips_or_fetches_headers_and_never_deletes_those() {
        let d = tempfile::tempdir().unwrap();
        let j = journal_with(d.path(), &[("u4", 0, true)]);
        let skip = Policy { retention: Retention::Delete, max_size: Some(250), oversize: Oversize::Skip };
        assert_eq!(actions(&plan(&listed(), &j, skip, 0)), [FETCH_DEL, FETCH_DEL, Action::SkipOversize, Action::Keep]);
        let hdr = Policy { oversize: Oversize::Headers, ..skip };
        let a = actions(&plan(&listed(), &j, hdr, 0));
        assert_eq!(a[2], Action::Fetch { headers_only: true, then_delete: false });
        assert_eq!(a[3], Action::Keep, "headers already stored");
        // max_size raised: the header-only message is now fetched whole.
        let big = Policy { max_size: Some(1000), ..hdr };
        assert_eq!(actions(&plan(&listed(), &j, big, 0))[3], FETCH_DEL);
    }

    #[test]
    fn without_uidl_everything_is_new() {
        let d = tempfile::tempdir().unwrap();
        let j = journal_with(d.path(), &[("u1", 0, false)]);
        let l: Vec<Listed> = listed().into_iter().map(|m| Listed { uidl: None, ..m }).collect();
        let p = Policy { retention: Retention::Delete, max_size: None, oversize: Oversize::Skip };
        assert!(actions(&plan(&l, &j, p, 0)).iter().all(|a| *a == FETCH_DEL));
    }
}
