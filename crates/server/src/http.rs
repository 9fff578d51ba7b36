//! The one small HTTP/1.1 server behind pobox's web endpoints: the
//! OpenMetrics scrape (`metrics.rs`) and client autoconfiguration
//! (`autoconfig.rs`).
//!
//! What it does: accept (plain or TLS), read one bounded request (head, and
//! a body only when `Content-Length` says so and it fits), hand it to a
//! pure handler, write the answer and close (`Connection: close`). A whole
//! exchange, TLS handshake included, must finish within a deadline, and at
//! most `max_connections` are served at once (the rest wait in the listen
//! queue).
//!
//! What it does not do: keep-alive, chunked bodies (`411`), pipelining,
//! HTTP/2, compression, or logging request targets (a query string can
//! carry an e-mail address).
//!
//! Why not hyper: every endpoint answers one small document and closes,
//! and the bounds that matter (head and body size, one deadline for the
//! whole exchange, a connection cap) are a few lines here; hyper's server
//! side would add hyper-util and its own limits to configure to the same
//! effect.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and headers).
    pub max_head: usize,
    /// Largest request body; `0` refuses any body (`413`).
    pub max_body: usize,
    /// Time for the whole exchange: TLS handshake, request, response.
    pub timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// One parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `GET`, `HEAD`, `POST`, ...
    pub method: String,
    /// The path, without the query (not percent-decoded).
    pub path: String,
    /// The query string after `?` (not decoded), empty if none.
    pub query: String,
    /// Header lines as (name, value), in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (case-insensitive), trimmed.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The first query parameter called `name` (case-insensitive, as
    /// clients differ: Thunderbird sends `emailaddress`, Outlook `Email`),
    /// form-decoded.
    #[must_use]
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.into_owned())
    }

    /// Parses a request head (everything up to and including the blank
    /// line); the body is added by the caller.
    ///
    /// # Errors
    /// `400` for a request line that is not `METHOD TARGET HTTP/1.x`.
    pub fn parse_head(head: &[u8]) -> Result<Request, Response> {
        let text = std::str::from_utf8(head).map_err(|_| Response::text(400, "Bad Request"))?;
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let line = lines.next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Response::text(400, "Bad Request"));
        };
        if method.is_empty() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
            return Err(Response::text(400, "Bad Request"));
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            headers,
            body: Vec::new(),
        })
    }
}

/// One response; always sent with `Content-Length` and `Connection: close`.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type` value.
    pub content_type: String,
    /// More header lines (name, value).
    pub headers: Vec<(&'static str, String)>,
    /// The body (not sent for `HEAD`).
    pub body: Vec<u8>,
}

impl Response {
    /// A `200` with `content_type`.
    #[must_use]
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response { status: 200, content_type: content_type.to_string(), headers: Vec::new(), body: body.into() }
    }

    /// A status with its reason phrase as a `text/plain` body.
    #[must_use]
    pub fn text(status: u16, text: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            headers: Vec::new(),
            body: format!("{text}\n").into_bytes(),
        }
    }

    /// Adds a header line.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }

    /// The bytes on the wire; `head_only` for `HEAD` (same headers, no body).
    #[must_use]
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A request handler: pure, answers every request.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Binds a listener with `std::net`, before the runtime starts and
/// privileges are dropped (like the mail listeners).
///
/// # Errors
/// The OS error, with the address and the config key to change.
pub fn bind_std(addr: std::net::SocketAddr, key: &str) -> Result<std::net::TcpListener, String> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on {addr} ({key}): {e} (choose another address for `{key}`)"))?;
    l.set_nonblocking(true).map_err(|e| format!("{key} listener {addr}: {e}"))?;
    Ok(l)
}

/// Serves `listener` until the task is dropped; `tls` makes it HTTPS.
/// `name` names the endpoint in log lines.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<crate::Tls>,
    limits: Limits,
    name: &'static str,
    handler: Handler,
) {
    // Whoever bound it (ACME hands over a blocking socket), tokio needs it
    // non-blocking.
    let listener = match listener.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(listener)) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, endpoint = name, "HTTP listener unusable; not served");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(error = %e, endpoint = name, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, handler) = (tls.clone(), handler.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let exchange = async {
                match &tls {
                    None => exchange(stream, &limits, &handler).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok(s) => exchange(s, &limits, &handler).await,
                        Err(e) => {
                            debug!(%peer, endpoint = name, error = %e, "HTTPS handshake failed")
                        }
                    },
                }
            };
            if tokio::time::timeout(limits.timeout, exchange).await.is_err() {
                debug!(%peer, endpoint = name, "HTTP request timed out");
            }
        });
    }
}

/// Reads one request and writes one response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, limits: &Limits, handler: &Handler) {
    let response = match read_request(&mut stream, limits).await {
        Ok(Some(request)) => {
            let head_only = request.method == "HEAD";
            handler(&request).to_bytes(head_only)
        }
        Ok(None) => return,
        Err(refusal) => refusal.to_bytes(false),
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// `Ok(None)`: the peer went away before a whole request.
async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    limits: &Limits,
) -> Result<Option<Request>, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() >= limits.max_head {
            return Err(Response::text(431, "Request Header Fields Too Large"));
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if head_end > limits.max_head {
        return Err(Response::text(431, "Request Header Fields Too Large"));
    }
    let mut request = Request::parse_head(&buf[..head_end])?;
    if request.header("transfer-encoding").is_some() {
        return Err(Response::text(411, "Length Required"));
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| Response::text(400, "Bad Request"))?,
    };
    if length > limits.max_body {
        return Err(Response::text(413, "Content Too Large"));
    }
    let mut body = buf.split_off(head_end);
    // A client that asked to be told before it sends the body (.NET and
    // curl do for larger POSTs) would otherwise wait for its own timeout.
    if body.len() < length && request.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    }
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    request.body = body;
    Ok(Some(request))
}

/// Where the head ends (after `\r\n\r\n`, or `\n\n` from a sloppy client).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_head: 256, max_body: 16, timeout: Duration::from_secs(5), max_connections: 1 };

    async fn read(input: &[u8]) -> Result<Option<Request>, Response> {
        read_replying(input).await.0
    }

    /// Reads from `input`; also returns what the server wrote meanwhile.
    async fn read_replying(input: &[u8]) -> (Result<Option<Request>, Response>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let result = read_request(&mut server, &LIMITS).await;
        drop(server);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.unwrap();
        (result, written)
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered_before_the_body() {
        let (r, written) =
            read_replying(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab").await;
        // The body was already there; nothing to ask for.
        assert_eq!(r.unwrap().unwrap().body, b"ab");
        assert!(written.is_empty());
        let (r, written) = read_replying(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n").await;
        assert!(r.unwrap().is_none(), "the peer closed without a body");
        assert_eq!(written, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[tokio::test]
    async fn a_request_is_read_with_its_bounded_body() {
        let r =
            read(b"POST /a?Email=x%40y.org&b=1 HTTP/1.1\r\nContent-Length: 5\r\nHost: h\r\n\r\nhello and more").await;
        let r = r.unwrap().unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/a"));
        assert_eq!(r.query_param("email").as_deref(), Some("x@y.org"));
        assert_eq!(r.header("HOST"), Some("h"));
        assert_eq!(r.body, b"hello");
    }

    #[tokio::test]
    async fn oversized_heads_bodies_and_chunked_bodies_are_refused() {
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
        assert_eq!(read(long.as_bytes()).await.unwrap_err().status, 431);
        assert_eq!(read(b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n").await.unwrap_err().status, 413);
        assert_eq!(read(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap_err().status, 411);
        assert_eq!(read(b"GET\r\n\r\n").await.unwrap_err().status, 400);
        assert_eq!(read(b"GET http://x/ HTTP/1.1\r\n\r\n").await.unwrap_err().status, 400);
        // The peer left mid-body: nothing to answer.
        assert!(read(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc").await.unwrap().is_none());
    }

    #[test]
    fn head_answers_carry_the_length_but_no_body() {
        let r = Response::ok("text/plain", "abc");
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head.contains("Content-Length: 3\r\n") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(String::from_utf8(r.to_bytes(false)).unwrap().ends_with("\r\n\r\nabc"));
    }
}
