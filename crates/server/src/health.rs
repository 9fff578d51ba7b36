//! The health endpoint for load balancers: `GET /health` answers `200` while
//! the node accepts connections and `503` from the moment a shutdown starts
//! draining, so the balancer takes the node out before its listeners close
//! (HAProxy: `option httpchk GET /health`, `http-check expect status 200`).
//! With `health_drain_delay` (`[health] drain_delay_secs`) the listeners go
//! on accepting for that long after the 503 starts, so connections the
//! balancer sends before its next check are served, not refused.
//!
//! What it checks, and why no more: the process is up, its runtime answers,
//! it is not draining, and its store answers [`Mailstore::check`]. For
//! Maildir that check is free (`Ok`): the store is the local file system
//! this process already uses for every session (a failing disk shows up
//! there, in the logs and metrics). For PostgreSQL it is `SELECT 1` through
//! the pool with a 2 s timeout, so a database every node has lost takes
//! every node out at once (`503 store unavailable`). It does not touch the
//! user database.
//!
//! A probe never waits for the store and never blocks the runtime: the
//! answer uses the last result, and a probe that finds it older than
//! [`CHECK_EVERY`] starts one new check on the blocking pool (one at a
//! time), so a storm of probes from several balancers costs at most one
//! query per interval, and a failure shows within about that interval plus
//! the check's own timeout.
//!
//! The answer is a small `text/plain` body (`ok` or `draining`); it carries
//! no counts or addresses, as the endpoint has no authentication.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pobox_store::Mailstore;

use crate::http::{Handler, Limits, Request, Response};

/// How old the last store check may be before a probe starts another.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Bounds: a balancer's probe is one small request without a body.
pub const LIMITS: Limits =
    Limits { max_head: 4 * 1024, max_body: 0, timeout: Duration::from_secs(5), max_connections: 16 };

/// The node's state as the endpoint reports it; shared by every
/// configuration generation.
#[derive(Default)]
pub struct Health {
    draining: AtomicBool,
    /// The store to check; none in unit tests of the draining state.
    store: Option<Arc<dyn Mailstore>>,
    /// The last store check.
    checked: Mutex<StoreState>,
}

/// What the last store check found, and whether one is running.
#[derive(Debug, Default)]
struct StoreState {
    /// When the last check finished; none before the first.
    at: Option<Instant>,
    /// Its result; true until a check says otherwise (the store was just
    /// opened when the node started).
    failed: bool,
    /// A check is running on the blocking pool.
    running: bool,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("draining", &self.draining())
            .field("store_checked", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// The endpoint's state for a node serving `store`.
    #[must_use]
    pub fn new(store: Arc<dyn Mailstore>) -> Health {
        Health { store: Some(store), ..Health::default() }
    }

    /// From now on the endpoint answers `503`.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown has started.
    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether the last store check failed. Starts a new check (at most one
    /// at a time, on the blocking pool) when the last one is older than
    /// [`CHECK_EVERY`]; never waits for it.
    fn store_unavailable(self: &Arc<Self>) -> bool {
        let Some(store) = &self.store else { return false };
        let mut state = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let stale = state.at.is_none_or(|at| at.elapsed() >= CHECK_EVERY);
        if stale && !state.running && let Ok(rt) = tokio::runtime::Handle::try_current() {
            state.running = true;
            let (health, store) = (self.clone(), store.clone());
            rt.spawn_blocking(move || {
                let result = store.check();
                let mut state = health.checked.lock().unwrap_or_else(|p| p.into_inner());
                match &result {
                    Err(e) if !state.failed => tracing::warn!(error = %e, "health: the store is unavailable"),
                    Ok(()) if state.failed => tracing::info!("health: the store answers again"),
                    _ => {}
                }
                state.failed = result.is_err();
                state.at = Some(Instant::now());
                state.running = false;
            });
        }
        state.failed
    }

    /// The answer to one request (the pure part of the endpoint).
    #[must_use]
    pub fn respond(self: &Arc<Self>, request: &Request) -> Response {
        if request.method != "GET" && request.method != "HEAD" {
            return Response::text(405, "Method Not Allowed");
        }
        if request.path != "/health" {
            return Response::text(404, "Not Found");
        }
        if self.draining() {
            Response::text(503, "draining")
        } else if self.store_unavailable() {
            Response::text(503, "store unavailable")
        } else {
            Response::text(200, "ok")
        }
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

    fn answer(health: &Arc<Health>, head: &str) -> String {
        let request = Request::parse_head(head.as_bytes()).unwrap();
        String::from_utf8(health.respond(&request).to_bytes(request.method == "HEAD")).unwrap()
    }

    #[test]
    fn ok_until_draining_then_503() {
        let h = Arc::new(Health::default());
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
