//! Interop matrix: the real `pobox serve` read by real POP3 clients from
//! Debian's packages, each in every transport it has (cleartext on loopback,
//! STLS, implicit TLS) and in delete and leave-on-server modes.
//!
//! For every client x mode the test delivers a fresh set of messages (dot
//! lines, a lone ".", 8-bit text, a 64 KiB message with mixed line ends) to a
//! user of its own, runs the client, and checks:
//! - every message arrived once, byte-exact: the body equal, and every header
//!   line the server sent present in order (clients may add their own
//!   headers: Received, Status, X-Getmail...; line ends compared after
//!   CRLF -> LF, since every client stores with its platform's line end);
//! - the server-side effect: delete mode leaves the maildrop empty, keep
//!   mode leaves every message in place.
//!
//! TLS is verified for real: every client trusts only the server's own
//! self-signed certificate (`DATA/tls/cert.pem`, issued for "localhost") and
//! checks the host name "localhost" (which /etc/hosts maps to 127.0.0.1).
//!
//! One line per client x mode goes to stderr and to
//! `target/interop-matrix.txt` (`.ci/run` prints that file). A client that is
//! not installed fails the test with its package name; none skips silently.
//! Combinations a client does not have are listed as `n/a` with the reason.
//!
//! Clients (Debian packages): fetchmail, mpop, getmail6, curl, python3
//! (poplib), libnet-perl + libio-socket-ssl-perl (Net::POP3), neomutt
//! (driven in tmux: it needs a terminal), openssl (s_client); tmux.

#![allow(unreachable_pub)]

#[path = "../integration/util.rs"]
#[allow(dead_code)]
mod util;

mod apppass;
mod fuzz_regressions;

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::{Dir, PW, Server, TestCommand};

/// Messages delivered for each client x mode.
const MESSAGES: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    Plain,
    Stls,
    Implicit,
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tls::Plain => "plain",
            Tls::Stls => "stls",
            Tls::Implicit => "tls",
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Delete,
    Keep,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Delete => "delete",
            Mode::Keep => "keep",
        })
    }
}

/// One client x mode run: where its messages must end up.
struct Case<'a> {
    srv: &'a Server<'a>,
    user: String,
    tls: Tls,
    mode: Mode,
    /// Scratch directory of this case (configs, client state).
    work: PathBuf,
    /// Maildir (tmp/new/cur) or plain directory the client writes into.
    out: PathBuf,
}

impl Case<'_> {
    fn port(&self) -> u16 {
        if self.tls == Tls::Implicit { self.srv.pop3s } else { self.srv.pop3 }
    }
    fn cert(&self) -> PathBuf {
        self.srv.dir.cert()
    }
    fn delete(&self) -> bool {
        self.mode == Mode::Delete
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.work.join(name);
        std::fs::write(&p, text).unwrap();
        set_mode(&p, 0o600);
        p
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

type Client = fn(&Case<'_>) -> Result<(), String>;

struct Entry {
    name: &'static str,
    tool: &'static str,
    run: Client,
    /// Modes the client does not have, with the reason.
    unsupported: fn(Tls, Mode) -> Option<&'static str>,
}

fn all_modes(_: Tls, _: Mode) -> Option<&'static str> {
    None
}

fn clients() -> Vec<Entry> {
    vec![
        Entry { name: "fetchmail", tool: "fetchmail", run: fetchmail, unsupported: all_modes },
        Entry { name: "mpop", tool: "mpop", run: mpop, unsupported: all_modes },
        Entry {
            name: "getmail6",
            tool: "getmail",
            run: getmail,
            unsupported: |t, _| (t == Tls::Stls).then_some("getmail6 has no POP3 STLS (only SimplePOP3SSLRetriever)"),
        },
        Entry { name: "curl", tool: "curl", run: curl, unsupported: all_modes },
        Entry { name: "poplib", tool: "python3", run: poplib, unsupported: all_modes },
        Entry { name: "Net::POP3", tool: "perl", run: net_pop3, unsupported: all_modes },
        Entry { name: "neomutt", tool: "neomutt", run: neomutt, unsupported: all_modes },
        Entry {
            name: "s_client",
            tool: "openssl",
            run: s_client,
            unsupported: |t, _| (t == Tls::Plain).then_some("openssl s_client is TLS only"),
        },
    ]
}

#[test]
fn interop_matrix() {
    let dir = Dir::new();
    let srv = dir.server().config("max_connections_per_ip", "1000").start();
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    let started = Instant::now();
    for entry in clients() {
        util::require_tool(entry.tool);
        if entry.name == "neomutt" {
            util::require_tool("tmux");
        }
        for tls in [Tls::Plain, Tls::Stls, Tls::Implicit] {
            for mode in [Mode::Delete, Mode::Keep] {
                let label = format!("interop: {:<10} {:<6} {:<7}", entry.name, tls.to_string(), mode.to_string());
                if let Some(why) = (entry.unsupported)(tls, mode) {
                    let line = format!("{label}n/a ({why})");
                    eprintln!("{line}");
                    lines.push(line);
                    continue;
                }
                let t0 = Instant::now();
                let result = run_case(&srv, &entry, tls, mode);
                let ms = t0.elapsed().as_millis();
                let line = match &result {
                    Ok(()) => format!("{label}ok   ({MESSAGES} msgs, {ms} ms)"),
                    Err(e) => {
                        failures.push(format!("{label}: {e}"));
                        format!("{label}FAIL ({})", e.lines().next().unwrap_or(""))
                    }
                };
                eprintln!("{line}");
                lines.push(line);
            }
        }
    }
    let summary = format!(
        "interop: {} combinations, {} failed, {:.1} s",
        lines.iter().filter(|l| !l.contains(" n/a ")).count(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    lines.push(summary);
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("interop-matrix.txt");
    let mut f = std::fs::File::create(&target).unwrap();
    for l in &lines {
        writeln!(f, "{l}").unwrap();
    }
    assert!(failures.is_empty(), "interop failures:\n{}\n{}", failures.join("\n\n"), srv.dump());
}

fn run_case(srv: &Server<'_>, entry: &Entry, tls: Tls, mode: Mode) -> Result<(), String> {
    let slug: String =
        entry.name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let user = format!("{slug}_{tls}_{mode}");
    srv.dir.add_user(&user, PW);
    let work = srv.dir.scratch(&user);
    let out = work.join("out");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(out.join(sub)).unwrap();
    }
    let case = Case { srv, user: user.clone(), tls, mode, work, out };
    deliver(srv, &user)?;
    let stored = stored_messages(srv.dir, &user);
    if stored.len() != MESSAGES {
        return Err(format!("{} messages stored, expected {MESSAGES}", stored.len()));
    }
    let run = entry.run;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&case)))
        .map_err(|p| panic_text(&p))??;
    let received = received_messages(&case.out);
    check_received(&stored, &received)?;
    // The server-side effect. The server commits UPDATE before it answers
    // QUIT, so this is immediate once the client has exited.
    let left = srv.dir.message_files(&user).len();
    let want = if mode == Mode::Delete { 0 } else { MESSAGES };
    if left != want {
        return Err(format!("{left} messages left on the server after the client quit, expected {want}"));
    }
    // Keep mode: the maildrop is still intact (read it again over POP3).
    if mode == Mode::Keep {
        let now = stored_messages(srv.dir, &user);
        if now != stored {
            return Err("kept messages changed on the server".into());
        }
    }
    Ok(())
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "panic".into()
    }
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// The test messages for `user`: unique bodies, dot lines, 8-bit text,
/// folded headers, a large message with mixed line ends.
fn messages(user: &str) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    v.push(
        format!(
            "From: Sender <sender@example.org>\nTo: {user}@localhost\nSubject: interop 1 for {user}\n\
             Message-ID: <1.{user}@interop.test>\nDate: Mon, 01 Jan 2024 00:00:00 +0000\n\n\
             Hello {user}.\n.\n..\n.leading dot\n...three\n\ttab line\n  spaces  \n\nend\n"
        )
        .into_bytes(),
    );
    v.push(
        format!(
            "From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.org>\nTo: {user}@localhost\n\
             Subject: interop 2 for {user}\n  folded continuation\nMessage-ID: <2.{user}@interop.test>\n\
             MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
             Grüße, {user} — ünïcödé ✓\r\nCRLF line\r\n.\r\nlast line\n"
        )
        .into_bytes(),
    );
    let mut big = format!("Message-ID: <3.{user}@interop.test>\nX-Interop: {user}\n").into_bytes();
    big.extend(util::random_message(64 * 1024, user.len() as u64 * 7919 + 3));
    v.push(big);
    v.push(format!("Message-ID: <4.{user}@interop.test>\nSubject: one line\n\nonly {user}\n").into_bytes());
    assert_eq!(v.len(), MESSAGES);
    v
}

/// Delivers [`messages`] over LMTP; every one must get 250.
fn deliver(srv: &Server<'_>, user: &str) -> Result<(), String> {
    let mut l = srv.lmtp();
    for m in messages(user) {
        let r = l.cmd("MAIL FROM:<sender@example.org>");
        if !r.starts_with("250") {
            return Err(format!("MAIL: {r}"));
        }
        let r = l.cmd(&format!("RCPT TO:<{user}@localhost>"));
        if !r.starts_with("250") {
            return Err(format!("RCPT: {r}"));
        }
        let r = l.cmd("DATA");
        if !r.starts_with("354") {
            return Err(format!("DATA: {r}"));
        }
        let mut body = util::stuff(&util::crlf(&m));
        body.extend_from_slice(b".\r\n");
        l.send(body);
        let r = l.reply();
        if !r.starts_with("250") {
            return Err(format!("end of DATA: {r}"));
        }
    }
    let _ = l.cmd("QUIT");
    Ok(())
}

/// The stored messages of `user` (what RETR sends, before CRLF), sorted.
fn stored_messages(dir: &Dir, user: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ["new", "cur"]
        .iter()
        .flat_map(|sub| dir.files(user, sub).into_iter().map(move |f| dir.maildir(user, sub).join(f)))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    v.sort();
    v
}

/// Every regular file under `out` (a Maildir's new/ and cur/, or flat).
fn received_messages(out: &Path) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for d in [out.to_path_buf(), out.join("new"), out.join("cur")] {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                v.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    v
}

fn lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// (header lines, body) of an LF message.
fn split(m: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let (head, body) = match m.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&m[..=i], &m[i + 2..]),
        None => (m, &b""[..]),
    };
    (head.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect(), body)
}

/// `received` is `sent` plus headers the client added: bodies equal, every
/// header line of `sent` present in `received` in the same order.
fn same_message(sent: &[u8], received: &[u8]) -> bool {
    let (sent, received) = (lf(sent), lf(received));
    let (sh, sb) = split(&sent);
    let (rh, rb) = split(&received);
    if sb != rb {
        return false;
    }
    let mut it = rh.iter();
    sh.iter().all(|s| it.any(|r| r == s))
}

fn check_received(stored: &[Vec<u8>], received: &[Vec<u8>]) -> Result<(), String> {
    if received.len() != stored.len() {
        return Err(format!("client stored {} messages, the server sent {}", received.len(), stored.len()));
    }
    let mut used = vec![false; received.len()];
    for s in stored {
        let hit = received.iter().enumerate().position(|(i, r)| !used[i] && same_message(s, r));
        match hit {
            Some(i) => used[i] = true,
            None => {
                let first = String::from_utf8_lossy(&s[..s.len().min(300)]).into_owned();
                let closest = received
                    .iter()
                    .min_by_key(|r| r.len().abs_diff(s.len()))
                    .map(|r| String::from_utf8_lossy(&r[..r.len().min(600)]).into_owned())
                    .unwrap_or_default();
                return Err(format!(
                    "message not received byte-exact (stored {} bytes):\n{first}\n--- closest received ---\n{closest}",
                    s.len()
                ));
            }
        }
    }
    Ok(())
}

fn run(mut c: TestCommand, what: &str, ok_codes: &[i32]) -> Result<util::Output, String> {
    c.timeout(Duration::from_secs(60));
    let out = c.output();
    match out.status.code() {
        Some(code) if ok_codes.contains(&code) => Ok(out),
        _ => Err(format!("{what} failed\n{}", out.dump())),
    }
}

// ---------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------

/// fetchmail 6.4: `ssl` (implicit), `sslproto tls1.2+` without `ssl`
/// (mandatory STLS), `sslproto ''` (no opportunistic STLS: cleartext);
/// `sslcertck` + `sslcertfile` = the server certificate as the trust anchor.
/// Messages go through an MDA into files.
fn fetchmail(c: &Case<'_>) -> Result<(), String> {
    let tls = match c.tls {
        Tls::Plain => "sslproto ''".to_string(),
        Tls::Stls => format!("sslproto tls1.2+ sslcertck sslcertfile \"{}\"", c.cert().display()),
        Tls::Implicit => format!("ssl sslcertck sslcertfile \"{}\"", c.cert().display()),
    };
    let keep = if c.delete() { "nokeep" } else { "keep" };
    let rc = c.write(
        "fetchmailrc",
        &format!(
            "set no bouncemail\nset no syslog\n\
             poll localhost protocol pop3 port {port} uidl timeout 30\n  \
             user \"{user}\" there with password \"{PW}\" is root here\n  \
             mda \"cat > {out}/m.$$\"\n  {keep} fetchall {tls}\n",
            port = c.port(),
            user = c.user,
            out = c.out.display(),
        ),
    );
    let mut cmd = TestCommand::new("fetchmail");
    cmd.arg("-f").arg(&rc).args(["--nodetach", "-v"]).env("FETCHMAILHOME", &c.work).env("HOME", &c.work);
    run(cmd, "fetchmail", &[0]).map(drop)
}

/// mpop 1.4: `tls`/`tls_starttls`, `tls_trust_file` = the server
/// certificate; delivery into a Maildir; `keep on|off`.
fn mpop(c: &Case<'_>) -> Result<(), String> {
    let (tls, starttls) = match c.tls {
        Tls::Plain => ("off", "off"),
        Tls::Stls => ("on", "on"),
        Tls::Implicit => ("on", "off"),
    };
    let cfg = c.write(
        "mpoprc",
        &format!(
            "account default\nhost localhost\nport {port}\nuser {user}\npassword {PW}\nauth user\n\
             tls {tls}\ntls_starttls {starttls}\ntls_trust_file {cert}\nkeep {keep}\nonly_new off\n\
             delivery maildir {out}\nuidls_file {work}/uidls\ntimeout 30\n",
            port = c.port(),
            user = c.user,
            cert = c.cert().display(),
            keep = if c.delete() { "off" } else { "on" },
            out = c.out.display(),
            work = c.work.display(),
        ),
    );
    let mut cmd = TestCommand::new("mpop");
    cmd.arg("-C").arg(&cfg).arg("-q").env("HOME", &c.work);
    run(cmd, "mpop", &[0]).map(drop)
}

/// getmail6: SimplePOP3Retriever (cleartext) or SimplePOP3SSLRetriever with
/// `ca_certs`; Maildir destination (as `nobody`: getmail refuses to
/// deliver as root); `delete = true|false`.
fn getmail(c: &Case<'_>) -> Result<(), String> {
    let retriever = match c.tls {
        Tls::Plain => "type = SimplePOP3Retriever".to_string(),
        Tls::Implicit => format!("type = SimplePOP3SSLRetriever\nca_certs = {}", c.cert().display()),
        Tls::Stls => unreachable!(),
    };
    let rc = c.write(
        "getmailrc",
        &format!(
            "[retriever]\n{retriever}\nserver = localhost\nport = {port}\nusername = {user}\npassword = {PW}\n\n\
             [destination]\ntype = Maildir\npath = {out}/\nuser = nobody\n\n\
             [options]\ndelete = {del}\nread_all = true\nverbose = 0\n",
            port = c.port(),
            user = c.user,
            out = c.out.display(),
            del = if c.delete() { "true" } else { "false" },
        ),
    );
    // getmail refuses to deliver as root: it delivers as `nobody`.
    for d in [c.out.clone(), c.out.join("tmp"), c.out.join("new"), c.out.join("cur")] {
        set_mode(&d, 0o777);
    }
    let mut cmd = TestCommand::new("getmail");
    cmd.arg("-g").arg(&c.work).arg("-r").arg(&rc).env("HOME", &c.work);
    run(cmd, "getmail", &[0]).map(drop)
}

/// curl: one RETR per invocation (`pop3://host/N`), then, in delete mode,
/// `-X DELE -I` per message from the highest number down (a new session
/// renumbers).
fn curl(c: &Case<'_>) -> Result<(), String> {
    let scheme = if c.tls == Tls::Implicit { "pop3s" } else { "pop3" };
    let base = format!("{scheme}://localhost:{}", c.port());
    let cmd = |extra: &[&str]| {
        let mut cmd = c.srv.curl(c.port());
        cmd.arg("-u").arg(format!("{}:{PW}", c.user));
        if c.tls == Tls::Stls {
            cmd.arg("--ssl-reqd");
        }
        cmd.args(extra);
        cmd
    };
    for n in 1..=MESSAGES {
        let out = run(cmd(&[&format!("{base}/{n}")]), "curl RETR", &[0])?;
        std::fs::write(c.out.join(format!("m{n}")), out.stdout).unwrap();
    }
    if c.delete() {
        for n in (1..=MESSAGES).rev() {
            run(cmd(&["-X", "DELE", "-I", &format!("{base}/{n}")]), "curl DELE", &[0])?;
        }
    }
    Ok(())
}

/// Python's poplib: POP3 (+ `stls(context)`) or POP3_SSL; the context
/// trusts only the server certificate and checks the name "localhost".
fn poplib(c: &Case<'_>) -> Result<(), String> {
    let script = format!(
        r#"
import poplib, ssl, sys
ctx = ssl.create_default_context(cafile={cert:?})
tls, port, user, pw, out, delete = {tls:?}, {port}, {user:?}, {pw:?}, {out:?}, {delete}
if tls == "tls":
    p = poplib.POP3_SSL("localhost", port, context=ctx, timeout=30)
else:
    p = poplib.POP3("localhost", port, timeout=30)
    if tls == "stls":
        p.stls(context=ctx)
p.user(user)
p.pass_(pw)
count, _ = p.stat()
for n in range(1, count + 1):
    resp, lines, octets = p.retr(n)
    with open(f"{{out}}/m{{n}}", "wb") as f:
        f.write(b"\r\n".join(lines) + b"\r\n")
    if delete:
        p.dele(n)
print(p.quit())
"#,
        cert = c.cert().display().to_string(),
        tls = c.tls.to_string(),
        port = c.port(),
        user = c.user,
        pw = PW,
        out = c.out.display().to_string(),
        delete = if c.delete() { "True" } else { "False" },
    );
    let mut cmd = TestCommand::new("python3");
    cmd.arg("-c").arg(script);
    run(cmd, "poplib", &[0]).map(drop)
}

/// Perl's Net::POP3 (libnet) with IO::Socket::SSL: `SSL => 1` or
/// `starttls`, verifying against the server certificate.
fn net_pop3(c: &Case<'_>) -> Result<(), String> {
    let script = r#"
use strict; use warnings; use Net::POP3;
my ($tls, $port, $user, $pw, $out, $delete, $cert) = @ARGV;
my %ssl = (SSL_ca_file => $cert, SSL_verify_mode => 1, SSL_verifycn_name => 'localhost', SSL_verifycn_scheme => 'default');
my $p = Net::POP3->new('localhost', Port => $port, Timeout => 30, ($tls eq 'tls' ? (SSL => 1, %ssl) : ()))
    or die "connect: $@";
if ($tls eq 'stls') { $p->starttls(%ssl) or die "starttls: " . $p->message . " $IO::Socket::SSL::SSL_ERROR"; }
defined $p->login($user, $pw) or die "login: " . $p->message;
my $list = $p->list or die "list";
for my $n (sort { $a <=> $b } keys %$list) {
    my $lines = $p->get($n) or die "get $n: " . $p->message;
    open(my $f, '>:raw', "$out/m$n") or die; print $f join('', @$lines); close $f;
    if ($delete) { $p->delete($n) or die "delete $n"; }
}
$p->quit or die "quit: " . $p->message;
"#;
    let mut cmd = TestCommand::new("perl");
    cmd.arg("-e")
        .arg(script)
        .arg(c.tls.to_string())
        .arg(c.port().to_string())
        .arg(&c.user)
        .arg(PW)
        .arg(&c.out)
        .arg(if c.delete() { "1" } else { "0" })
        .arg(c.cert());
    run(cmd, "Net::POP3", &[0]).map(drop)
}

/// openssl s_client: `-starttls pop3` or implicit TLS, `-verify_return_error`
/// against the server certificate; the commands are pipelined on stdin
/// (pobox advertises PIPELINING) and the replies parsed from stdout.
fn s_client(c: &Case<'_>) -> Result<(), String> {
    let mut script = format!("USER {}\r\nPASS {PW}\r\n", c.user);
    for n in 1..=MESSAGES {
        script.push_str(&format!("RETR {n}\r\n"));
        if c.delete() {
            script.push_str(&format!("DELE {n}\r\n"));
        }
    }
    script.push_str("QUIT\r\n");
    let mut cmd = TestCommand::new("openssl");
    cmd.args(["s_client", "-quiet", "-verify_return_error", "-verify_hostname", "localhost", "-servername"])
        .arg("localhost")
        .arg("-CAfile")
        .arg(c.cert())
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", c.port()));
    if c.tls == Tls::Stls {
        cmd.args(["-starttls", "pop3"]);
    }
    cmd.stdin(script);
    let out = run(cmd, "openssl s_client", &[0])?;
    // Parse the reply stream: +OK (USER) +OK (PASS), then per message a
    // RETR +OK + body + ".", a DELE +OK, and the QUIT +OK.
    let stderr = out.stderr();
    let lines: Vec<&[u8]> = out.stdout.split_inclusive(|&b| b == b'\n').collect();
    let mut at = 0;
    let status = |at: &mut usize, what: &str| -> Result<(), String> {
        let l = lines.get(*at).copied();
        *at += 1;
        match l {
            Some(l) if l.starts_with(b"+OK") => Ok(()),
            other => Err(format!("{what}: {:?}\n{stderr}", other.map(String::from_utf8_lossy))),
        }
    };
    // No greeting in the STLS case: s_client consumed it before STLS, and
    // the server sends none after the handshake. Implicit TLS: greeting.
    if c.tls == Tls::Implicit {
        status(&mut at, "greeting")?;
    }
    status(&mut at, "USER")?;
    status(&mut at, "PASS")?;
    for n in 1..=MESSAGES {
        status(&mut at, &format!("RETR {n}"))?;
        let mut body = Vec::new();
        loop {
            let Some(l) = lines.get(at) else { return Err(format!("RETR {n}: body cut short")) };
            at += 1;
            if *l == b".\r\n" {
                break;
            }
            body.extend_from_slice(l);
        }
        std::fs::write(c.out.join(format!("m{n}")), util::unstuff(&body)).unwrap();
        if c.delete() {
            status(&mut at, &format!("DELE {n}"))?;
        }
    }
    status(&mut at, "QUIT")
}

/// neomutt needs a terminal, so it runs in a detached tmux session:
/// `<fetch-mail>` from `pop_host` into a Maildir spool, then quits.
/// `pop_delete` chooses the mode; `ssl_starttls`/`ssl_force_tls` and the
/// `pops://` scheme choose the transport; `ssl_ca_certificates_file` is the
/// server certificate (real verification: neomutt would prompt otherwise,
/// and nobody answers the prompt).
fn neomutt(c: &Case<'_>) -> Result<(), String> {
    let (scheme, starttls, force) = match c.tls {
        Tls::Plain => ("pop", "no", "no"),
        Tls::Stls => ("pop", "yes", "yes"),
        Tls::Implicit => ("pops", "no", "yes"),
    };
    let done = c.work.join("neomutt.done");
    let cfg = c.write(
        "muttrc",
        &format!(
            "set pop_host=\"{scheme}://{user}@localhost:{port}\"\nset pop_user=\"{user}\"\nset pop_pass=\"{PW}\"\n\
             set pop_delete={del}\nset pop_last=no\nset pop_authenticators=\"user\"\n\
             set ssl_starttls={starttls}\nset ssl_force_tls={force}\n\
             set ssl_ca_certificates_file=\"{cert}\"\nset certificate_file=\"{work}/certs\"\n\
             set mbox_type=Maildir\nset folder=\"{work}\"\nset spool_file=\"{out}\"\nset mbox=\"{out}\"\n\
             set record=\"\"\nset header_cache=\"\"\nset message_cachedir=\"\"\n\
             set move=no\nset beep=no\nset wait_key=no\nset confirmappend=no\nset quit=yes\n\
             set timeout=1\nset mail_check=1\nset sort=date\n",
            user = c.user,
            port = c.port(),
            del = if c.delete() { "yes" } else { "no" },
            cert = c.cert().display(),
            work = c.work.display(),
            out = c.out.display(),
        ),
    );
    let session = format!("pobox-interop-{}", std::process::id());
    let shell = format!(
        "TERM=xterm HOME={work} neomutt -n -F {cfg} -f {out} -e 'push <fetch-mail><quit>'; \
         echo $? > {done}; sleep 5",
        work = c.work.display(),
        cfg = cfg.display(),
        out = c.out.display(),
        done = done.display(),
    );
    let mut cmd = TestCommand::new("tmux");
    cmd.args(["-L", &session, "new-session", "-d", "-x", "120", "-y", "40", "-s", "interop"]).arg(&shell);
    run(cmd, "tmux new-session", &[0])?;
    let finished = util::eventually(Duration::from_secs(60), || done.exists());
    let mut cap = TestCommand::new("tmux");
    cap.args(["-L", &session, "capture-pane", "-p", "-t", "interop"]);
    let screen = cap.output().stdout();
    let mut kill = TestCommand::new("tmux");
    kill.args(["-L", &session, "kill-server"]);
    let _ = kill.output();
    if !finished {
        return Err(format!("neomutt did not finish within 60 s; screen:\n{screen}"));
    }
    let code = std::fs::read_to_string(&done).unwrap_or_default();
    if code.trim() != "0" {
        return Err(format!("neomutt exited {}; screen:\n{screen}", code.trim()));
    }
    Ok(())
}

/// The comparison is not vacuous: a client's added headers pass; a changed
/// body byte, a dropped or altered header, a lost line end do not.
#[test]
fn checker_accepts_added_headers_and_rejects_any_change() {
    let sent = b"Return-Path: <s@x>\nSubject: a\n  folded\n\nbody\n.\nend\n";
    assert!(same_message(sent, b"Received: by client\nReturn-Path: <s@x>\nSubject: a\n  folded\nStatus: RO\n\nbody\n.\nend\n"));
    assert!(same_message(sent, b"Return-Path: <s@x>\r\nSubject: a\r\n  folded\r\n\r\nbody\r\n.\r\nend\r\n"));
    assert!(!same_message(sent, b"Return-Path: <s@x>\nSubject: a\n  folded\n\nbody\n..\nend\n"));
    assert!(!same_message(sent, b"Return-Path: <s@x>\nSubject: a\n\nbody\n.\nend\n"));
    assert!(!same_message(sent, b"Return-Path: <s@x>\nSubject: b\n  folded\n\nbody\n.\nend\n"));
    assert!(!same_message(sent, b"Return-Path: <s@x>\nSubject: a\n  folded\n\nbody\n.\nend"));
    assert!(check_received(&[sent.to_vec()], &[sent.to_vec(), sent.to_vec()]).is_err());
}
