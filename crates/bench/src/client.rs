//! A minimal POP3 and LMTP client for load generation: buffered reads,
//! one latency sample per command, and every wait bounded by a timeout.
//!
//! Deliberately not the fetcher's client (`pobox_proto::pop3::client`): the
//! load generator must stay small, fast and independent of the code it
//! measures. It reuses only [`Status::parse`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use pobox_proto::pop3::response::Status;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::Lat;

/// Any byte stream: plain TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Longest status or SMTP reply line accepted (RFC 2449 says 512).
const MAX_LINE: usize = 8 * 1024;
/// Largest multi-line body accepted (a 100,000-line UIDL is ~4 MiB).
const MAX_MULTILINE: usize = 64 * 1024 * 1024;
/// No single read or write may stall longer than this. A healthy server
/// answers in milliseconds even on a loaded machine; a stalled one would
/// otherwise eat whole repetitions (Dovecot over TLS did, see BENCHMARKS.md).
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// Buffered connection.
pub(crate) struct Conn {
    s: Box<dyn Io>,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    pub(crate) fn new(s: Box<dyn Io>) -> Conn {
        Conn { s, buf: Vec::with_capacity(64 * 1024), pos: 0 }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 256 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(64 * 1024);
        let n = tokio::time::timeout(IO_TIMEOUT, self.s.read_buf(&mut self.buf))
            .await
            .context("read timed out")??;
        ensure!(n > 0, "connection closed by server");
        Ok(())
    }

    /// One line without its CRLF.
    pub(crate) async fn line(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut searched = self.pos;
        for _ in 0..100_000 {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[searched..]) {
                let end = searched + i;
                let mut line = self.buf[self.pos..end].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.pos = end + 1;
                return Ok(line);
            }
            ensure!(self.buf.len() - self.pos < MAX_LINE, "reply line too long");
            searched = self.buf.len();
            let before = self.pos;
            self.fill().await?;
            searched -= before - self.pos;
        }
        bail!("line never ended")
    }

    /// A POP3 multi-line body after its status line: the wire bytes up to
    /// and including the last CRLF, without the `.CRLF` terminator.
    /// `f` sees the body in place (no copy).
    pub(crate) async fn multiline<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> anyhow::Result<R> {
        let mut from = self.pos;
        for _ in 0..10_000_000 {
            let avail = &self.buf[self.pos..];
            if avail.starts_with(b".\r\n") {
                self.pos += 3;
                return Ok(f(&[]));
            }
            let start = from.saturating_sub(4).max(self.pos);
            if let Some(i) = memchr::memmem::find(&self.buf[start..], b"\r\n.\r\n") {
                let end = start + i + 2;
                let r = f(&self.buf[self.pos..end]);
                self.pos = end + 3;
                return Ok(r);
            }
            ensure!(self.buf.len() - self.pos < MAX_MULTILINE, "multi-line reply too long");
            from = self.buf.len();
            let before = self.pos;
            self.fill().await?;
            from -= before - self.pos;
        }
        bail!("multi-line reply never ended")
    }

    /// Frees the read buffer when it holds nothing (idle sessions).
    pub(crate) fn shrink(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        tokio::time::timeout(IO_TIMEOUT, self.s.write_all(bytes)).await.context("write timed out")??;
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        tokio::time::timeout(IO_TIMEOUT, self.s.flush()).await.context("flush timed out")??;
        Ok(())
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<tokio_rustls::TlsConnector>,
}

impl Endpoint {
    pub(crate) async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Conn::new(Box::new(tcp))),
            Some(c) => {
                let name = ServerName::try_from("localhost").expect("static name");
                let tls = tokio::time::timeout(IO_TIMEOUT, c.connect(name, tcp))
                    .await
                    .context("TLS handshake timed out")??;
                Ok(Conn::new(Box::new(tls)))
            }
        }
    }
}

/// A POP3 session.
pub(crate) struct Pop3 {
    pub(crate) conn: Conn,
    pub(crate) lat: Lat,
}

fn status_ok(line: &[u8], what: &str) -> anyhow::Result<String> {
    match Status::parse(line) {
        Ok(Status::Ok(text)) => Ok(text),
        Ok(Status::Err(code, text)) => bail!("{what}: -ERR {code:?} {text}"),
        Err(e) => bail!("{what}: {e}"),
    }
}

impl Pop3 {
    /// Connects and reads the greeting (latency sample `connect`).
    pub(crate) async fn connect(ep: &Endpoint) -> anyhow::Result<Pop3> {
        let t = Instant::now();
        let mut conn = ep.connect().await?;
        let g = conn.line().await?;
        status_ok(&g, "greeting")?;
        let mut lat = Lat::default();
        lat.record("connect", t.elapsed());
        Ok(Pop3 { conn, lat })
    }

    async fn simple(&mut self, cmd: &'static str, line: &[u8]) -> anyhow::Result<String> {
        let t = Instant::now();
        self.conn.send(line).await?;
        let r = self.conn.line().await?;
        let text = status_ok(&r, cmd)?;
        self.lat.record(cmd, t.elapsed());
        Ok(text)
    }

    /// USER then PASS; sample `login` covers both.
    pub(crate) async fn login(&mut self, user: &str, pass: &str) -> anyhow::Result<()> {
        let t = Instant::now();
        self.conn.send(format!("USER {user}\r\n").as_bytes()).await?;
        let r = self.conn.line().await?;
        status_ok(&r, "USER")?;
        self.conn.send(format!("PASS {pass}\r\n").as_bytes()).await?;
        let r = self.conn.line().await?;
        status_ok(&r, "PASS").with_context(|| format!("login as {user}"))?;
        self.lat.record("login", t.elapsed());
        Ok(())
    }

    pub(crate) async fn stat(&mut self) -> anyhow::Result<(u64, u64)> {
        let text = self.simple("STAT", b"STAT\r\n").await?;
        let mut it = text.split_whitespace().map(str::parse::<u64>);
        match (it.next(), it.next()) {
            (Some(Ok(n)), Some(Ok(s))) => Ok((n, s)),
            _ => bail!("bad STAT reply {text:?}"),
        }
    }

    pub(crate) async fn noop(&mut self) -> anyhow::Result<()> {
        self.simple("NOOP", b"NOOP\r\n").await.map(drop)
    }

    pub(crate) async fn quit(&mut self) -> anyhow::Result<()> {
        self.simple("QUIT", b"QUIT\r\n").await.map(drop)
    }

    async fn multi<R>(&mut self, cmd: &'static str, line: &[u8], f: impl FnOnce(&[u8]) -> R) -> anyhow::Result<R> {
        let t = Instant::now();
        self.conn.send(line).await?;
        let r = self.conn.line().await?;
        status_ok(&r, cmd)?;
        let out = self.conn.multiline(f).await?;
        self.lat.record(cmd, t.elapsed());
        Ok(out)
    }

    /// UIDL: the number of listings, after checking each is `n uid`.
    pub(crate) async fn uidl(&mut self) -> anyhow::Result<usize> {
        self.multi("UIDL", b"UIDL\r\n", |body| {
            let mut n = 0usize;
            for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let mut it = line.trim_ascii().split(|&b| b == b' ');
                let num_ok = it.next().is_some_and(|x| !x.is_empty() && x.iter().all(u8::is_ascii_digit));
                let uid_ok = it.next().is_some_and(|x| !x.is_empty());
                if !(num_ok && uid_ok) {
                    return Err(anyhow::anyhow!("bad UIDL line {:?}", String::from_utf8_lossy(line)));
                }
                n += 1;
            }
            Ok(n)
        })
        .await?
    }

    /// LIST: `(number, size)` per message.
    pub(crate) async fn list(&mut self) -> anyhow::Result<Vec<(u32, u64)>> {
        self.multi("LIST", b"LIST\r\n", |body| {
            body.split(|&b| b == b'\n')
                .filter(|l| !l.trim_ascii().is_empty())
                .map(|line| {
                    let s = std::str::from_utf8(line.trim_ascii())?;
                    let (a, b) = s.split_once(' ').context("bad LIST line")?;
                    Ok((a.parse()?, b.parse()?))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await?
    }

    /// Reads one RETR reply (status + body) and runs `check` on the body.
    async fn read_retr<R>(&mut self, check: impl FnOnce(&[u8]) -> R) -> anyhow::Result<R> {
        let r = self.conn.line().await?;
        let text = status_ok(&r, "RETR")?;
        let announced = text.split_whitespace().next().and_then(|t| t.parse::<u64>().ok());
        let out = self.conn.multiline(|body| (announced, check(body))).await?;
        Ok(out.1)
    }

    /// RETR one message at a time; sample `RETR` per message.
    pub(crate) async fn retr<R>(&mut self, n: u32, check: impl FnOnce(&[u8]) -> R) -> anyhow::Result<R> {
        let t = Instant::now();
        self.conn.send(format!("RETR {n}\r\n").as_bytes()).await?;
        let out = self.read_retr(check).await?;
        self.lat.record("RETR", t.elapsed());
        Ok(out)
    }

    /// All RETRs written at once, then the replies read in order; sample
    /// `RETR` is the time from the write to each reply's end.
    pub(crate) async fn retr_pipelined<R>(&mut self, ns: &[u32], mut check: impl FnMut(usize, &[u8]) -> R) -> anyhow::Result<Vec<R>> {
        let mut cmds = Vec::with_capacity(ns.len() * 12);
        for n in ns {
            cmds.extend_from_slice(format!("RETR {n}\r\n").as_bytes());
        }
        let t = Instant::now();
        self.conn.send(&cmds).await?;
        let mut out = Vec::with_capacity(ns.len());
        for i in 0..ns.len() {
            out.push(self.read_retr(|b| check(i, b)).await?);
            self.lat.record("RETR", t.elapsed());
        }
        Ok(out)
    }
}

/// An LMTP (RFC 2033) sender.
pub(crate) struct Lmtp {
    conn: Conn,
    /// Whether LHLO advertised SIZE (RFC 1870); Dovecot's LMTP does not.
    size_ext: bool,
    pub(crate) lat: Lat,
}

impl Lmtp {
    async fn reply(&mut self) -> anyhow::Result<(u16, String)> {
        let mut text = String::new();
        for _ in 0..1000 {
            let line = self.conn.line().await?;
            ensure!(line.len() >= 3, "short LMTP reply");
            let code: u16 = std::str::from_utf8(&line[..3])?.parse()?;
            text.push_str(&String::from_utf8_lossy(&line));
            text.push('\n');
            if line.get(3) != Some(&b'-') {
                return Ok((code, text));
            }
        }
        bail!("LMTP reply with too many lines")
    }

    pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Lmtp> {
        let ep = Endpoint { addr, tls: None };
        let mut l = Lmtp { conn: ep.connect().await?, size_ext: false, lat: Lat::default() };
        let (c, t) = l.reply().await?;
        ensure!(c == 220, "LMTP greeting: {t}");
        l.conn.send(b"LHLO bench.invalid\r\n").await?;
        let (c, t) = l.reply().await?;
        ensure!(c == 250, "LHLO: {t}");
        l.size_ext = t.lines().any(|x| x.get(4..).is_some_and(|k| k.eq_ignore_ascii_case("SIZE") || k.to_ascii_uppercase().starts_with("SIZE ")));
        Ok(l)
    }

    /// One transaction to one recipient, MAIL/RCPT/DATA pipelined (RFC 2920
    /// via RFC 2033 §4.2); `wire` is the dot-stuffed CRLF message. Sample
    /// `deliver` covers MAIL to the final 250.
    pub(crate) async fn deliver(&mut self, rcpt: &str, wire: &[u8]) -> anyhow::Result<()> {
        let t = Instant::now();
        let size = if self.size_ext { format!(" SIZE={}", wire.len()) } else { String::new() };
        let head = format!("MAIL FROM:<bench@example.org>{size}\r\nRCPT TO:<{rcpt}@bench.invalid>\r\nDATA\r\n");
        self.conn.send(head.as_bytes()).await?;
        for what in ["MAIL", "RCPT"] {
            let (c, t) = self.reply().await?;
            ensure!(c == 250, "{what}: {t}");
        }
        let (c, t2) = self.reply().await?;
        ensure!(c == 354, "DATA: {t2}");
        self.conn.send(wire).await?;
        self.conn.send(b".\r\n").await?;
        self.conn.flush().await?;
        let (c, t2) = self.reply().await?;
        ensure!(c == 250, "delivery to {rcpt}: {t2}");
        self.lat.record("deliver", t.elapsed());
        Ok(())
    }

    pub(crate) async fn quit(&mut self) -> anyhow::Result<()> {
        self.conn.send(b"QUIT\r\n").await?;
        let _ = self.reply().await;
        Ok(())
    }
}

/// A TLS connector that accepts the benchmark's self-signed certificate
/// (loopback only; signatures are still verified).
pub(crate) fn tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
