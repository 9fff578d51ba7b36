//! The connection side: the runtime that drives the async driver, the
//! pool, TLS (rustls on ring) and the password file.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use pobox_store::StoreError;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::lease::Held;
use crate::{PgConfig, db_error};

/// How long an operation waits for a connection before the store answers
/// with a temporary error (the database is down or the pool exhausted).
const POOL_WAIT: Duration = Duration::from_secs(10);
/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a store and its mailboxes share.
pub(crate) struct Db {
    rt: Option<tokio::runtime::Runtime>,
    pub(crate) pool: Pool,
    pub(crate) node: String,
    pub(crate) lease_secs: u64,
    /// The leases this node holds, for the renewer.
    pub(crate) held: Held,
    /// Set by tests to simulate a node cut off from the database.
    pub(crate) renewal_stopped: AtomicBool,
    /// Dropping it stops the renewer thread.
    pub(crate) stop_renewer: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl Drop for Db {
    fn drop(&mut self) {
        // Allowed anywhere, unlike dropping a runtime inside another one.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Idle time before TCP keepalive probes start.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(15);
/// How long written data may stay unacknowledged before the connection is
/// given up (Linux `TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// The longest any one statement may run (PostgreSQL `statement_timeout`);
/// bodies go in and out one chunk per statement, so this bounds a stuck
/// statement, not a large message.
const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest a statement waits for a row lock (`lock_timeout`): a lease
/// renewal or takeover that waits on a holder's fenced transaction fails
/// and is retried, instead of queueing behind it.
const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Db {
    pub(crate) fn open(cfg: &PgConfig) -> Result<Db, StoreError> {
        let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|e| {
            db_error(format!(
                "invalid database URL {}: {e}",
                redact_url(&cfg.url)
            ))
        })?;
        if let Some(file) = &cfg.password_file {
            let text = std::fs::read_to_string(file).map_err(|e| StoreError::Io {
                context: format!("reading the database password file {}", file.display()),
                source: e,
            })?;
            let password = text.lines().next().unwrap_or("");
            pg.password(password);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        pg.application_name(format!("pobox {}", cfg.node));
        // Nothing may hang for ever on a database that stopped answering:
        // a half-open connection after a failover is noticed by the kernel
        // (keepalives, and unacknowledged writes give up after
        // TCP_USER_TIMEOUT), a statement or a lock wait that runs away is
        // cancelled by the server. Without them one stuck statement (the
        // renewer's, say) could outlast every lease the node holds.
        pg.keepalives(true);
        pg.keepalives_idle(KEEPALIVE_IDLE);
        pg.tcp_user_timeout(TCP_USER_TIMEOUT);
        let limits = format!(
            "-c statement_timeout={} -c lock_timeout={}",
            STATEMENT_TIMEOUT.as_millis(),
            LOCK_TIMEOUT.as_millis()
        );
        let options = match pg.get_options() {
            // The admin's own options (from the URL) come last and win.
            Some(own) if !own.is_empty() => format!("{limits} {own}"),
            _ => limits,
        };
        pg.options(options);
        let tls = tls_connector(cfg)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pobox-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                context: "starting the PostgreSQL runtime".into(),
                source: e,
            })?;
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| db_error(format!("building the connection pool: {e}")))?;
        Ok(Db {
            rt: Some(rt),
            pool,
            node: cfg.node.clone(),
            lease_secs: cfg.lease_secs.max(1),
            held: Held::default(),
            renewal_stopped: AtomicBool::new(false),
            stop_renewer: std::sync::Mutex::new(None),
        })
    }

    /// Runs `f` to completion, blocking the calling thread, with the
    /// store's runtime as the current one (connections, timers and the
    /// connection tasks live there; its worker threads drive the sockets).
    ///
    /// The future is polled here and the thread parks between polls, so
    /// this works on any thread: the server's `spawn_blocking` threads (the
    /// intended callers, as for Maildir), the CLI's main thread, and even
    /// inside another runtime's task, where `Runtime::block_on` would panic
    /// (that would stall that runtime's worker, so callers must not).
    pub(crate) fn run<F: Future>(&self, f: F) -> F::Output {
        let rt = self
            .rt
            .as_ref()
            .expect("the runtime lives as long as the store");
        let _context = rt.enter();
        park_until_ready(f)
    }
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on this thread until it is ready, parking in between (a
/// spurious wake-up only costs one more poll).
fn park_until_ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

fn tls_connector(cfg: &PgConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    db_error(format!(
                        "reading the database CA file {}: {e}",
                        file.display()
                    ))
                })?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    db_error(format!(
                        "a certificate in {} is unusable: {e}",
                        file.display()
                    ))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| db_error(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The URL with any password replaced by `***`, for logs and errors.
pub(crate) fn redact_url(url: &str) -> String {
    // postgres://user:secret@host/db → postgres://user:***@host/db
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    // key=value form: password=secret
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://u:s3cret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("host=h password=s3cret user=u"),
            "host=h password=*** user=u"
        );
    }
}
