//! [`Mailstore`] for [`PgStore`]: delivery (streamed into chunks, one
//! transaction, quota under a row lock), open (lease, expiry, snapshot)
//! and expiry.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use pobox_store::quota::{Quota, QuotaConfig, Usage};
use pobox_store::retention::{self, Policy, RetentionConfig};
use pobox_store::{
    Authenticated,
    Delivered, ExpireReport, ImportOutcome, Mailbox, Mailstore, MessageInfo, MessageKey,
    StoreError, Uidl,
};
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use crate::body::{CHUNK_SIZE, Normaliser};
use crate::connect::Db;
use crate::lease::Lease;
use crate::mailbox::{PgMailbox, Snapshot};
use crate::{PgError, PgStore};

/// The names Maildir refuses too (so every backend accepts the same users).
pub(crate) fn check_user(user: &str) -> Result<(), StoreError> {
    if user.is_empty() || user.starts_with('.') || user.contains(['/', '\0']) {
        return Err(StoreError::NoSuchUser(user.to_owned()));
    }
    Ok(())
}

/// The key of message row `id`.
pub(crate) fn key_of(id: i64) -> MessageKey {
    MessageKey::new(id.to_string())
}

/// The row id in a key this backend made, if it is one.
pub(crate) fn id_of(key: &MessageKey) -> Option<i64> {
    std::str::from_utf8(key.as_bytes()).ok()?.parse().ok()
}

/// `user`'s maildrop id; with `create`, made on first use (as Maildir
/// creates the directory). The row is never deleted, so callers may keep
/// the id.
pub(crate) async fn maildrop_id(
    client: &impl GenericClient,
    user: &str,
    create: bool,
) -> Result<Option<i64>, PgError> {
    const FIND: &str = "SELECT id FROM maildrops WHERE name = $1";
    if let Some(row) = client.query_opt(FIND, &[&user]).await? {
        return Ok(Some(row.get(0)));
    }
    if !create {
        return Ok(None);
    }
    client
        .execute(
            "INSERT INTO maildrops (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&user],
        )
        .await?;
    // A new statement sees a row another node inserted meanwhile.
    Ok(Some(client.query_one(FIND, &[&user]).await?.get(0)))
}

/// The live messages of a maildrop, in snapshot order.
pub(crate) async fn inbox(
    client: &impl GenericClient,
    maildrop: i64,
) -> Result<Vec<Snapshot>, PgError> {
    let rows = client
        .query(
            "SELECT id, uidl, size, received_at, retrieved_at, chunks FROM messages
              WHERE maildrop_id = $1 AND folder IS NULL AND removed_at IS NULL
              ORDER BY received_at, id",
            &[&maildrop],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let uidl: String = r.get(1);
            let uidl = Uidl::try_from(uidl)
                .map_err(|e| crate::db_error(format!("message {id} has an invalid UIDL: {e}")))?;
            Ok(Snapshot {
                id,
                chunks: r.get(5),
                info: MessageInfo {
                    uidl,
                    size: r.get::<_, i64>(2) as u64,
                    key: key_of(id),
                    received: r.get(3),
                    retrieved: r.get(4),
                },
            })
        })
        .collect()
}

/// The maildrop's usage: its live messages (folders and the restore area
/// do not count, as on Maildir).
pub(crate) async fn usage_of(
    client: &impl GenericClient,
    maildrop: i64,
    except: i64,
) -> Result<Usage, PgError> {
    let row = client
        .query_one(
            "SELECT coalesce(sum(size), 0)::bigint, count(*) FROM messages
              WHERE maildrop_id = $1 AND folder IS NULL AND removed_at IS NULL AND id <> $2",
            &[&maildrop, &except],
        )
        .await?;
    Ok(Usage {
        bytes: row.get::<_, i64>(0) as u64,
        messages: row.get::<_, i64>(1) as u64,
    })
}

/// How a message enters the store.
pub(crate) struct Intake<'a> {
    pub(crate) user: &'a str,
    pub(crate) folder: Option<&'a str>,
    /// A given UIDL (import) or `None` for a new one.
    pub(crate) uidl: Option<&'a Uidl>,
    pub(crate) received: SystemTime,
    /// The size limit and whether exceeding it is the quota's doing.
    pub(crate) limit: Option<(u64, bool)>,
    /// The quota to check under the maildrop's row lock, if any.
    pub(crate) quota: Option<Quota>,
    /// The lease to check before commit (import).
    pub(crate) lease: Option<&'a Lease>,
}

/// Stores one message in one transaction: a row, its chunks as they are
/// read, the quota check under a row lock, COMMIT. Nothing is visible, and
/// nothing acknowledged, before the commit; any error rolls it all back.
pub(crate) fn store_message(
    db: &Db,
    maildrop: i64,
    intake: Intake<'_>,
    message: &mut dyn io::Read,
) -> Result<ImportOutcome, StoreError> {
    let mut client = db.run(db.pool.get()).map_err(PgError::from)?;
    let tx = db.run(client.transaction()).map_err(PgError::from)?;
    let suffix = format!("{:08x}", rand::random::<u32>());
    let uidl = intake.uidl.map(Uidl::as_str);
    let inserted = db.run(tx.query_one(
        "INSERT INTO messages (id, maildrop_id, uidl, size, stored_bytes, chunks, received_at, folder)
         OVERRIDING SYSTEM VALUE
         SELECT n.id, $1, coalesce($2, 'P' || lpad(to_hex(n.id), 12, '0') || $3), 0, 0, 0, $4, $5
           FROM (SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id) AS n
         RETURNING id, uidl",
        &[&maildrop, &uidl, &suffix, &intake.received, &intake.folder],
    ));
    let row = match inserted {
        Ok(row) => row,
        Err(e) => {
            let e = PgError::from(e);
            if intake.uidl.is_some() && e.is_unique_violation() {
                return Ok(ImportOutcome::AlreadyPresent);
            }
            return Err(e.into());
        }
    };
    let id: i64 = row.get(0);
    let uidl =
        Uidl::try_from(row.get::<_, String>(1)).map_err(|e| crate::db_error(e.to_string()))?;

    let mut norm = Normaliser::default();
    let mut raw = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(CHUNK_SIZE + raw.len() + 1);
    let mut seq: i32 = 0;
    let put = |seq: i32, data: &[u8]| -> Result<(), StoreError> {
        let params: [&(dyn ToSql + Sync); 3] = [&id, &seq, &data];
        db.run(tx.execute(
            "INSERT INTO message_chunks (message_id, seq, data) VALUES ($1, $2, $3)",
            &params,
        ))
        .map_err(PgError::from)?;
        Ok(())
    };
    let over = |wire: u64| -> Option<StoreError> {
        let (limit, quota) = intake.limit?;
        (wire > limit).then(|| match quota {
            true => StoreError::OverQuota(format!("{limit} octets free")),
            false => StoreError::TooLarge { limit },
        })
    };
    loop {
        let n = match message.read(&mut raw) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(StoreError::Io {
                    context: "reading the message".into(),
                    source: e,
                });
            }
        };
        norm.feed(&raw[..n], &mut out);
        if let Some(e) = over(norm.wire) {
            return Err(e);
        }
        while out.len() >= CHUNK_SIZE {
            put(seq, &out[..CHUNK_SIZE])?;
            out.drain(..CHUNK_SIZE);
            seq += 1;
        }
    }
    norm.finish(&mut out);
    if let Some(e) = over(norm.wire) {
        return Err(e);
    }
    if !out.is_empty() {
        put(seq, &out)?;
        seq += 1;
    }
    let size = norm.wire;
    db.run(async {
        if let Some(quota) = intake.quota {
            // Serialises this user's deliveries from every node for the
            // check: the sum below sees every committed delivery. NO KEY
            // UPDATE, not UPDATE: the message row's foreign key already
            // holds KEY SHARE on this row, and two deliveries upgrading
            // that to UPDATE would deadlock each other.
            tx.execute(
                "SELECT 1 FROM maildrops WHERE id = $1 FOR NO KEY UPDATE",
                &[&maildrop],
            )
            .await?;
            let usage = usage_of(&*tx, maildrop, id).await?;
            if quota.exceeded_by(usage, size) {
                return Err(StoreError::OverQuota(format!(
                    "{} messages, {} octets in use",
                    usage.messages, usage.bytes
                ))
                .into());
            }
        }
        if let Some(lease) = intake.lease {
            lease.fence(&*tx).await?;
        }
        let (size, stored) = (size as i64, norm.stored as i64);
        tx.execute(
            "UPDATE messages SET size = $2, stored_bytes = $3, chunks = $4 WHERE id = $1",
            &[&id, &size, &stored, &seq],
        )
        .await?;
        Ok::<_, PgError>(())
    })?;
    db.run(tx.commit()).map_err(PgError::from)?;
    let location = match intake.folder {
        Some(folder) => format!("postgres:{}/{folder}/{id}", intake.user),
        None => format!("postgres:{}/{id}", intake.user),
    };
    Ok(ImportOutcome::Imported(Delivered {
        uidl,
        size,
        location,
    }))
}

/// Expiry of a maildrop whose lease `lease` holds, at `now`, in one
/// fenced transaction: what Maildir's expiry does, with the same policy
/// functions.
pub(crate) async fn expire_locked(
    db: &Db,
    lease: &Lease,
    policy: &Policy,
    now: SystemTime,
    dry_run: bool,
) -> Result<ExpireReport, PgError> {
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await?;
    lease.fence(&*tx).await?;
    let mut report = ExpireReport::default();
    let mut expired: Vec<i64> = Vec::new();
    for m in inbox(&*tx, lease.maildrop).await? {
        if let Some(reason) = retention::expiry(now, policy, m.info.received, m.info.retrieved) {
            report.expired.push((m.info.uidl.into_string(), reason));
            expired.push(m.id);
        }
    }
    let removed = tx
        .query(
            "SELECT id, removed_at FROM messages WHERE maildrop_id = $1 AND removed_at IS NOT NULL",
            &[&lease.maildrop],
        )
        .await?;
    let purge: Vec<i64> = removed
        .iter()
        .filter(|r| retention::purge_due(now, policy, r.get(1)))
        .map(|r| r.get(0))
        .collect();
    report.purged = purge.len();
    if dry_run {
        tx.rollback().await?;
        return Ok(report);
    }
    remove(&*tx, lease.maildrop, &expired, policy.restore_days > 0, now).await?;
    tx.execute(
        "DELETE FROM messages WHERE id = ANY($1) AND maildrop_id = $2",
        &[&purge, &lease.maildrop],
    )
    .await?;
    tx.commit().await?;
    Ok(report)
}

/// Removes live messages `ids` (into the restore area when `aside`);
/// returns how many it moved or deleted.
pub(crate) async fn remove(
    tx: &impl GenericClient,
    maildrop: i64,
    ids: &[i64],
    aside: bool,
    now: SystemTime,
) -> Result<u64, PgError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let n = if aside {
        tx.execute(
            "UPDATE messages SET removed_at = $3 WHERE id = ANY($1) AND maildrop_id = $2
                AND folder IS NULL AND removed_at IS NULL",
            &[&ids, &maildrop, &now],
        )
        .await?
    } else {
        tx.execute(
            "DELETE FROM messages WHERE id = ANY($1) AND maildrop_id = $2 AND folder IS NULL AND removed_at IS NULL",
            &[&ids, &maildrop],
        )
        .await?
    };
    Ok(n)
}

impl PgStore {
    pub(crate) fn maildrop(&self, user: &str, create: bool) -> Result<Option<i64>, StoreError> {
        check_user(user)?;
        let db = &self.db;
        Ok(db.run(async {
            let client = db.pool.get().await?;
            maildrop_id(&**client, user, create).await
        })?)
    }

    fn usage_now(&self, user: &str) -> Result<Usage, StoreError> {
        let Some(maildrop) = self.maildrop(user, false)? else {
            return Ok(Usage::default());
        };
        let db = &self.db;
        Ok(db.run(async {
            let client = db.pool.get().await?;
            usage_of(&**client, maildrop, 0).await
        })?)
    }

    pub(crate) fn usage_for(&self, user: &str) -> Result<Usage, StoreError> {
        self.usage_now(user)
    }

    fn deliver_into(
        &self,
        user: &str,
        folder: Option<&str>,
        message: &mut dyn io::Read,
    ) -> Result<Delivered, StoreError> {
        check_user(user)?;
        if let Some(folder) = folder {
            pobox_store::check_folder_name(folder)?;
        }
        let policies = self.policies.load_full();
        let max_size = policies.max_size;
        let quota = policies.quota.for_user(user);
        let maildrop = self.maildrop(user, true)?.expect("created");
        // The quota counts the maildrop only, as on Maildir.
        let quota = (folder.is_none() && !quota.is_unlimited()).then_some(quota);
        let mut limit = max_size.map(|m| (m, false));
        if let Some(quota) = quota {
            // An early answer without streaming the message; the binding
            // check happens under the row lock before commit.
            let usage = self.usage_now(user)?;
            if quota.exceeded_by(usage, 0) {
                return Err(StoreError::OverQuota(format!(
                    "{} messages, {} octets in use",
                    usage.messages, usage.bytes
                )));
            }
            if let Some(room) = quota.bytes.map(|b| b.saturating_sub(usage.bytes))
                && max_size.is_none_or(|m| room < m)
            {
                limit = Some((room, true));
            }
        }
        let intake = Intake {
            user,
            folder,
            uidl: None,
            received: SystemTime::now(),
            limit,
            quota,
            lease: None,
        };
        match store_message(&self.db, maildrop, intake, message)? {
            ImportOutcome::Imported(d) => Ok(d),
            ImportOutcome::AlreadyPresent => Err(crate::db_error(
                "a generated UIDL clashed; try again".into(),
            )),
        }
    }
}

/// How long the health check waits for a connection and `SELECT 1`: short,
/// as a balancer's probe should learn soon that the database is gone.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Mailstore for PgStore {
    fn check(&self) -> Result<(), StoreError> {
        let db = &self.db;
        // Every connection at work means the database is answering them;
        // a probe queued behind them would fail for a busy node, and a
        // balancer would then take every node out at once under load.
        let pool = db.pool.status();
        if pool.size >= pool.max_size && pool.available == 0 {
            return Ok(());
        }
        // The timer is made inside the future, so on the store's runtime
        // (`run` enters it before the first poll), whatever thread calls.
        let answered = db.run(async {
            tokio::time::timeout(CHECK_TIMEOUT, async {
                let client = db.pool.get().await?;
                client.simple_query("SELECT 1").await?;
                Ok::<(), PgError>(())
            })
            .await
        });
        match answered {
            Ok(result) => Ok(result?),
            Err(_) => Err(crate::db_error(format!(
                "no answer to SELECT 1 within {} s",
                CHECK_TIMEOUT.as_secs()
            ))),
        }
    }

    fn open(&self, login: &Authenticated) -> Result<Box<dyn Mailbox>, StoreError> {
        let user = login.user();
        let policy = self.policies.load().retention.for_user(user);
        let maildrop = self.maildrop(user, true)?.expect("created");
        let lease = Lease::acquire(&self.db, maildrop)?;
        let db = &self.db;
        let expired = if policy.can_expire() {
            db.run(expire_locked(db, &lease, &policy, SystemTime::now(), false))
                .unwrap_or_else(|e| {
                    tracing::warn!(%user, error = %e, "expiry at login failed");
                    ExpireReport::default()
                })
        } else {
            ExpireReport::default()
        };
        let messages = db.run(async {
            let client = db.pool.get().await?;
            inbox(&**client, maildrop).await
        })?;
        Ok(Box::new(PgMailbox::new(
            Arc::clone(&self.db),
            user,
            lease,
            messages,
            policy,
            expired,
        )))
    }

    fn deliver(&self, user: &str, message: &mut dyn io::Read) -> Result<Delivered, StoreError> {
        self.deliver_into(user, None, message)
    }

    fn expire(
        &self,
        user: &str,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        let policy = self.policies.load().retention.for_user(user);
        let Some(maildrop) = self.maildrop(user, false)? else {
            return Ok(ExpireReport::default());
        };
        let lease = match Lease::acquire(&self.db, maildrop) {
            Ok(lease) => lease,
            Err(PgError::Store(StoreError::InUse)) => {
                return Ok(ExpireReport {
                    skipped_in_use: true,
                    ..Default::default()
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(self
            .db
            .run(expire_locked(&self.db, &lease, &policy, now, dry_run))?)
    }

    fn policy(&self, user: &str) -> Policy {
        self.policies.load().retention.for_user(user)
    }

    fn retention(&self) -> Arc<RetentionConfig> {
        Arc::clone(&self.policies.load().retention)
    }

    fn deliver_to_folder(
        &self,
        user: &str,
        folder: &str,
        message: &mut dyn io::Read,
    ) -> Result<Delivered, StoreError> {
        self.deliver_into(user, Some(folder), message)
    }

    fn quota(&self, user: &str) -> Quota {
        self.policies.load().quota.for_user(user)
    }

    fn quota_full(&self, user: &str) -> Result<Option<Usage>, StoreError> {
        self.quota_exceeded_by(user, 1)
    }

    fn quota_exceeded_by(&self, user: &str, size: u64) -> Result<Option<Usage>, StoreError> {
        let quota = self.quota(user);
        if quota.is_unlimited() {
            return Ok(None);
        }
        let usage = self.usage_now(user)?;
        Ok(quota.exceeded_by(usage, size).then_some(usage))
    }

    fn set_policies(&self, max_size: Option<u64>, retention: RetentionConfig, quota: QuotaConfig) {
        PgStore::set_policies(self, max_size, retention, quota);
    }
}
