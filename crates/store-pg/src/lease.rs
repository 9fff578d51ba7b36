//! The maildrop lock across nodes: a lease row with a fencing token.
//!
//! * Taking it is one upsert that only succeeds when there is no row or
//!   the row's lease has expired by the **database's** clock (`now()`),
//!   and that bumps the token. No row back means another session holds
//!   it: [`StoreError::InUse`] at once, as RFC 1939 §8 asks.
//! * The row is never deleted (release only expires it), so the token
//!   only grows: a node whose lease was taken over holds a token that can
//!   never match again.
//! * Every change a holder makes under the lock (UPDATE's removals,
//!   expiry, restore, purge, release) runs in a transaction that first
//!   locks the lease row and checks the token ([`fence`]). The row lock
//!   keeps a takeover out until that transaction ends, so either the
//!   change commits while the holder still owns the maildrop, or nothing
//!   changes ([`StoreError::LeaseLost`]).
//! * One renewer thread per store extends every lease the node holds in
//!   one statement every `ttl / 3`; a lease it finds taken over is marked
//!   lost, and that session's commit will be refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pobox_store::StoreError;
use tokio_postgres::GenericClient;

use crate::PgError;
use crate::connect::Db;

/// One lease the node holds: maildrop, token, and whether it was lost.
type HeldLease = (i64, i64, Arc<AtomicBool>);

/// The leases this node holds, by handle.
#[derive(Default)]
pub(crate) struct Held {
    next: AtomicU64,
    map: Mutex<HashMap<u64, HeldLease>>,
}

impl Held {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HeldLease>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A lease this node holds on one maildrop; dropping it releases the
/// lease (best effort: if the database cannot be reached, expiry does it).
pub(crate) struct Lease {
    db: Arc<Db>,
    handle: u64,
    pub(crate) maildrop: i64,
    pub(crate) token: i64,
    lost: Arc<AtomicBool>,
    released: bool,
}

const ACQUIRE: &str = "INSERT INTO maildrop_lease AS l (maildrop_id, node, token, expires_at)
     VALUES ($1, $2, 1, now() + make_interval(secs => $3))
     ON CONFLICT (maildrop_id) DO UPDATE
        SET node = EXCLUDED.node, token = l.token + 1, expires_at = EXCLUDED.expires_at
      WHERE l.expires_at < now()
     RETURNING token";

const RELEASE: &str =
    "UPDATE maildrop_lease SET expires_at = '-infinity' WHERE maildrop_id = $1 AND token = $2";

/// Renews the leases the node still holds. A released lease keeps its
/// token (tokens only grow), so the renewer must not take a row that was
/// released after it listed the node's leases: without the `-infinity`
/// test, a renewal racing a QUIT would lock the maildrop again for a whole
/// lease time, and the user's next login would get `[IN-USE]`.
const RENEW: &str = "UPDATE maildrop_lease AS l SET expires_at = now() + make_interval(secs => $3)
     FROM unnest($1::bigint[], $2::bigint[]) AS h(id, token)
     WHERE l.maildrop_id = h.id AND l.token = h.token AND l.expires_at <> '-infinity'
     RETURNING l.maildrop_id, l.token";

impl Lease {
    /// Takes the lease on `maildrop` without waiting.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`] if another session (on any node) holds it;
    /// database errors.
    pub(crate) fn acquire(db: &Arc<Db>, maildrop: i64) -> Result<Lease, PgError> {
        let secs = db.lease_secs as f64;
        let row = db.run(async {
            let client = db.pool.get().await?;
            Ok::<_, PgError>(
                client
                    .query_opt(ACQUIRE, &[&maildrop, &db.node, &secs])
                    .await?,
            )
        })?;
        let Some(row) = row else {
            return Err(StoreError::InUse.into());
        };
        let token: i64 = row.get(0);
        let handle = db.held.next.fetch_add(1, Ordering::Relaxed);
        let lost = Arc::new(AtomicBool::new(false));
        db.held
            .map()
            .insert(handle, (maildrop, token, Arc::clone(&lost)));
        Ok(Lease {
            db: Arc::clone(db),
            handle,
            maildrop,
            token,
            lost,
            released: false,
        })
    }

    /// True once the renewer found the lease taken over.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Inside a transaction: locks the lease row and checks the token is
    /// still this holder's. Call first in every fenced transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseLost`] if another holder took the maildrop.
    pub(crate) async fn fence(&self, tx: &impl GenericClient) -> Result<(), PgError> {
        let row = tx
            .query_opt(
                "SELECT 1 FROM maildrop_lease WHERE maildrop_id = $1 AND token = $2 FOR UPDATE",
                &[&self.maildrop, &self.token],
            )
            .await?;
        if row.is_none() {
            self.lost.store(true, Ordering::SeqCst);
            return Err(StoreError::LeaseLost.into());
        }
        Ok(())
    }

    /// Inside a fenced transaction: releases the lease when it commits.
    pub(crate) async fn release_in(&self, tx: &impl GenericClient) -> Result<(), PgError> {
        tx.execute(RELEASE, &[&self.maildrop, &self.token]).await?;
        Ok(())
    }

    /// Marks the lease released (after a transaction that released it
    /// committed), so dropping it does nothing more.
    pub(crate) fn forget(&mut self) {
        self.released = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.db.held.map().remove(&self.handle);
        if self.released {
            return;
        }
        let (maildrop, token) = (self.maildrop, self.token);
        let db = &self.db;
        let done = db.run(async {
            let client = db.pool.get().await?;
            client.execute(RELEASE, &[&maildrop, &token]).await?;
            Ok::<_, PgError>(())
        });
        if let Err(e) = done {
            tracing::warn!(maildrop, error = %e, "cannot release a maildrop lease; it expires by itself");
        }
    }
}

/// The node's lease renewer: one thread per store.
pub(crate) struct Renewer;

impl Renewer {
    /// Starts the thread; it ends when the store (every `Arc<Db>`) is gone.
    pub(crate) fn start(db: &Arc<Db>) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        *db.stop_renewer.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let weak: Weak<Db> = Arc::downgrade(db);
        let period =
            Duration::from_millis(db.lease_secs * 1000 / 3).max(Duration::from_millis(100));
        let spawned = std::thread::Builder::new()
            .name("pobox-pg-leases".into())
            .spawn(move || {
                // Disconnected (the store is gone) ends the loop; a timeout is a tick.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(period)
                {
                    let Some(db) = weak.upgrade() else { return };
                    if !db.renewal_stopped.load(Ordering::SeqCst) {
                        renew(&db);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the lease renewer; sessions longer than the lease lose it");
        }
    }
}

/// Renews every lease this node holds in one statement and marks those
/// that were taken over.
fn renew(db: &Db) {
    let held: Vec<HeldLease> = db
        .held
        .map()
        .values()
        .filter(|(_, _, lost)| !lost.load(Ordering::SeqCst))
        .cloned()
        .collect();
    if held.is_empty() {
        return;
    }
    let ids: Vec<i64> = held.iter().map(|h| h.0).collect();
    let tokens: Vec<i64> = held.iter().map(|h| h.1).collect();
    let secs = db.lease_secs as f64;
    let renewed = db.run(async {
        let client = db.pool.get().await?;
        Ok::<_, PgError>(client.query(RENEW, &[&ids, &tokens, &secs]).await?)
    });
    match renewed {
        Ok(rows) => {
            let kept: std::collections::HashSet<(i64, i64)> = rows
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                .collect();
            for (maildrop, token, lost) in &held {
                if !kept.contains(&(*maildrop, *token)) {
                    tracing::warn!(maildrop, token, "maildrop lease lost to another session");
                    lost.store(true, Ordering::SeqCst);
                }
            }
        }
        // Not lost yet: the next tick tries again, and commit checks the
        // token whatever happens here.
        Err(e) => tracing::warn!(error = %e, leases = held.len(), "cannot renew maildrop leases"),
    }
}
