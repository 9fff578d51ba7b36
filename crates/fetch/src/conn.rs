//! One connection to a POP3 server: buffered reads fed to the sans-IO codec
//! in `pobox_proto::pop3::client`, queued writes, timeouts, and the STLS
//! upgrade.
//!
//! Every read and write has the account's timeout, and end-of-file is always
//! an error where a reply is due (mpop spins on EOF; this cannot). Dropping a
//! `Conn` closes the socket without QUIT, which is exactly what an error path
//! wants: the server then discards the session's DELEs (RFC 1939 §6).

use std::time::Duration;

use pobox_proto::pop3::client::{
    parse_reply, status_line_len, LineEnding, MultiLineDecoder, Progress, Reply, Request,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::FetchError;
use crate::tls::AccountTls;

/// Anything we can speak POP3 over: a TCP stream, or TLS on top of one.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

const READ_BUF: usize = 64 * 1024;
/// Largest buffered multi-line body (CAPA, UIDL, LIST listings). A UIDL
/// listing of 100 000 messages is about 5 MiB.
const MAX_LISTING: usize = 64 << 20;

pub(crate) struct Conn {
    io: Box<dyn Stream>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    timeout: Duration,
    /// Octets read from the network, for progress and benchmarks.
    pub(crate) bytes_in: u64,
}

impl Conn {
    pub(crate) async fn connect(host: &str, port: u16, timeout: Duration) -> Result<Conn, FetchError> {
        let server = format!("{host}:{port}");
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| FetchError::Timeout(timeout.as_secs()))?
            .map_err(|source| FetchError::Connect { server, source })?;
        // Commands are tiny and we wait for their replies; Nagle would only
        // add latency to every pipelined burst.
        let _ = tcp.set_nodelay(true);
        Ok(Conn::new(Box::new(tcp), timeout))
    }

    fn new(io: Box<dyn Stream>, timeout: Duration) -> Conn {
        Conn {
            io,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            out: Vec::new(),
            timeout,
            bytes_in: 0,
        }
    }

    /// Wraps the stream in TLS. For STLS the caller has read the `+OK`;
    /// anything already buffered after it arrived in plaintext and could be
    /// an attacker's injected reply, so it is refused rather than carried
    /// over into the TLS session (RFC 2595 §4; CVE-2011-0411 class).
    pub(crate) async fn upgrade(self, tls: &AccountTls, account: &crate::config::Account) -> Result<Conn, FetchError> {
        if self.start != self.end {
            return Err(FetchError::StlsInjection);
        }
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let timeout = self.timeout;
        let stream = tokio::time::timeout(timeout, connector.connect(tls.server_name.clone(), self.io))
            .await
            .map_err(|_| FetchError::Timeout(timeout.as_secs()))?
            .map_err(|e| FetchError::Tls(tls.handshake_error(account, e)))?;
        let mut conn = Conn::new(Box::new(stream), timeout);
        conn.bytes_in = self.bytes_in;
        Ok(conn)
    }

    /// Queues a command; nothing is sent until [`flush`](Self::flush).
    pub(crate) fn queue(&mut self, req: &Request<'_>) -> Result<(), FetchError> {
        tracing::trace!(command = ?req, "send");
        req.encode(&mut self.out)?;
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> Result<(), FetchError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let write = async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| FetchError::Timeout(self.timeout.as_secs()))?
            .map_err(FetchError::Network)?;
        self.out = out;
        self.out.clear();
        Ok(())
    }

    /// Sends one command and reads its status line.
    pub(crate) async fn command(&mut self, req: &Request<'_>) -> Result<Reply, FetchError> {
        self.queue(req)?;
        self.flush().await?;
        self.read_reply(false).await
    }

    /// Reads the next reply's first line.
    pub(crate) async fn read_reply(&mut self, allow_continue: bool) -> Result<Reply, FetchError> {
        loop {
            if let Some(n) = status_line_len(&self.buf[self.start..self.end])? {
                let line = &self.buf[self.start..self.start + n];
                let reply = parse_reply(line, allow_continue);
                self.start += n;
                tracing::trace!(reply = ?reply, "recv");
                return Ok(reply?);
            }
            self.fill().await?;
        }
    }

    /// Streams a multi-line body through `sink`, chunk by chunk, in constant
    /// memory. Returns only after the terminator; EOF first is
    /// [`ReplyError::Truncated`](pobox_proto::pop3::client::ReplyError::Truncated).
    pub(crate) async fn read_body(
        &mut self,
        ending: LineEnding,
        sink: &mut (dyn FnMut(&[u8]) -> Result<(), FetchError> + Send),
    ) -> Result<u64, FetchError> {
        let mut dec = MultiLineDecoder::new(ending);
        let mut chunk = Vec::with_capacity(READ_BUF);
        loop {
            let (used, progress) = dec.decode(&self.buf[self.start..self.end], &mut chunk)?;
            self.start += used;
            if !chunk.is_empty() {
                sink(&chunk)?;
                chunk.clear();
            }
            if progress == Progress::Done {
                return Ok(dec.produced());
            }
            match self.fill().await {
                Ok(()) => {}
                Err(FetchError::Closed) => {
                    dec.finish()?;
                    return Err(FetchError::Closed);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a small multi-line body (a listing) into memory, bounded.
    pub(crate) async fn read_listing(&mut self) -> Result<Vec<u8>, FetchError> {
        let mut body = Vec::new();
        self.read_body(LineEnding::Crlf, &mut |c| {
            if body.len() + c.len() > MAX_LISTING {
                return Err(FetchError::Server {
                    command: "listing".into(),
                    text: format!("listing larger than {MAX_LISTING} octets"),
                });
            }
            body.extend_from_slice(c);
            Ok(())
        })
        .await?;
        Ok(body)
    }

    async fn fill(&mut self) -> Result<(), FetchError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = tokio::time::timeout(self.timeout, self.io.read(&mut self.buf[self.end..]))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout.as_secs()))?
            .map_err(|e| match e.kind() {
                // rustls reports a TCP close without close_notify this way.
                std::io::ErrorKind::UnexpectedEof => FetchError::Closed,
                _ => FetchError::Network(e),
            })?;
        if n == 0 {
            return Err(FetchError::Closed);
        }
        self.end += n;
        self.bytes_in += n as u64;
        Ok(())
    }
}
