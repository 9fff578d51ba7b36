//! Disk and I/O faults on a real filesystem (needs root: `mount`).
//!
//! - A 2 MiB tmpfs mounted over `DATA/mail`: LMTP answers `452 4.3.1` when
//!   it fills, nothing half-written is listed, stored mail stays intact,
//!   `pobox deliver` exits 75 (EX_TEMPFAIL), and once space is freed (by a
//!   POP3 DELE+QUIT) delivery works again.
//! - An ext2 loop image over `DATA/mail`, a message made immutable with
//!   `chattr +i` during a session: UPDATE cannot unlink it, QUIT answers
//!   `-ERR [SYS/TEMP]`, the lock is released at once, the other deletions
//!   happened, and the stuck message is still listed and intact.
//!   Where loop devices are refused, the same test replaces the message file
//!   by a non-empty directory (unlink fails with EISDIR) instead.
//!
//! Where `mount` is refused (no CAP_SYS_ADMIN in a container), the disk-full
//! test falls back to an LD_PRELOAD ENOSPC injector (and a second test runs
//! that injector everywhere); it never passes without testing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, Dir, PW};

/// A mount, unmounted on drop (lazily if busy).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at))?;
        Ok(Mount(at.to_path_buf()))
    }

    fn ext2_loop(at: &Path, image: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("truncate").args(["-s", "16M"]).arg(image))?;
        run(Command::new("mkfs.ext2").args(["-q", "-F"]).arg(image))?;
        run(Command::new("mount").args(["-o", "loop"]).arg(image).arg(at))?;
        Ok(Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if run(Command::new("umount").arg(&self.0)).is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.0));
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

fn message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!("Message-ID: <{i}@fault.test>\nSubject: fault {i}\n\n").into_bytes();
    let mut line = 0;
    while m.len() < size {
        line += 1;
        m.extend_from_slice(format!("{i}:{line} .{}\n", "x".repeat(60)).as_bytes());
    }
    m
}

/// Every file in new/ and cur/ ends with one of `sent` (after the trace
/// headers); returns the indexes found.
fn stored_ids(dir: &Dir, user: &str, sent: &[Vec<u8>]) -> Vec<usize> {
    let mut ids = Vec::new();
    for sub in ["new", "cur"] {
        for f in dir.files(user, sub) {
            let c = std::fs::read(dir.maildir(user, sub).join(&f)).unwrap();
            let i = sent.iter().position(|m| c.ends_with(m));
            let i = i.unwrap_or_else(|| panic!("{sub}/{f}: not a complete message ({} bytes)", c.len()));
            ids.push(i);
        }
    }
    ids.sort();
    ids
}

fn lmtp_deliver(l: &mut util::Lmtp, user: &str, m: &[u8]) -> String {
    let r = l.cmd("MAIL FROM:<s@fault.test>");
    assert!(r.starts_with("250"), "MAIL: {r}");
    let r = l.cmd(&format!("RCPT TO:<{user}@fault.test>"));
    assert!(r.starts_with("250"), "RCPT: {r}");
    let r = l.cmd("DATA");
    assert!(r.starts_with("354"), "DATA: {r}");
    let mut body = util::stuff(&util::crlf(m));
    body.extend_from_slice(b".\r\n");
    l.send(body);
    l.reply()
}

/// How the disk fills up.
enum Full {
    /// A real 2 MiB tmpfs over `DATA/mail`: filled by deliveries, freed by
    /// DELE+QUIT (partial writes, full directories: the real thing).
    Tmpfs(#[allow(dead_code)] Mount),
    /// An LD_PRELOAD shim (`enospc.c`) in `pobox serve` and `pobox deliver`:
    /// while the flag file exists, every write(2)/writev(2)/pwrite(2) to a
    /// regular file fails with ENOSPC, the errno a full disk gives, so the
    /// same store error path runs. Used where `mount` is refused (a
    /// container without CAP_SYS_ADMIN), and on its own so that the
    /// fallback is itself tested everywhere.
    Injected { shim: PathBuf, flag: PathBuf },
}

/// The C source of the ENOSPC shim. It only wraps libc's write family:
/// the store writes message bytes through std's `File`, which calls libc.
const ENOSPC_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* The disk is "full" while $POBOX_ENOSPC_FLAG exists; only regular files
   are refused (sockets, pipes and the log keep working). */
static int full(int fd) {
    const char *flag = getenv("POBOX_ENOSPC_FLAG");
    struct stat st;
    if (flag == NULL || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    return access(flag, F_OK) == 0;
}

#define WRAP(ret, name, params, args)                          \
    ret name params {                                          \
        static ret (*real) params;                             \
        if (real == NULL) real = (ret (*) params) dlsym(RTLD_NEXT, #name); \
        if (full(fd)) { errno = ENOSPC; return -1; }           \
        return real args;                                      \
    }

WRAP(ssize_t, write, (int fd, const void *b, size_t n), (fd, b, n))
WRAP(ssize_t, writev, (int fd, const struct iovec *v, int n), (fd, v, n))
WRAP(ssize_t, pwrite, (int fd, const void *b, size_t n, off_t o), (fd, b, n, o))
WRAP(ssize_t, pwrite64, (int fd, const void *b, size_t n, off_t o), (fd, b, n, o))
WRAP(ssize_t, pwritev, (int fd, const struct iovec *v, int n, off_t o), (fd, v, n, o))
"#;

impl Full {
    fn injected(dir: &Dir) -> Full {
        let src = dir.scratch("enospc.c");
        let shim = dir.scratch("enospc.so");
        std::fs::write(&src, ENOSPC_SHIM).unwrap();
        // gcc is on every machine that builds Rust (the linker); libc6-dev
        // has the headers. Both are in .ci/run's package list.
        run(Command::new("cc").args(["-shared", "-fPIC", "-O1", "-o"]).arg(&shim).arg(&src).arg("-ldl"))
            .unwrap_or_else(|e| panic!("building the ENOSPC shim needs gcc and libc6-dev: {e}"));
        Full::Injected { shim, flag: dir.scratch("disk-is-full") }
    }

    fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        match self {
            Full::Tmpfs(_) => Vec::new(),
            Full::Injected { shim, flag } => {
                vec![("LD_PRELOAD", shim.clone().into()), ("POBOX_ENOSPC_FLAG", flag.clone().into())]
            }
        }
    }

    /// Called before delivery `i`: the injected disk fills after 3 messages.
    fn before_delivery(&self, i: usize) {
        if let Full::Injected { flag, .. } = self
            && i == 3
        {
            std::fs::write(flag, b"").unwrap();
        }
    }

    /// After DELE+QUIT: the injected disk has room again (tmpfs: the
    /// removals themselves freed it).
    fn freed(&self) {
        if let Full::Injected { flag, .. } = self {
            std::fs::remove_file(flag).unwrap();
        }
    }
}

#[test]
fn disk_full_lmtp_answers_452_4_3_1_and_loses_nothing() {
    let dir = Dir::new();
    let full = match Mount::tmpfs(&dir.data().join("mail"), "2m") {
        Ok(m) => Full::Tmpfs(m),
        Err(e) => {
            eprintln!("fault: cannot mount a tmpfs ({e}); disk-full tested with the ENOSPC injector instead");
            Full::injected(&dir)
        }
    };
    disk_full(&dir, full);
}

#[test]
fn disk_full_injected_enospc_loses_nothing() {
    let dir = Dir::new();
    let full = Full::injected(&dir);
    disk_full(&dir, full);
}

fn disk_full(dir: &Dir, full: Full) {
    dir.add_user("full", PW);
    let how = match &full {
        Full::Tmpfs(_) => "a 2 MiB tmpfs",
        Full::Injected { .. } => "the ENOSPC injector",
    };
    let mut builder = dir.server();
    for (k, v) in full.env() {
        builder = builder.env(k, v);
    }
    let srv = builder.start();
    let mut l = srv.lmtp();
    let mut sent = Vec::new();
    let mut acked = Vec::new();
    let mut full_reply = None;
    for i in 0..100 {
        full.before_delivery(i);
        sent.push(message(i, 150 * 1024));
        let r = lmtp_deliver(&mut l, "full", &sent[i]);
        if r.starts_with("250") {
            acked.push(i);
        } else {
            full_reply = Some(r);
            break;
        }
    }
    let full_reply = full_reply.unwrap_or_else(|| panic!("{how} never filled up"));
    assert!(full_reply.starts_with("452 4.3.1"), "disk full answered {full_reply:?}\n{}", srv.dump());
    assert!(acked.len() >= 3, "only {} messages fitted before the disk was full", acked.len());
    // Nothing half-written is listed; everything acknowledged is intact.
    assert_eq!(stored_ids(dir, "full", &sent), acked, "stored messages differ from acknowledged ones");
    let tmp_left = dir.files("full", "tmp").len();
    // `pobox deliver` on a full disk: EX_TEMPFAIL.
    let mut deliver = dir.pobox();
    for (k, v) in full.env() {
        deliver.env(k, v);
    }
    let out = deliver.args(["deliver", "full"]).stdin(message(999, 150 * 1024)).output();
    assert_eq!(out.status.code(), Some(75), "pobox deliver on a full disk\n{}", out.dump());
    assert_eq!(stored_ids(dir, "full", &sent), acked);
    // POP3 still lists exactly the acknowledged messages, intact.
    let mut c = srv.login("full", PW);
    let (count, _) = c.stat();
    assert_eq!(count as usize, acked.len());
    let first = crate::from_wire(&c.cmd_multi("RETR 1"));
    assert!(sent.iter().any(|m| first.ends_with(m)), "RETR 1 not intact on a full disk");
    // Free space the way a user does: DELE + QUIT.
    for n in 1..=3 {
        assert!(c.cmd(&format!("DELE {n}")).starts_with("+OK"));
    }
    let q = c.cmd("QUIT");
    assert!(q.starts_with("+OK"), "QUIT on a full disk answered {q:?}\n{}", srv.dump());
    full.freed();
    // Delivery works again.
    let again = message(500, 150 * 1024);
    sent.push(again);
    let r = lmtp_deliver(&mut l, "full", sent.last().unwrap());
    assert!(r.starts_with("250"), "after freeing space: {r}\n{}", srv.dump());
    let ids = stored_ids(dir, "full", &sent);
    assert_eq!(ids.len(), acked.len() - 3 + 1);
    eprintln!(
        "fault: disk-full ({how}): {} x 150 KiB acknowledged, then {full_reply:?}; \
         new/+cur/ held exactly the acknowledged messages, intact; {tmp_left} tmp/ leftovers; \
         pobox deliver exited 75; POP3 RETR intact and DELE+QUIT +OK while full; delivery OK after freeing space",
        acked.len()
    );
    drop(l);
    drop(srv);
    drop(full);
}

#[test]
fn failed_unlink_in_update_answers_sys_temp_and_releases_the_lock() {
    let dir = Dir::new();
    dir.add_user("stuck", PW);
    let image = dir.scratch("mail.ext2");
    let mail = dir.data().join("mail");
    let (mount, how) = match Mount::ext2_loop(&mail, &image) {
        Ok(m) => (Some(m), "chattr +i on ext2 (EPERM)"),
        Err(e) => {
            eprintln!("fault: loop mount refused ({e}); using a non-empty directory (EISDIR) instead");
            (None, "file replaced by a non-empty directory (EISDIR)")
        }
    };
    let srv = dir.server().start();
    let sent: Vec<Vec<u8>> = (0..3).map(|i| message(i, 2000)).collect();
    for m in &sent {
        dir.deliver("stuck", m);
    }
    let mut c = srv.login("stuck", PW);
    assert_eq!(c.stat().0, 3);
    // Which file is message 2?
    let body = crate::from_wire(&c.cmd_multi("RETR 2"));
    let victim = sent.iter().position(|m| body.ends_with(m)).unwrap();
    let (sub, file) = ["new", "cur"]
        .iter()
        .flat_map(|sub| dir.files("stuck", sub).into_iter().map(move |f| (*sub, f)))
        .find(|(sub, f)| std::fs::read(dir.maildir("stuck", sub).join(f)).unwrap().ends_with(&sent[victim]))
        .unwrap();
    let path = dir.maildir("stuck", sub).join(&file);
    let saved = std::fs::read(&path).unwrap();
    if mount.is_some() {
        run(Command::new("chattr").arg("+i").arg(&path)).unwrap();
    } else {
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"x").unwrap();
    }
    for n in 1..=3 {
        assert!(c.cmd(&format!("DELE {n}")).starts_with("+OK"));
    }
    let q = c.cmd("QUIT");
    // Undo the fault before asserting, so the mount can be cleaned up.
    if mount.is_some() {
        run(Command::new("chattr").arg("-i").arg(&path)).unwrap();
    } else {
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::write(&path, &saved).unwrap();
    }
    assert!(q.starts_with("-ERR [SYS/TEMP]"), "QUIT with a failing unlink answered {q:?}\n{}", srv.dump());
    // The lock is released: a new session logs in at once.
    let mut c = srv.login_after_close("stuck", PW);
    let uidl = c.uidl();
    c.quit();
    let left = stored_ids(&dir, "stuck", &sent);
    assert_eq!(left, vec![victim], "after the failed UPDATE the maildrop should hold only the stuck message");
    assert_eq!(uidl.len(), 1, "listing after the failed UPDATE: {uidl:?}");
    eprintln!("fault: failed unlink in UPDATE ({how}): QUIT answered {q:?}; lock released; the 2 other deletions done; the stuck message still listed and intact");
    drop(srv);
    drop(mount);
}

/// Issue 17, finding 6: with a restore area, UPDATE on a full disk moves
/// the DELE'd messages aside (renames need no free blocks) but cannot
/// append to the retention log. Nothing is lost, and the reply must say
/// so: removed, and restorable, not "-ERR some deleted messages not
/// removed".
#[test]
fn update_on_a_full_disk_says_the_messages_were_removed_and_are_restorable() {
    use std::io::Write as _;
    let dir = Dir::new();
    dir.add_user("full", PW);
    let mount = match Mount::tmpfs(&dir.data().join("mail"), "512k") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fault: full-disk UPDATE SKIPPED LOUDLY: cannot mount a tmpfs ({e}); run as root");
            return;
        }
    };
    let srv = dir.server().config("retention", "{ expire_interval_secs = 0, restore_days = 7 }").start();
    let sent: Vec<Vec<u8>> = (0..2).map(|i| message(i, 1000)).collect();
    for m in &sent {
        dir.deliver("full", m);
    }
    let mut c = srv.login("full", PW);
    let uidls = c.uidl();
    assert_eq!(uidls.len(), 2);
    // Fill the filesystem while the session is open.
    let filler = dir.data().join("mail/filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![b'x'; 4096];
    let full = (0..10_000).any(|_| matches!(f.write_all(&block), Err(e) if e.raw_os_error() == Some(28)));
    assert!(full, "the tmpfs never filled up");
    drop(f);
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    let q = c.cmd("QUIT");
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(q, "+OK pobox signing off (2 messages deleted, 2 restorable)", "QUIT on a full disk\n{}", srv.dump());
    assert!(dir.message_files("full").is_empty(), "the messages left the maildrop");
    assert_eq!(dir.files("full", ".pobox-deleted/cur").len(), 2, "both are in the restore area");
    // And they come back with their UIDLs.
    dir.pobox().args(["mailbox", "restore", "full"]).assert_exit(0);
    let mut c = srv.login_after_close("full", PW);
    assert_eq!(c.uidl(), uidls, "restored under the same UIDLs");
    c.quit();
    eprintln!("fault: full-disk UPDATE with a restore area: QUIT answered {q:?}; both restored with their UIDLs");
    drop(srv);
    drop(mount);
}
