//! POP3 UPDATE (RFC 1939 §6, QUIT in the TRANSACTION state) for a Maildir.
//!
//! What qmail-pop3d's `pop3_quit()` does, plus durability: unlink every
//! message the client marked, move the other `new/` messages of the
//! snapshot to `cur/` with the maildir(5) info `:2,` (the client has now
//! seen them; MUAs stop reporting them as new), and fsync each touched
//! directory once so the removals survive a crash.
//!
//! Messages delivered during the session are not in the snapshot and are
//! left in `new/`: the client never saw them.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::AtFlags;

use super::deliver::{self, Existing};
use super::{Maildir, MaildirKey, Sub, io_error, name, retention, scan};
use crate::{CommitReport, MessageInfo, StoreError};

/// Applies UPDATE to `md` for the session snapshot `messages`.
///
/// # Errors
///
/// [`StoreError::NoSuchMessage`] (before touching anything) if an index is
/// out of range; [`StoreError::Io`] / [`StoreError::DiskFull`] if a
/// directory fsync fails, since the removals may then not be durable.
/// With `aside`, removed messages are moved into the restore area (and the
/// removals logged with time `now`) instead of being unlinked. The
/// report says what happened: a message in the restore area counts as
/// removed and restorable even if the log could not record it (a full
/// disk: renames need no free blocks, an append does), because that is
/// the truth the client and the admin need (issue 17, finding 6).
pub(super) fn commit(
    md: &Maildir,
    messages: &[MessageInfo],
    deleted: &[usize],
    aside: bool,
    now: std::time::SystemTime,
) -> Result<CommitReport, StoreError> {
    // Validate everything first: a caller bug must not turn into a partial
    // UPDATE. RFC 1939: never remove a message that was not marked.
    let mut marked = vec![false; messages.len()];
    for &index in deleted {
        *marked
            .get_mut(index)
            .ok_or(StoreError::NoSuchMessage { index })? = true;
    }

    let mut report = CommitReport::default();
    let mut touched = Touched::default();
    let mut moved = Vec::new();
    // Opened (created) once, and only if something goes there.
    let area = if aside && marked.iter().any(|&d| d) {
        match md.restore_area(true) {
            Ok(area) => area,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the restore area");
                None
            }
        }
    } else {
        None
    };
    for (info, &delete) in messages.iter().zip(&marked) {
        let (sub, file) = info.key.as_maildir();
        if delete && aside {
            let Some(area) = &area else {
                report.failed += 1;
                continue;
            };
            match md.move_aside(area, sub, file) {
                Ok(true) => {
                    report.removed += 1;
                    report.restorable += 1;
                    touched.mark(sub);
                    touched.aside = true;
                    moved.push(retention::Record::Deleted(
                        info.uidl.as_str().to_owned(),
                        now,
                    ));
                }
                Ok(false) => report.removed += 1,
                Err(e) => {
                    tracing::warn!(key = %info.key, error = %e, "could not move deleted message aside");
                    report.failed += 1;
                }
            }
        } else if delete {
            match remove(md, sub, file) {
                Ok(Some(dir)) => {
                    report.removed += 1;
                    touched.mark(dir);
                }
                // Gone already (another session of a MUA, an admin):
                // the client's wish is fulfilled.
                Ok(None) => report.removed += 1,
                Err(e) => {
                    tracing::warn!(key = %info.key, error = %e, "could not remove deleted message");
                    report.failed += 1;
                }
            }
        } else if sub == Sub::New && mark_seen(md, file) {
            touched.mark(Sub::New);
            touched.mark(Sub::Cur);
        }
    }

    if touched.new {
        md.sync(Sub::New)?;
    }
    if touched.cur {
        md.sync(Sub::Cur)?;
    }
    if report.failed > 0 {
        md.forget_usage();
    } else if report.removed > 0 {
        let bytes: u64 = messages.iter().zip(&marked).filter(|(_, d)| **d).map(|(m, _)| m.size).sum();
        md.record_usage(-(bytes as i64), -(report.removed as i64));
    }
    if let Some(area) = &area
        && touched.aside
    {
        area.sync(Sub::Cur)?;
        // The messages are in the restore area, durably: a log that cannot
        // grow changes nothing about that. Expiry gives a file without a D
        // record a fresh window at its next run, so it stays restorable.
        if let Err(e) = md.append_log(&moved) {
            tracing::warn!(error = %e, "removed messages are in the restore area, but the retention log could not record it");
            report.unlogged = true;
        }
    }
    Ok(report)
}

/// Unlinks one message. `Ok(Some(dir))`: removed from `dir`; `Ok(None)`:
/// it was already gone.
///
/// `unlinkat` relative to the directory's handle removes the name itself
/// (a link planted there included), never what a link points to, and
/// never in a directory that replaced `new/` or `cur/` since they were
/// opened.
fn remove(md: &Maildir, sub: Sub, file: &OsStr) -> io::Result<Option<Sub>> {
    match rustix::fs::unlinkat(md.fd(sub), file, AtFlags::empty()) {
        Ok(()) => return Ok(Some(sub)),
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    // Another program may have moved it new/ -> cur/ or changed its flags;
    // the base name identifies it (maildir(5)).
    let Some(current) = scan::find_by_base(md.fd(Sub::Cur), name::base_of(file))? else {
        return Ok(None);
    };
    match rustix::fs::unlinkat(md.fd(Sub::Cur), &current, AtFlags::empty()) {
        Ok(()) => Ok(Some(Sub::Cur)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Moves `new/<file>` to `cur/<file>:2,`. True if it moved. Failure is
/// logged, not reported: the message simply stays new and is served again.
fn mark_seen(md: &Maildir, file: &OsStr) -> bool {
    let from = md.dir(Sub::New).join(file);
    // A name in new/ should carry no info part; if a foreign one does,
    // keep it rather than produce `x:2,S:2,`.
    let mut seen = OsString::from(file);
    if !file.as_bytes().contains(&b':') {
        seen.push(":2,");
    }
    match deliver::place(md.fd(Sub::New), file, md.fd(Sub::Cur), &seen, Existing::Replace) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            let err = io_error(format_args!("moving {} to cur/", from.display()), e);
            tracing::warn!(error = %err, "could not mark message seen");
            false
        }
    }
}

/// Which directories need an fsync.
#[derive(Debug, Default)]
struct Touched {
    new: bool,
    cur: bool,
    aside: bool,
}

impl Touched {
    fn mark(&mut self, sub: Sub) {
        match sub {
            Sub::New => self.new = true,
            Sub::Cur => self.cur = true,
            Sub::Tmp => {}
        }
    }
}
