//! Entry points for tests that drive a connection without a socket
//! (feature `testkit`, enabled by this crate's own tests only).
//!
//! Why a feature and not a general "serve any stream" API: the server has
//! no use for it, and a public function that takes a caller-chosen peer
//! address would be one more way in to keep true. Behind the feature it
//! costs production builds nothing. Why it exists: over an in-memory pipe
//! the driver runs under tokio's paused clock, so timeouts, LOGIN-DELAY and
//! retention can be tested by moving virtual time instead of waiting.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::Services;
use crate::shutdown::Shutdown;

/// Serves one POP3 session over `stream` (one end of `tokio::io::duplex`)
/// as if a client had connected from `peer` on a cleartext POP3 listener,
/// and returns when the session ends.
///
/// It is the TCP path after `accept` and TCP-specific setup: the same
/// driver from the greeting to UPDATE and the release of the maildrop,
/// with the same timeouts, login checks, `pobox kick` and `shutdown`.
/// What differs: the stream is never TLS and STLS is not offered; the
/// listener's connection limits (`max_connections`,
/// `max_connections_per_ip`) are the accept loop's and do not apply.
pub async fn pop3_session(svc: Arc<Services>, stream: tokio::io::DuplexStream, peer: SocketAddr, shutdown: Shutdown) {
    crate::pop3::serve_memory(stream, peer, svc, shutdown).await;
}
