//! A maildrop a session holds ([`Mailbox`] for the PostgreSQL store):
//! the snapshot taken at open, chunked reads, and the fenced UPDATE.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use pobox_store::retention::Policy;
use pobox_store::{CommitReport, ExpireReport, Mailbox, MessageInfo, StoreError};

use crate::PgError;
use crate::body::ChunkReader;
use crate::connect::Db;
use crate::lease::Lease;
use crate::store::remove;

/// One message of a snapshot, with what reading it needs.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) id: i64,
    pub(crate) chunks: i32,
    pub(crate) info: MessageInfo,
}

pub(crate) struct PgMailbox {
    db: Arc<Db>,
    user: String,
    /// Released when the mailbox is dropped, unless commit released it.
    lease: Lease,
    ids: Vec<(i64, i32)>,
    infos: Vec<MessageInfo>,
    policy: Policy,
    expired: ExpireReport,
}

impl PgMailbox {
    pub(crate) fn new(
        db: Arc<Db>,
        user: &str,
        lease: Lease,
        messages: Vec<Snapshot>,
        policy: Policy,
        expired: ExpireReport,
    ) -> Self {
        let ids = messages.iter().map(|m| (m.id, m.chunks)).collect();
        let infos = messages.into_iter().map(|m| m.info).collect();
        PgMailbox {
            db,
            user: user.to_owned(),
            lease,
            ids,
            infos,
            policy,
            expired,
        }
    }

    fn check(&self, indices: &[usize]) -> Result<Vec<i64>, StoreError> {
        indices
            .iter()
            .map(|&i| {
                self.ids
                    .get(i)
                    .map(|m| m.0)
                    .ok_or(StoreError::NoSuchMessage { index: i })
            })
            .collect()
    }
}

impl Mailbox for PgMailbox {
    fn user(&self) -> &str {
        &self.user
    }

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn open_message(&self, index: usize) -> Result<Box<dyn io::Read + Send>, StoreError> {
        let &(id, chunks) = self
            .ids
            .get(index)
            .ok_or(StoreError::NoSuchMessage { index })?;
        let db = &self.db;
        let exists = db.run(async {
            let client = db.pool.get().await?;
            Ok::<_, PgError>(
                client
                    .query_opt("SELECT 1 FROM messages WHERE id = $1", &[&id])
                    .await?
                    .is_some(),
            )
        })?;
        if !exists {
            return Err(StoreError::Vanished(self.infos[index].key.to_string()));
        }
        Ok(Box::new(ChunkReader {
            db: Arc::clone(&self.db),
            message: id,
            chunks,
            next: 0,
            buf: Vec::new(),
            pos: 0,
        }))
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn expired_at_open(&self) -> &ExpireReport {
        &self.expired
    }

    fn commit(
        mut self: Box<Self>,
        deleted: &[usize],
        retrieved: &[usize],
    ) -> Result<CommitReport, StoreError> {
        let remove_ids = self.check(&self.removals(deleted, retrieved))?;
        let retrieved_ids = self.check(retrieved)?;
        if self.lease.is_lost() {
            return Err(StoreError::LeaseLost);
        }
        let now = SystemTime::now();
        let aside = self.policy.restore_days > 0;
        let maildrop = self.lease.maildrop;
        let (db, lease) = (&self.db, &self.lease);
        let moved = db.run(async {
            let mut client = db.pool.get().await?;
            let tx = client.transaction().await?;
            // Fencing: nothing below happens unless this session still
            // holds the maildrop, and nobody can take it until COMMIT.
            lease.fence(&*tx).await?;
            tx.execute(
                "UPDATE messages SET retrieved_at = $2 WHERE id = ANY($1) AND retrieved_at IS NULL",
                &[&retrieved_ids, &now],
            )
            .await?;
            let moved = remove(&*tx, maildrop, &remove_ids, aside, now).await?;
            lease.release_in(&*tx).await?;
            tx.commit().await?;
            Ok::<_, PgError>(moved)
        })?;
        self.lease.forget();
        Ok(CommitReport {
            removed: remove_ids.len(),
            restorable: if aside { moved as usize } else { 0 },
            unlogged: false,
            failed: 0,
        })
    }

    fn record_retrievals(&mut self, indices: &[usize], when: SystemTime) -> Result<(), StoreError> {
        let ids = self.check(indices)?;
        let db = &self.db;
        db.run(async {
            let client = db.pool.get().await?;
            client
                .execute("UPDATE messages SET retrieved_at = $2 WHERE id = ANY($1) AND retrieved_at IS NULL", &[&ids, &when])
                .await?;
            Ok::<_, PgError>(())
        })?;
        for &i in indices {
            self.infos[i].retrieved.get_or_insert(when);
        }
        Ok(())
    }
}
