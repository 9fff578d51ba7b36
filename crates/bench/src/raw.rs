//! The `raw` sender: the physical limit for `fetch`. It does only what any
//! POP3 server must do for RETR — read the Maildir file, convert LF to
//! CRLF with dot-stuffing, write it to the socket — with blocking I/O and a
//! thread per connection. It speaks just enough POP3 (USER, PASS, STAT,
//! UIDL, LIST, RETR, NOOP, QUIT) for the same client; it checks no
//! password and takes no lock. Loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, ensure};

use crate::corpus::encode_lines;

/// At most this many connections at once (a thread each).
const MAX_CONNS: usize = 2048;
/// At most this many commands per connection.
const MAX_COMMANDS: usize = 10_000_000;

/// Serves forever (until killed).
///
/// # Errors
/// Bind failure or a non-loopback address.
pub(crate) fn serve(listen: &str, mail_root: &Path) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    ensure!(l.local_addr()?.ip().is_loopback(), "the raw sender listens on loopback only");
    let live = Arc::new(AtomicUsize::new(0));
    for conn in l.incoming() {
        let Ok(s) = conn else { continue };
        if live.load(Ordering::SeqCst) >= MAX_CONNS {
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let (root, live) = (mail_root.to_path_buf(), live.clone());
        std::thread::spawn(move || {
            let _ = session(s, &root);
            live.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

struct Entry {
    path: PathBuf,
    name: String,
    size: u64,
}

fn listing(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut v = Vec::new();
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(dir.join(sub))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let size = name
                .split(',')
                .find_map(|f| f.strip_prefix("W="))
                .and_then(|w| w.split(':').next()?.parse().ok())
                .context("file name without W=")?;
            v.push(Entry { path: e.path(), name, size });
        }
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

fn session(s: TcpStream, root: &Path) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    w.write_all(b"+OK raw sender ready\r\n")?;
    let mut user = String::new();
    let mut drop: Vec<Entry> = Vec::new();
    let (mut line, mut file, mut out) = (String::new(), Vec::new(), Vec::new());
    for _ in 0..MAX_COMMANDS {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut it = line.split_whitespace();
        let cmd = it.next().unwrap_or("").to_ascii_uppercase();
        let arg = it.next().unwrap_or("");
        out.clear();
        match cmd.as_str() {
            "USER" => {
                user = arg.to_string();
                out.extend_from_slice(b"+OK\r\n");
            }
            "PASS" => {
                drop = listing(&root.join(&user).join("Maildir"))?;
                out.extend_from_slice(b"+OK logged in\r\n");
            }
            "STAT" => {
                let total: u64 = drop.iter().map(|e| e.size).sum();
                out.extend_from_slice(format!("+OK {} {total}\r\n", drop.len()).as_bytes());
            }
            "UIDL" | "LIST" => {
                out.extend_from_slice(b"+OK\r\n");
                for (i, e) in drop.iter().enumerate() {
                    let base = e.name.split(',').next().unwrap_or(&e.name);
                    if cmd == "UIDL" {
                        out.extend_from_slice(format!("{} {base}\r\n", i + 1).as_bytes());
                    } else {
                        out.extend_from_slice(format!("{} {}\r\n", i + 1, e.size).as_bytes());
                    }
                }
                out.extend_from_slice(b".\r\n");
            }
            "RETR" => match arg.parse::<usize>().ok().and_then(|n| drop.get(n.wrapping_sub(1))) {
                Some(e) => {
                    file.clear();
                    std::fs::File::open(&e.path)?.read_to_end(&mut file)?;
                    out.extend_from_slice(format!("+OK {} octets\r\n", e.size).as_bytes());
                    encode_lines(&file, &mut out);
                    out.extend_from_slice(b".\r\n");
                }
                None => out.extend_from_slice(b"-ERR no such message\r\n"),
            },
            "NOOP" => out.extend_from_slice(b"+OK\r\n"),
            "QUIT" => {
                w.write_all(b"+OK bye\r\n")?;
                return Ok(());
            }
            _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
        }
        w.write_all(&out)?;
    }
    Ok(())
}
