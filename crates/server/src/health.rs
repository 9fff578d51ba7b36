//! The health endpoint for load balancers: `GET /health` answers `200` while
//! the node accepts connections and `503` from the moment a shutdown starts
//! draining, so the balancer takes the node out before its listeners close
//! (HAProxy: `option httpchk GET /health`, `http-check expect status 200`).
//! With `health_drain_delay` (`[health] drain_delay_secs`) the listeners go
//! on accepting for that long after the 503 starts, so connections the
//! balancer sends before its next check are served, not refused.
//!
//! What it checks, and why no more: the process is up, its runtime answers,
//! and it is not draining. It does not touch the store or the user
//! database: a Maildir store is the local file system this process already
//! uses for every session (a failing disk shows up there, in the logs and
//! metrics), and a probe every second or two from each balancer should
//! cost nothing. A networked store (PostgreSQL) would add its own check
//! here, where a failing database should take every node out at once.
//!
//! The answer is a small `text/plain` body (`ok` or `draining`); it carries
//! no counts or addresses, as the endpoint has no authentication.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::http::{Handler, Limits, Request, Response};

/// Bounds: a balancer's probe is one small request without a body.
pub const LIMITS: Limits =
    Limits { max_head: 4 * 1024, max_body: 0, timeout: Duration::from_secs(5), max_connections: 16 };

/// The node's state as the endpoint reports it; shared by every
/// configuration generation.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
}

impl Health {
    /// From now on the endpoint answers `503`.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown has started.
    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The answer to one request (the pure part of the endpoint).
    #[must_use]
    pub fn respond(&self, request: &Request) -> Response {
        if request.method != "GET" && request.method != "HEAD" {
            return Response::text(405, "Method Not Allowed");
        }
        if request.path != "/health" {
            return Response::text(404, "Not Found");
        }
        if self.draining() { Response::text(503, "draining") } else { Response::text(200, "ok") }
    }

    /// The endpoint's handler, for [`crate::http::serve`].
    #[must_use]
    pub fn handler(self: &Arc<Self>) -> Handler {
        let health = self.clone();
        Arc::new(move |r: &Request| health.respond(r))
    }
}

/// Serves `GET /health` on `listener` until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, health: Arc<Health>) {
    crate::http::serve(listener, None, LIMITS, "health", health.handler()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(health: &Health, head: &str) -> String {
        let request = Request::parse_head(head.as_bytes()).unwrap();
        String::from_utf8(health.respond(&request).to_bytes(request.method == "HEAD")).unwrap()
    }

    #[test]
    fn ok_until_draining_then_503() {
        let h = Health::default();
        let ok = answer(&h, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nok\n"), "{ok}");
        assert!(answer(&h, "HEAD /health HTTP/1.0\r\n\r\n").ends_with("\r\n\r\n"));
        assert!(answer(&h, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(answer(&h, "POST /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        h.set_draining();
        let down = answer(&h, "GET /health HTTP/1.1\r\n\r\n");
        assert!(down.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && down.ends_with("draining\n"), "{down}");
    }
}
