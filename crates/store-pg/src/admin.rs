//! [`MailstoreAdmin`] for [`PgStore`]: listings without the lease;
//! restore, purge, release and import under it, each in one fenced
//! transaction.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::SystemTime;

use pobox_store::quota::{Quota, Usage};
use pobox_store::{
    CommitReport, ImportOutcome, MailstoreAdmin, MessageInfo, RemovedMessage, StoreError, Uidl,
};

use crate::body::ChunkReader;
use crate::lease::Lease;
use crate::store::{Intake, check_user, id_of, inbox, remove, store_message};
use crate::{PgError, PgStore};

impl PgStore {
    /// Runs `change` in one transaction fenced by a fresh lease on
    /// `maildrop`, which the same transaction releases.
    fn under_lease<T: Send>(
        &self,
        maildrop: i64,
        change: impl for<'t> FnOnce(
            &'t tokio_postgres::Transaction<'t>,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = Result<T, PgError>> + Send + 't>,
        > + Send,
    ) -> Result<T, StoreError> {
        let mut lease = Lease::acquire(&self.db, maildrop)?;
        let db = &self.db;
        let lease_ref = &lease;
        let out = db.run(async move {
            let mut client = db.pool.get().await?;
            let tx = client.transaction().await?;
            lease_ref.fence(&*tx).await?;
            let out = change(&tx).await?;
            lease_ref.release_in(&*tx).await?;
            tx.commit().await?;
            Ok::<_, PgError>(out)
        })?;
        lease.forget();
        Ok(out)
    }
}

impl MailstoreAdmin for PgStore {
    fn inspect(&self, user: &str) -> Result<Vec<MessageInfo>, StoreError> {
        let Some(maildrop) = self.maildrop(user, false)? else {
            return Ok(Vec::new());
        };
        let db = &self.db;
        let messages = db.run(async {
            let client = db.pool.get().await?;
            inbox(&**client, maildrop).await
        })?;
        Ok(messages.into_iter().map(|m| m.info).collect())
    }

    fn head(&self, user: &str, info: &MessageInfo, limit: usize) -> Result<Vec<u8>, StoreError> {
        let vanished = || StoreError::Vanished(info.key.to_string());
        let maildrop = self.maildrop(user, false)?.ok_or_else(vanished)?;
        let id = id_of(&info.key).ok_or_else(vanished)?;
        let db = &self.db;
        let chunks = db.run(async {
            let client = db.pool.get().await?;
            let row = client
                .query_opt(
                    "SELECT chunks FROM messages WHERE id = $1 AND maildrop_id = $2
                        AND folder IS NULL AND removed_at IS NULL",
                    &[&id, &maildrop],
                )
                .await?;
            Ok::<_, PgError>(row.map(|r| r.get::<_, i32>(0)))
        })?;
        let chunks = chunks.ok_or_else(vanished)?;
        let mut out = Vec::new();
        ChunkReader {
            db: Arc::clone(&self.db),
            message: id,
            chunks,
            next: 0,
            buf: Vec::new(),
            pos: 0,
        }
        .take(limit as u64)
        .read_to_end(&mut out)
        .map_err(|e| StoreError::Io {
            context: format!("reading message {id}"),
            source: e,
        })?;
        Ok(out)
    }

    fn removed_messages(&self, user: &str) -> Result<Vec<RemovedMessage>, StoreError> {
        let Some(maildrop) = self.maildrop(user, false)? else {
            return Ok(Vec::new());
        };
        let db = &self.db;
        let rows = db.run(async {
            let client = db.pool.get().await?;
            Ok::<_, PgError>(
                client
                    .query(
                        "SELECT uidl, removed_at FROM messages WHERE maildrop_id = $1 AND removed_at IS NOT NULL
                          ORDER BY removed_at, id",
                        &[&maildrop],
                    )
                    .await?,
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| RemovedMessage {
                uidl: r.get(0),
                removed_at: Some(r.get(1)),
            })
            .collect())
    }

    fn restore(
        &self,
        user: &str,
        since: Option<SystemTime>,
        _now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let Some(maildrop) = self.maildrop(user, false)? else {
            return Ok(Vec::new());
        };
        self.under_lease(maildrop, move |tx| {
            Box::pin(async move {
                // Their retention clock starts afresh: not retrieved yet.
                let rows = tx
                    .query(
                        "UPDATE messages SET removed_at = NULL, retrieved_at = NULL
                          WHERE maildrop_id = $1 AND removed_at IS NOT NULL
                            AND ($2::timestamptz IS NULL OR removed_at >= $2)
                          RETURNING uidl",
                        &[&maildrop, &since],
                    )
                    .await?;
                Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
            })
        })
    }

    fn purge(&self, user: &str, now: SystemTime) -> Result<CommitReport, StoreError> {
        let aside = self.policies.load().retention.for_user(user).restore_days > 0;
        let Some(maildrop) = self.maildrop(user, false)? else {
            return Ok(CommitReport::default());
        };
        let moved = self.under_lease(maildrop, move |tx| {
            Box::pin(async move {
                let ids: Vec<i64> = inbox(tx, maildrop).await?.iter().map(|m| m.id).collect();
                remove(tx, maildrop, &ids, aside, now).await
            })
        })? as usize;
        Ok(CommitReport {
            removed: moved,
            restorable: if aside { moved } else { 0 },
            ..CommitReport::default()
        })
    }

    fn release(&self, user: &str, folder: &str, uidl: &str) -> Result<String, StoreError> {
        pobox_store::check_folder_name(folder)?;
        let vanished = || StoreError::Vanished(format!("{folder}/{uidl}"));
        let maildrop = self.maildrop(user, false)?.ok_or_else(vanished)?;
        let (folder_s, uidl_s) = (folder.to_owned(), uidl.to_owned());
        let id = self.under_lease(maildrop, move |tx| {
            Box::pin(async move {
                // Byte for byte and under its own UIDL: only the folder changes.
                let row = tx
                    .query_opt(
                        "UPDATE messages SET folder = NULL
                          WHERE maildrop_id = $1 AND folder = $2 AND uidl = $3 AND removed_at IS NULL
                          RETURNING id",
                        &[&maildrop, &folder_s, &uidl_s],
                    )
                    .await?;
                Ok(row.map(|r| r.get::<_, i64>(0)))
            })
        })?;
        let id = id.ok_or_else(vanished)?;
        Ok(format!("postgres:{user}/{id}"))
    }

    fn usage(&self, user: &str) -> Result<(Usage, Quota), StoreError> {
        Ok((
            self.usage_for(user)?,
            self.policies.load().quota.for_user(user),
        ))
    }

    fn import_message(
        &self,
        user: &str,
        uidl: &Uidl,
        received: SystemTime,
        message: &mut dyn io::Read,
    ) -> Result<ImportOutcome, StoreError> {
        check_user(user)?;
        let maildrop = self.maildrop(user, true)?.expect("created");
        let lease = Lease::acquire(&self.db, maildrop)?;
        let db = &self.db;
        let present = db.run(async {
            let client = db.pool.get().await?;
            Ok::<_, PgError>(
                client
                    .query_opt(
                        "SELECT 1 FROM messages WHERE maildrop_id = $1 AND uidl = $2",
                        &[&maildrop, &uidl.as_str()],
                    )
                    .await?
                    .is_some(),
            )
        })?;
        if present {
            return Ok(ImportOutcome::AlreadyPresent);
        }
        let intake = Intake {
            user,
            folder: None,
            uidl: Some(uidl),
            received,
            limit: None,
            quota: None,
            lease: Some(&lease),
        };
        store_message(&self.db, maildrop, intake, message)
    }
}
