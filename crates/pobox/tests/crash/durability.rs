//! Durability ordering, read from the system calls of the real binary.
//!
//! The SIGKILL test (`main.rs`) keeps the page cache, so it cannot see a
//! missing fsync: only a power cut could. Instead, these tests record what
//! `pobox serve` and `pobox deliver` ask of the kernel (strace: `-f` for
//! every thread, `-yy` so each file descriptor is printed with its path or
//! socket addresses) and check the order the durability claims rely on:
//!
//! - delivery (LMTP, `pobox deliver`): for every message, its last write →
//!   fsync of the file → rename (or link) into `new/` → fsync of `new/` →
//!   only then the `250` reply on the socket, or the process exit;
//! - POP3 UPDATE: every unlink or rename of a message out of `new/`/`cur/`
//!   → fsync of that directory (and of the destination, for a move) → only
//!   then the `+OK` to QUIT.
//!
//! The checker follows descriptors, not only path arguments: `fsync(7</…/tmp/x>)`,
//! `renameat2(5</…/tmp>, "x", 6</…/new>, "y", RENAME_NOREPLACE)` and
//! `rename("/…/tmp/x", "/…/new/y")` are all understood, so it works whether
//! the store uses path-based or directory-fd-relative calls.
//! Needs strace (Debian `strace`) and ptrace (root, or a permissive
//! `kernel.yama.ptrace_scope`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Dir, PW, TestCommand};

/// The system calls recorded: everything that writes, syncs, or moves a
/// name, in both the path and the `*at` forms.
const TRACE: &str = "trace=fsync,fdatasync,sync_file_range,syncfs,rename,renameat,renameat2,link,linkat,\
                     unlink,unlinkat,write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg";

fn strace_args(out: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> =
        ["-f", "-tt", "-yy", "-s", "1024", "-q", "-e", TRACE, "-o"].iter().map(Into::into).collect();
    v.push(out.into());
    v
}

/// What attaching to a running server needs.
const PTRACE: &str = "ptrace of a child process (root with CAP_SYS_PTRACE, or kernel.yama.ptrace_scope <= 1)";

fn have_strace() -> bool {
    Command::new("strace").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------
// The trace
// ---------------------------------------------------------------------------

/// One system call, its entry and completion positions in the trace (line
/// numbers; strace writes lines in the order it sees events, so "returned
/// before another call was entered" is `a.end < b.start`).
#[derive(Debug, Clone)]
struct Call {
    start: usize,
    end: usize,
    pid: u32,
    name: String,
    args: Vec<String>,
    ret: String,
}

impl Call {
    fn ok(&self) -> bool {
        self.ret.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()).is_some_and(|n| n >= 0)
    }
}

/// What a call did, with every descriptor resolved to its path.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// fsync/fdatasync of this file or directory.
    Sync(PathBuf),
    /// Bytes written to a regular file.
    FileWrite(PathBuf),
    /// Bytes written to a socket (`TCP:[local->remote]`), text as sent.
    SocketWrite { socket: String, data: String },
    /// A name appeared at `to` (rename or link); `from` is the old name,
    /// or the file's own path for `linkat(fd, "", …, AT_EMPTY_PATH)`.
    Move { from: PathBuf, to: PathBuf },
    /// A name removed.
    Remove(PathBuf),
    /// The traced program exited with this status.
    Exit(i32),
}

fn parse_trace(text: &str) -> Vec<(Call, Op)> {
    let mut pending: HashMap<u32, (usize, String)> = HashMap::new();
    let mut calls = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // "PID TIME CALL": strace pads the pid column, so split on runs of
        // spaces (a 4-digit pid is followed by two).
        let Some((pid, rest)) = line.trim_start().split_once(' ') else { continue };
        let Some((_time, rest)) = rest.trim_start().split_once(' ') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if let Some(status) = rest.strip_prefix("+++ exited with ").and_then(|r| r.strip_suffix(" +++")) {
            let call = Call { start: i, end: i, pid, name: "exit".into(), args: vec![], ret: status.into() };
            calls.push((call, Op::Exit(status.parse().unwrap_or(-1))));
            continue;
        }
        if rest.starts_with("---") || rest.starts_with("+++") {
            continue;
        }
        let (start, full) = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, (i, head.to_string()));
            continue;
        } else if let Some(tail) = rest.strip_prefix("<... ") {
            let Some((_, after)) = tail.split_once(" resumed>") else { continue };
            let Some((start, head)) = pending.remove(&pid) else { continue };
            (start, format!("{head}{}", after.trim_start_matches(' ')))
        } else {
            (i, rest.to_string())
        };
        if let Some(call) = split_call(start, i, pid, &full)
            && let Some(op) = classify(&call)
        {
            calls.push((call, op));
        }
    }
    calls
}

/// `name(a, b, c) = ret` → its parts; commas inside quotes, brackets and
/// `<…>` descriptor annotations do not split arguments.
fn split_call(start: usize, end: usize, pid: u32, text: &str) -> Option<Call> {
    let open = text.find('(')?;
    let name = text[..open].to_string();
    let mut args = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut angle, mut quoted, mut escaped) = (0i32, 0i32, false, false);
    let mut close = None;
    for (k, ch) in text[open + 1..].char_indices() {
        if quoted {
            cur.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                quoted = false;
            }
            continue;
        }
        match ch {
            '"' => quoted = true,
            '(' | '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            '<' => angle += 1,
            '>' if angle > 0 => angle -= 1,
            ')' if depth == 0 && angle == 0 => {
                close = Some(open + 1 + k);
                break;
            }
            ')' => depth -= 1,
            ',' if depth == 0 && angle == 0 => {
                args.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    let close = close?;
    if !cur.trim().is_empty() {
        args.push(cur.trim().to_string());
    }
    let ret = text[close + 1..].trim_start().strip_prefix('=')?.trim().to_string();
    Some(Call { start, end, pid, name, args, ret })
}

/// The path strace printed for a descriptor argument: `7</a/b>` or
/// `AT_FDCWD</cwd>`.
fn fd_path(arg: &str) -> Option<String> {
    let (_, rest) = arg.split_once('<')?;
    Some(rest.strip_suffix('>')?.to_string())
}

/// A quoted string argument, with strace's escapes undone (enough for
/// paths and protocol replies).
fn unquote(arg: &str) -> Option<String> {
    let inner = arg.strip_prefix('"')?;
    let inner = inner.rsplit_once('"')?.0;
    let mut out = String::new();
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    Some(out)
}

/// `name` relative to the directory descriptor `dirfd` (or absolute).
fn at(dirfd: Option<&String>, name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Some(PathBuf::from(name));
    }
    Some(Path::new(&fd_path(dirfd?)?).join(name))
}

fn classify(call: &Call) -> Option<Op> {
    if !call.ok() {
        return None;
    }
    let a = &call.args;
    let s = |i: usize| a.get(i).and_then(|x| unquote(x));
    match call.name.as_str() {
        "fsync" | "fdatasync" => Some(Op::Sync(fd_path(a.first()?)?.into())),
        "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" | "sendto" | "sendmsg" => {
            let target = fd_path(a.first()?)?;
            if target.starts_with("TCP:") || target.starts_with("UNIX") {
                // The first quoted string is the data (writev/sendmsg: the
                // first iovec), enough to recognise a reply.
                let data = a[1..].join(",");
                let data = data.find('"').and_then(|q| unquote(&data[q..])).unwrap_or_default();
                Some(Op::SocketWrite { socket: target, data })
            } else if target.starts_with('/') {
                Some(Op::FileWrite(target.into()))
            } else {
                None
            }
        }
        "rename" | "link" => Some(Op::Move { from: s(0)?.into(), to: s(1)?.into() }),
        "renameat" | "renameat2" => Some(Op::Move { from: at(a.first(), &s(1)?)?, to: at(a.get(2), &s(3)?)? }),
        "linkat" => {
            let name = s(1)?;
            let from = if name.is_empty() { fd_path(a.first()?)?.into() } else { at(a.first(), &name)? };
            Some(Op::Move { from, to: at(a.get(2), &s(3)?)? })
        }
        "unlink" => Some(Op::Remove(s(0)?.into())),
        "unlinkat" => Some(Op::Remove(at(a.first(), &s(1)?)?)),
        _ => None,
    }
}

/// The Maildir subdirectory a path is directly in (`new`, `cur`, `tmp`).
fn maildir_sub(p: &Path) -> Option<&str> {
    p.parent()?.file_name()?.to_str().filter(|s| matches!(*s, "new" | "cur" | "tmp"))
}

/// Checks one acknowledgement (`ack`, a reply written or the exit) against
/// the operations since `since` (a trace position): every message moved
/// into `new/`/`cur/` must have been fsynced after its last write and before
/// the move, and its directory fsynced after the move and before `ack`;
/// every message removed from (or moved out of) `new/`/`cur/` needs its
/// directory fsynced before `ack` too. Returns the moved-in names, and
/// the number of removals checked.
fn check_window(
    ops: &[(Call, Op)],
    since: usize,
    ack: &Call,
    what: &str,
    failures: &mut Vec<String>,
) -> (Vec<PathBuf>, usize) {
    let synced_between = |path: &Path, after: usize, before: usize| {
        ops.iter().any(|(c, op)| matches!(op, Op::Sync(p) if p == path) && c.start > after && c.end < before)
    };
    let mut stored = Vec::new();
    let mut removed = 0;
    for (c, op) in ops.iter().filter(|(c, _)| c.start >= since && c.end < ack.start) {
        match op {
            Op::Move { from, to } if matches!(maildir_sub(to), Some("new" | "cur")) => {
                let last_write = ops
                    .iter()
                    .filter(|(w, op)| matches!(op, Op::FileWrite(p) if p == from) && w.end < c.start)
                    .map(|(w, _)| w.end)
                    .max()
                    .unwrap_or(0);
                let from_tmp = maildir_sub(from) == Some("tmp");
                if from_tmp && !synced_between(from, last_write, c.start) {
                    failures.push(format!(
                        "{what}: {} moved into {} without an fsync of the file after its last write",
                        from.display(),
                        to.display()
                    ));
                }
                let dir = to.parent().unwrap();
                if !synced_between(dir, c.end, ack.start) {
                    failures.push(format!(
                        "{what}: no fsync of {} between the move of {} into it and the acknowledgement",
                        dir.display(),
                        to.file_name().unwrap().to_string_lossy()
                    ));
                }
                if !from_tmp {
                    removed += 1;
                    let src = from.parent().unwrap();
                    if !synced_between(src, c.end, ack.start) {
                        failures.push(format!(
                            "{what}: no fsync of {} after moving {} out of it",
                            src.display(),
                            from.display()
                        ));
                    }
                } else {
                    stored.push(to.clone());
                }
            }
            Op::Move { from, to } if matches!(maildir_sub(from), Some("new" | "cur")) => {
                removed += 1;
                for dir in [from.parent().unwrap(), to.parent().unwrap()] {
                    if !synced_between(dir, c.end, ack.start) {
                        failures.push(format!(
                            "{what}: no fsync of {} after moving {} to {}",
                            dir.display(),
                            from.display(),
                            to.display()
                        ));
                    }
                }
            }
            Op::Remove(p) if matches!(maildir_sub(p), Some("new" | "cur")) => {
                removed += 1;
                let dir = p.parent().unwrap();
                if !synced_between(dir, c.end, ack.start) {
                    failures.push(format!("{what}: no fsync of {} after unlinking {}", dir.display(), p.display()));
                }
            }
            _ => {}
        }
    }
    (stored, removed)
}

// ---------------------------------------------------------------------------
// Tracing a running server
// ---------------------------------------------------------------------------

/// strace attached to every thread of a running process; stops when the
/// process exits.
struct Tracer {
    child: Child,
    out: PathBuf,
}

impl Tracer {
    /// None when strace could not attach (ptrace not permitted here).
    fn attach(pid: rustix::process::Pid, out: PathBuf) -> Option<Tracer> {
        let raw = pid.as_raw_nonzero().get();
        let child = Command::new("strace")
            .args(strace_args(&out))
            .arg("-p")
            .arg(raw.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strace");
        // Wait until every thread of the server is traced, else the first
        // deliveries could run untraced.
        let mut child = child;
        let traced = util::eventually(Duration::from_secs(20), || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{raw}/task")) else { return false };
            tasks.filter_map(Result::ok).all(|t| {
                std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
                    s.lines().any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
                })
            })
        });
        if !traced {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            eprintln!("strace did not attach to pid {raw}: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(Tracer { child, out })
    }

    /// Waits for strace to exit (the traced server has been stopped) and
    /// returns the trace.
    fn finish(mut self) -> String {
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("strace did not exit after the server stopped");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&self.out).unwrap()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!("Message-ID: <{i}@durable.test>\nSubject: durable {i}\n\n").into_bytes();
    let mut line = 0;
    while m.len() < size {
        line += 1;
        m.extend_from_slice(format!("{i}:{line} {}\n", "y".repeat(70)).as_bytes());
    }
    m
}

/// The trace of a test, kept in the scratch dir; quoted on failure.
fn excerpt(trace: &str) -> String {
    let lines: Vec<&str> = trace.lines().filter(|l| !l.contains("write(2") && !l.contains("/dev/")).collect();
    let tail = lines.len().saturating_sub(80);
    format!("--- trace (last {} of {} lines) ---\n{}", lines.len() - tail, lines.len(), lines[tail..].join("\n"))
}

#[test]
fn lmtp_250_comes_after_file_fsync_rename_and_new_dir_fsync() {
    if !have_strace() {
        return util::cannot_run("lmtp_250_comes_after_file_fsync_rename_and_new_dir_fsync", "strace (Debian `strace`)");
    }
    let dir = Dir::new();
    dir.add_user("dur0", PW);
    dir.add_user("dur1", PW);
    let srv = dir.server().start();
    let lmtp_port = srv.lmtp;
    let Some(tracer) = Tracer::attach(srv.pid(), dir.scratch("serve.trace")) else {
        return util::cannot_run("lmtp_250_comes_after_file_fsync_rename_and_new_dir_fsync", PTRACE);
    };

    let mut l = srv.lmtp();
    let mut replies = Vec::new();
    for i in 0..4 {
        // Two recipients in one transaction for some: each copy gets its
        // own 250, and each must be durable before it.
        let rcpts: &[&str] = if i % 2 == 0 { &["dur0"] } else { &["dur0", "dur1"] };
        assert!(l.cmd("MAIL FROM:<s@durable.test>").starts_with("250"));
        for r in rcpts {
            assert!(l.cmd(&format!("RCPT TO:<{r}@durable.test>")).starts_with("250"));
        }
        assert!(l.cmd("DATA").starts_with("354"));
        let mut body = util::stuff(&util::crlf(&message(i, 1000 + i * 40_000)));
        body.extend_from_slice(b".\r\n");
        l.send(body);
        for _ in rcpts {
            let r = l.reply();
            assert!(r.starts_with("250"), "delivery {i}: {r}\n{}", srv.dump());
            replies.push(r.trim_end().to_string());
        }
    }
    drop(l);
    srv.stop();
    let trace = tracer.finish();
    let ops = parse_trace(&trace);

    // The server's writes carrying 250s to DATA, in order, on the LMTP
    // connection; a transaction's replies (one per recipient) may share a
    // write, and every copy must be durable before it.
    let acks: Vec<(&Call, Vec<String>)> = ops
        .iter()
        .filter_map(|(c, op)| match op {
            Op::SocketWrite { socket, data } if socket.contains(&format!(":{lmtp_port}->")) => {
                let lines: Vec<String> =
                    data.lines().filter(|l| l.starts_with("250 2.0.0 <")).map(|l| l.trim_end().to_string()).collect();
                (!lines.is_empty()).then_some((c, lines))
            }
            _ => None,
        })
        .collect();
    let traced: Vec<&String> = acks.iter().flat_map(|(_, lines)| lines).collect();
    assert_eq!(traced, replies.iter().collect::<Vec<_>>(), "every 250 to DATA is in the trace\n{}", excerpt(&trace));
    let mut failures = Vec::new();
    let mut since = 0;
    let mut stored_total = 0;
    for (ack, lines) in &acks {
        let (stored, _) = check_window(&ops, since, ack, &lines.join(" / "), &mut failures);
        for reply in lines {
            // The reply names the stored message ("delivered as <uidl>"):
            // that very file must be among those made durable before it.
            if let Some(id) = reply.split("delivered as ").nth(1).map(str::trim)
                && !stored.iter().any(|p| p.file_name().unwrap().to_string_lossy().starts_with(id))
            {
                failures.push(format!("{reply}: {id} was not moved into new/ before this reply (moved: {stored:?})"));
            }
        }
        if stored.len() != lines.len() {
            failures.push(format!("{lines:?}: {} messages moved into new/ before these replies", stored.len()));
        }
        stored_total += stored.len();
        since = ack.end + 1;
    }
    assert!(failures.is_empty(), "durability order broken:\n{}\n{}", failures.join("\n"), excerpt(&trace));
    assert_eq!(stored_total, replies.len(), "one stored copy per 250");
    assert_eq!(dir.files("dur0", "new").len() + dir.files("dur1", "new").len(), replies.len());
}

#[test]
fn pobox_deliver_exits_only_after_file_fsync_rename_and_new_dir_fsync() {
    if !have_strace() {
        return util::cannot_run(
            "pobox_deliver_exits_only_after_file_fsync_rename_and_new_dir_fsync",
            "strace (Debian `strace`)",
        );
    }
    let dir = Dir::new();
    dir.add_user("dur", PW);
    let out = dir.scratch("deliver.trace");
    let mut cmd = TestCommand::new("strace");
    cmd.args(strace_args(&out)).arg(util::BIN).arg("--data").arg(dir.data()).args(["deliver", "dur"]);
    cmd.stdin(message(7, 70_000)).assert_exit(0);
    let trace = std::fs::read_to_string(&out).unwrap();
    let ops = parse_trace(&trace);
    // The first process in the trace is pobox deliver itself.
    let main_pid = ops.first().map(|(c, _)| c.pid).expect("empty trace");
    let exit = ops
        .iter()
        .find(|(c, op)| c.pid == main_pid && matches!(op, Op::Exit(0)))
        .map(|(c, _)| c)
        .unwrap_or_else(|| panic!("no exit 0 in the trace\n{}", excerpt(&trace)));
    let mut failures = Vec::new();
    let (stored, _) = check_window(&ops, 0, exit, "pobox deliver", &mut failures);
    assert!(failures.is_empty(), "durability order broken:\n{}\n{}", failures.join("\n"), excerpt(&trace));
    assert_eq!(stored.len(), 1, "one message moved into new/: {stored:?}\n{}", excerpt(&trace));
    assert_eq!(dir.files("dur", "new").len(), 1);
}

#[test]
fn pop3_quit_ok_comes_after_the_removals_and_their_directory_fsync() {
    if !have_strace() {
        return util::cannot_run(
            "pop3_quit_ok_comes_after_the_removals_and_their_directory_fsync",
            "strace (Debian `strace`)",
        );
    }
    let dir = Dir::new();
    dir.add_user("upd", PW);
    for i in 0..4 {
        dir.deliver("upd", &message(i, 2000));
    }
    let srv = dir.server().start();
    // A first session RETRs two messages and QUITs without deleting: the
    // server moves them new/ → cur/ (seen). They are deleted below, so
    // removals from both directories are covered.
    let mut c = srv.login("upd", PW);
    c.cmd_multi("RETR 1");
    c.cmd_multi("RETR 2");
    c.quit();
    let pop3_port = srv.pop3;
    let Some(tracer) = Tracer::attach(srv.pid(), dir.scratch("update.trace")) else {
        return util::cannot_run("pop3_quit_ok_comes_after_the_removals_and_their_directory_fsync", PTRACE);
    };
    let mut c = srv.login_after_close("upd", PW);
    for n in 1..=3 {
        assert!(c.cmd(&format!("DELE {n}")).starts_with("+OK"));
    }
    let q = c.cmd("QUIT");
    assert!(q.starts_with("+OK"), "{q}\n{}", srv.dump());
    srv.stop();
    let trace = tracer.finish();
    let ops = parse_trace(&trace);
    let writes: Vec<&Call> = ops
        .iter()
        .filter(|(_, op)| matches!(op, Op::SocketWrite { socket, .. } if socket.contains(&format!(":{pop3_port}->"))))
        .map(|(c, _)| c)
        .collect();
    // The QUIT reply is the last thing written on the session's socket;
    // UPDATE runs between it and the reply before (to the last DELE).
    let (quit_ok, before) = match writes.as_slice() {
        [.., before, last] => (*last, before.end + 1),
        _ => panic!("POP3 replies missing from the trace\n{}", excerpt(&trace)),
    };
    let mut failures = Vec::new();
    let (_, removed) = check_window(&ops, before, quit_ok, "UPDATE", &mut failures);
    assert!(failures.is_empty(), "durability order broken:\n{}\n{}", failures.join("\n"), excerpt(&trace));
    assert_eq!(removed, 3, "three messages removed in UPDATE, before +OK\n{}", excerpt(&trace));
    assert_eq!(dir.message_files("upd").len(), 1);
}

#[test]
fn the_trace_checker_reads_path_and_fd_relative_calls() {
    // Both spellings of one delivery; then the same with the directory
    // fsync missing, which must be reported.
    let good_at = r#"10 10:00:00.000001 write(7</d/m/u/tmp/1.M1>, "Subject: x\n", 11) = 11
10 10:00:00.000002 fsync(7</d/m/u/tmp/1.M1> <unfinished ...>
11 10:00:00.000003 write(2<pipe:[9]>, "log", 3) = 3
10 10:00:00.000004 <... fsync resumed>) = 0
10 10:00:00.000005 renameat2(5</d/m/u/tmp>, "1.M1", 6</d/m/u/new>, "1.M1,S=11", RENAME_NOREPLACE) = 0
10 10:00:00.000006 fsync(6</d/m/u/new>) = 0
12 10:00:00.000007 sendto(9<TCP:[127.0.0.1:24->127.0.0.1:5000]>, "250 2.0.0 <u@x> delivered as 1.M1\r\n", 35, MSG_NOSIGNAL, NULL, 0) = 35
"#;
    let good_path = r#"10    10:00:00.000001 write(7</d/m/u/tmp/1.M1>, "Subject: x\n", 11) = 11
10 10:00:00.000002 fsync(7</d/m/u/tmp/1.M1>) = 0
10 10:00:00.000005 rename("/d/m/u/tmp/1.M1", "/d/m/u/new/1.M1,S=11") = 0
10 10:00:00.000006 fsync(8</d/m/u/new>) = 0
12 10:00:00.000007 write(9<TCP:[127.0.0.1:24->127.0.0.1:5000]>, "250 2.0.0 <u@x> delivered as 1.M1\r\n", 35) = 35
"#;
    for (name, trace) in [("fd-relative", good_at), ("path", good_path)] {
        let ops = parse_trace(trace);
        let ack = ops.iter().find(|(_, op)| matches!(op, Op::SocketWrite { .. })).unwrap().0.clone();
        let mut failures = Vec::new();
        let (stored, _) = check_window(&ops, 0, &ack, name, &mut failures);
        assert!(failures.is_empty(), "{name}: {failures:?}");
        assert_eq!(stored, vec![PathBuf::from("/d/m/u/new/1.M1,S=11")], "{name}");
        // Remove each fsync in turn: the checker must object.
        for drop_line in trace.lines().filter(|l| l.contains("fsync")) {
            let broken: String = trace.lines().filter(|l| *l != drop_line).map(|l| format!("{l}\n")).collect();
            let ops = parse_trace(&broken);
            let ack = ops.iter().find(|(_, op)| matches!(op, Op::SocketWrite { .. })).unwrap().0.clone();
            let mut failures = Vec::new();
            check_window(&ops, 0, &ack, name, &mut failures);
            assert!(!failures.is_empty(), "{name}: dropping {drop_line:?} went unnoticed");
        }
    }
    // An fsync of the file *before* its last write does not count.
    let early = "10 1 fsync(7</d/m/u/tmp/1>) = 0\n10 2 write(7</d/m/u/tmp/1>, \"x\", 1) = 1\n\
                 10 3 rename(\"/d/m/u/tmp/1\", \"/d/m/u/new/1\") = 0\n10 4 fsync(8</d/m/u/new>) = 0\n\
                 10 5 +++ exited with 0 +++\n";
    let ops = parse_trace(early);
    let exit = ops.iter().find(|(_, op)| matches!(op, Op::Exit(0))).unwrap().0.clone();
    let mut failures = Vec::new();
    check_window(&ops, 0, &exit, "early", &mut failures);
    assert_eq!(failures.len(), 1, "{failures:?}");
}

/// `pobox fetch` (the real entry point, `pobox --config FILE fetch`)
/// against `pobox serve`: before each `DELE` it sends, the messages it
/// covers are durable in the destination (file fsync → move into `new/` →
/// fsync of `new/`), and then journalled (a journal record written after
/// that and the journal fsynced), as README's "never loses" promise says.
/// Counted, not matched by name: before the k-th DELE, k messages must have
/// gone through the whole chain.
#[test]
fn pobox_fetch_sends_dele_only_after_the_message_is_stored_and_journalled() {
    if !have_strace() {
        return util::cannot_run(
            "pobox_fetch_sends_dele_only_after_the_message_is_stored_and_journalled",
            "strace (Debian `strace`)",
        );
    }
    let dir = Dir::new();
    dir.add_user("remote", PW);
    const N: usize = 6;
    for i in 0..N {
        dir.deliver("remote", &message(100 + i, 500 + i * 9000));
    }
    let srv = dir.server().start();
    let dest = dir.scratch("fetched");
    let state = dir.scratch("fetch-state");
    let config = dir.scratch("fetch.toml");
    // Plain POP3 on loopback, so the trace shows the commands.
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[accounts.remote]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"remote\"\n\
             password = \"{PW}\"\nmaildir = \"{}\"\nsecurity = \"none\"\nallow_insecure = true\ntimeout_secs = 20\n",
            state.display(),
            srv.pop3,
            dest.display()
        ),
    )
    .unwrap();
    // It holds a password: the fetcher refuses it unless only we can read it.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = dir.scratch("fetch.trace");
    let mut args = strace_args(&out);
    // Journal batches can exceed the default string size: keep them whole.
    let s = args.iter().position(|a| a == "-s").unwrap();
    args[s + 1] = "65536".into();
    let mut cmd = TestCommand::new("strace");
    cmd.args(args).arg(util::BIN).arg("--config").arg(&config).arg("fetch");
    let o = cmd.output();
    assert_eq!(o.status.code(), Some(0), "pobox fetch: new mail expected\n{}\n{}", o.dump(), srv.dump());
    let trace = std::fs::read_to_string(&out).unwrap();
    let ops = parse_trace(&trace);
    let port = format!("->127.0.0.1:{}]", srv.pop3);

    let in_dest = |p: &Path| p.starts_with(&dest);
    let mut failures = Vec::new();
    let mut deles = 0;
    let mut saw_dele = false;
    for (w, op) in &ops {
        let Op::SocketWrite { socket, data } = op else { continue };
        if !socket.contains(&port) {
            continue;
        }
        let n = data.lines().filter(|l| l.starts_with("DELE ")).count();
        if n == 0 {
            continue;
        }
        saw_dele = true;
        deles += n;
        // Messages made durable in the destination before this write.
        let mut durable: Vec<usize> = Vec::new(); // the end of each one's directory fsync
        for (m, op) in ops.iter().filter(|(m, _)| m.end < w.start) {
            let Op::Move { from, to } = op else { continue };
            if !in_dest(to) || maildir_sub(to) != Some("new") {
                continue;
            }
            let last_write = ops
                .iter()
                .filter(|(c, op)| matches!(op, Op::FileWrite(p) if p == from) && c.end < m.start)
                .map(|(c, _)| c.end)
                .max()
                .unwrap_or(0);
            let file_synced =
                ops.iter().any(|(c, op)| matches!(op, Op::Sync(p) if p == from) && c.start > last_write && c.end < m.start);
            let dir_sync = ops
                .iter()
                .filter(|(c, op)| matches!(op, Op::Sync(p) if p == to.parent().unwrap()) && c.start > m.end && c.end < w.start)
                .map(|(c, _)| c.end)
                .min();
            match (file_synced, dir_sync) {
                (true, Some(end)) => durable.push(end),
                _ => failures.push(format!(
                    "before DELE #{deles}: {} moved into new/ without {}",
                    to.display(),
                    if file_synced { "an fsync of new/ before the DELE" } else { "an fsync of the file first" }
                )),
            }
        }
        durable.sort_unstable();
        if durable.len() < deles {
            failures.push(format!("{deles} DELEs sent, only {} messages durable in the destination", durable.len()));
            continue;
        }
        // The journal: its records (one "S …" line per message) are written
        // after the messages they cover are durable, and fsynced before DELE.
        let journal: Vec<(&Call, &PathBuf)> = ops
            .iter()
            .filter(|(c, _)| c.end < w.start)
            .filter_map(|(c, op)| match op {
                Op::FileWrite(p) if p.to_string_lossy().ends_with(".journal") => Some((c, p)),
                _ => None,
            })
            .collect();
        let mut records = 0;
        let mut last_record_write = None;
        for (c, path) in &journal {
            let text = trace.lines().nth(c.start).unwrap_or_default();
            let n = text.matches("\\nS ").count() + usize::from(text.contains("\"S "));
            if n == 0 {
                continue;
            }
            // Every message this write records must already be durable.
            if durable.get(records + n - 1).is_none_or(|&end| end >= c.start) {
                failures.push(format!("journal records {}..{} written before their messages were durable", records + 1, records + n));
            }
            records += n;
            last_record_write = Some((c.end, (*path).clone()));
        }
        match last_record_write {
            Some((end, path)) if records >= deles => {
                if !ops.iter().any(|(c, op)| matches!(op, Op::Sync(p) if *p == path) && c.start > end && c.end < w.start) {
                    failures.push(format!("DELE #{deles}: the journal {} was not fsynced after its last record", path.display()));
                }
            }
            _ => failures.push(format!("DELE #{deles}: only {records} journal records written before it")),
        }
    }
    assert!(saw_dele, "no DELE in the trace\n{}", excerpt(&trace));
    assert!(failures.is_empty(), "fetcher durability order broken:\n{}\n{}", failures.join("\n"), excerpt(&trace));
    assert_eq!(deles, N, "one DELE per message");
    assert_eq!(std::fs::read_dir(dest.join("new")).unwrap().count(), N);
    drop(srv);
}
