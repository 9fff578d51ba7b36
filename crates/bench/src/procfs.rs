//! Server CPU time and memory from /proc: `stat` (utime, stime and the
//! reaped children's cutime, cstime) and `smaps_rollup` (RSS, PSS).
//!
//! A server is a set of processes: pobox is one; Dovecot is its master and
//! every direct child (login, auth, pop3, lmtp, ...). CPU of children that
//! already exited is in the master's cutime/cstime once reaped.

use std::fs;

/// Clock ticks per second for /proc times. Linux has used 100 (USER_HZ) on
/// every architecture we run on; `getconf CLK_TCK` confirms it at start.
pub(crate) fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stat {
    pub(crate) ppid: u32,
    pub(crate) utime: u64,
    pub(crate) stime: u64,
    pub(crate) cutime: u64,
    pub(crate) cstime: u64,
}

/// Parses /proc/PID/stat; `None` if the process is gone.
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the name start at 3 (state); ppid is 4, utime 14 … cstime 17.
    let num = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok());
    Some(Stat {
        ppid: num(4)? as u32,
        utime: num(14)?,
        stime: num(15)?,
        cutime: num(16)?,
        cstime: num(17)?,
    })
}

/// Direct children of `parent`.
pub(crate) fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

/// The process and its direct children.
pub(crate) fn tree(root: u32) -> Vec<u32> {
    let mut v = vec![root];
    v.extend(children(root));
    v
}

/// Total CPU ticks used by `root` and its children (live and reaped).
pub(crate) fn cpu_ticks(root: u32) -> u64 {
    let mut total = 0;
    if let Some(s) = stat(root) {
        total += s.utime + s.stime + s.cutime + s.cstime;
    }
    for pid in children(root) {
        if let Some(s) = stat(pid) {
            total += s.utime + s.stime;
        }
    }
    total
}

/// Memory in KiB, summed over processes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Mem {
    pub(crate) rss_kib: u64,
    pub(crate) pss_kib: u64,
    pub(crate) processes: usize,
}

/// RSS and PSS of `root` and its children from smaps_rollup.
pub(crate) fn mem(root: u32) -> Mem {
    let mut m = Mem::default();
    for pid in tree(root) {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { continue };
        m.processes += 1;
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(key), Some(val)) = (it.next(), it.next()) else { continue };
            let val: u64 = val.parse().unwrap_or(0);
            match key {
                "Rss:" => m.rss_kib += val,
                "Pss:" => m.pss_kib += val,
                _ => {}
            }
        }
    }
    m
}

/// The 1-minute load average, for the record.
pub(crate) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}
