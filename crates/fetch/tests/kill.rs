//! The kill test, through `pobox --config FILE fetch` against Dovecot:
//! fetch a maildrop while breaking the runs at many points, then one clean
//! run, which must exit 0 or 1 (never 3: nothing may be left stuck), and
//! every message must be stored exactly once, byte for byte (the MDA: at
//! least once, whole, and at most one extra copy per kill, its admitted
//! window), with the server empty in delete mode.
//!
//! The breaks: the connection cut at byte offsets (mostly inside RETR
//! replies), before the +OK of a DELE, before the reply to QUIT (after the
//! server committed); the process SIGKILLed at timed intervals; and the
//! process SIGKILLing itself at named crash points (`POBOX_FETCH_FAULT`,
//! honoured by debug builds only): between writing the mbox dot-lock's
//! temporary file and linking it, between the link and the `flock`, with
//! both held, after an append, after a message is stored, after a batch is
//! durable, after it is journalled. Leftover temporary files are aged past
//! the one-minute threshold before the final run, which must remove them.
//!
//! Plaintext through the proxy (so it can see commands). Bounded: a few
//! dozen runs per mode, each bounded by `Setup::run` (120 s).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Maildir,
    Mbox,
    Mda,
}

struct Case {
    dest: Dest,
    keep: bool,
    count: usize,
    faults: &'static [(&'static str, u32)],
    byte_cuts: &'static [u64],
    dele_cuts: &'static [u32],
    kill_delays_ms: &'static [u64],
    min_points: usize,
}

const DELAYS: &[u64] = &[2, 4, 6, 8, 10, 12, 14, 16, 18, 21, 24, 27, 30, 35, 40, 50, 60, 75, 90, 120, 160, 220, 300, 400];

fn set_port(s: &Setup, port: u16) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("port = ") { format!("port = {port}") } else { l.to_string() })
        .collect();
    std::fs::write(&s.config, text.join("\n") + "\n").unwrap();
}

/// Breaks runs in every way listed; returns how many breaks hit a running
/// fetch.
fn torture(s: &Setup, upstream: u16, c: &Case) -> usize {
    let mut points = 0;
    for &cut in c.byte_cuts {
        let (port, fired) = proxy(upstream, Fault::AfterServerBytes(cut));
        set_port(s, port);
        let o = s.run(&["--quiet"]);
        if fired.load(Ordering::SeqCst) {
            points += 1;
            assert_eq!(code(&o), 3, "a dropped connection is a temporary failure: {}", show(&o));
        }
    }
    for &k in c.dele_cuts {
        let (port, fired) = proxy(upstream, Fault::BeforeDeleOk(k));
        set_port(s, port);
        let o = s.run(&["--quiet"]);
        if fired.load(Ordering::SeqCst) {
            points += 1;
            assert_eq!(code(&o), 3, "{}", show(&o));
        }
    }
    set_port(s, upstream);
    for &(point, n) in c.faults {
        let o = s.run_cmd({
            let mut cmd = s.command(&["--quiet"]);
            cmd.env("POBOX_FETCH_FAULT", format!("{point}:{n}"));
            cmd
        });
        if o.status.signal() == Some(9) {
            points += 1;
        } else {
            eprintln!("crash point {point}:{n} not reached (exit {:?})", o.status.code());
        }
    }
    {
        let (port, fired) = proxy(upstream, Fault::BeforeQuitReply);
        set_port(s, port);
        let _ = s.run(&["--quiet"]);
        points += usize::from(fired.load(Ordering::SeqCst));
    }
    set_port(s, upstream);
    eprintln!("{points} kill points before the timed kills");
    for &ms in c.kill_delays_ms {
        let mut child = s.command(&["--quiet"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        if child.try_wait().unwrap().is_none() {
            points += 1;
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
    }
    points
}

/// Makes every file in `dir` (whose name passes `pick`) two minutes old:
/// the cleanup removes a dead writer's leftovers only past a minute, so
/// that a live writer in another pid namespace is never touched.
fn age_leftovers(dir: &Path, pick: &dyn Fn(&str) -> bool) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) && pick(&e.file_name().to_string_lossy()) {
            let f = std::fs::File::options().write(true).open(e.path()).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(120)).unwrap();
            n += 1;
        }
    }
    n
}

fn run_case(c: &Case, tag: &str) {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(c.count, tag);
    dv.deliver(&msgs);
    let keep = if c.keep { "keep = true\n" } else { "" };
    let s = Setup::new(dv.pop3, "127.0.0.1", &format!("security = \"none\"\nallow_insecure = true\n{keep}"));
    let mbox = s.dir.path().join("inbox.mbox");
    let mda_out = s.dir.path().join("mda-out");
    let maildir_line = format!("maildir = \"{}\"", s.maildir.display());
    match c.dest {
        Dest::Maildir => {}
        Dest::Mbox => s.edit(&maildir_line, &format!("mbox = \"{}\"", mbox.display())),
        Dest::Mda => {
            std::fs::create_dir(&mda_out).unwrap();
            // One file per delivery, renamed into place only once the MDA
            // has read all of its input: every copy it made is counted.
            let mda = format!(
                "f={}/$POBOX_MESSAGE_ID.$(date +%s%N).$$; cat > $f.part && mv $f.part $f",
                mda_out.display()
            );
            s.edit(&maildir_line, &format!("mda = \"{mda}\""));
        }
    }
    let points = torture(&s, dv.pop3, c);
    eprintln!("kill test ({tag}): {points} kill points hit a running fetch");
    assert!(points >= c.min_points, "too few kill points landed: {points}");

    let tmp_left = age_leftovers(&s.maildir.join("tmp"), &|_| true);
    let locks_left = age_leftovers(s.dir.path(), &|n| n.starts_with(".inbox.mbox.lock-pobox."));
    eprintln!("kill test ({tag}): {tmp_left} files in tmp/, {locks_left} temporary lock files left by killed runs");
    std::thread::sleep(Duration::from_millis(300));
    let o = s.run(&["--quiet"]);
    assert!(code(&o) <= 1, "the first run after the kills must succeed, never exit 3: {}", show(&o));

    match c.dest {
        Dest::Maildir => assert_exactly_once_clean(&s.maildir, &msgs),
        Dest::Mbox => {
            assert_each_once(&mbox_messages(&mbox), &msgs, "mbox");
            assert!(!s.dir.path().join("inbox.mbox.lock").exists(), "the dot-lock must be gone");
            let stray: Vec<_> = std::fs::read_dir(s.dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.contains(".lock"))
                .collect();
            assert!(stray.is_empty(), "lock files left: {stray:?}");
        }
        Dest::Mda => {
            let copies: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&mda_out)
                .unwrap()
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".part"))
                .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
                .collect();
            let mut extra = 0;
            for (i, m) in msgs.iter().enumerate() {
                let n = copies.iter().filter(|(_, c)| c == m).count();
                assert!(n >= 1, "message {i} was never delivered whole");
                extra += n - 1;
            }
            assert_eq!(copies.iter().filter(|(_, c)| !msgs.contains(c)).count(), 0, "a short or foreign delivery");
            eprintln!("kill test ({tag}): {extra} duplicate MDA deliveries for {points} kill points");
            assert!(extra <= points, "the MDA's window is one message per kill: {extra} extra copies");
        }
    }
    if c.keep {
        assert_eq!(dv.server_count(), c.count, "keep mode leaves everything on the server");
    } else {
        assert_eq!(dv.server_count(), 0, "delete mode: the maildrop must end empty");
    }
    let o = s.run(&[]);
    assert_eq!(code(&o), 1, "a further run has nothing new: {}", show(&o));
}

const MAILDIR_CUTS: &[u64] =
    &[3_000, 5_000, 8_000, 11_000, 14_000, 18_000, 22_000, 27_000, 33_000, 40_000, 50_000, 60_000, 75_000, 90_000];

const MAILDIR_FAULTS: &[(&str, u32)] =
    &[("message-stored", 1), ("batch-durable", 1), ("batch-journalled", 1), ("message-stored", 30), ("batch-journalled", 2)];

#[test]
fn kill_test_maildir_delete_mode() {
    run_case(
        &Case {
            dest: Dest::Maildir,
            keep: false,
            count: 200,
            faults: MAILDIR_FAULTS,
            byte_cuts: MAILDIR_CUTS,
            dele_cuts: &[1, 2, 4, 8],
            kill_delays_ms: DELAYS,
            min_points: 30,
        },
        "kill-md-del",
    );
}

#[test]
fn kill_test_maildir_keep_mode() {
    run_case(
        &Case {
            dest: Dest::Maildir,
            keep: true,
            count: 200,
            faults: MAILDIR_FAULTS,
            byte_cuts: MAILDIR_CUTS,
            dele_cuts: &[],
            kill_delays_ms: DELAYS,
            min_points: 30,
        },
        "kill-md-keep",
    );
}

#[test]
fn kill_test_mbox_delete_mode() {
    run_case(
        &Case {
            dest: Dest::Mbox,
            keep: false,
            count: 150,
            faults: &[
                ("mbox-lock-tmp", 1),
                ("mbox-lock-linked", 1),
                ("mbox-locked", 1),
                ("mbox-appended", 1),
                ("mbox-lock-tmp", 5),
                ("mbox-lock-linked", 3),
                ("mbox-locked", 8),
                ("mbox-appended", 6),
                ("mbox-lock-linked", 20),
                ("mbox-lock-tmp", 2),
                ("mbox-locked", 3),
                ("mbox-appended", 12),
                ("mbox-lock-linked", 2),
                ("batch-journalled", 1),
            ],
            byte_cuts: &[3_000, 6_000, 9_000, 14_000, 20_000, 30_000, 45_000, 60_000, 80_000, 120_000],
            dele_cuts: &[1, 3, 6],
            kill_delays_ms: DELAYS,
            min_points: 30,
        },
        "kill-mbox",
    );
}

#[test]
fn kill_test_mda_delete_mode() {
    run_case(
        &Case {
            dest: Dest::Mda,
            keep: false,
            count: 60,
            faults: &[("message-stored", 1), ("message-stored", 3), ("batch-journalled", 2)],
            byte_cuts: &[5_000, 12_000, 20_000, 40_000, 60_000],
            dele_cuts: &[1, 3],
            kill_delays_ms: &[3, 6, 10, 15, 20, 30, 45, 60, 100, 200, 400],
            min_points: 10,
        },
        "kill-mda",
    );
}
