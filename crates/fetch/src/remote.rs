//! Read-only access to a remote maildrop, for `pobox import pop3`: the
//! same connection, TLS verification, authentication and multi-line
//! decoding as a fetch, but no journal, no destination and no DELE. The
//! caller decides what to retrieve and where it goes.
//!
//! Nothing here can change the remote maildrop: the only commands sent
//! after login are UIDL, LIST, RETR and QUIT, so even a QUIT that commits
//! the session (RFC 1939 §6) leaves every message where it was.

use pobox_proto::pop3::Status;
use pobox_proto::pop3::client::{LineEnding, Reply, Request, body_lines, parse_list_line};

use crate::auth::Secret;
use crate::config::Account;
use crate::conn::Conn;
use crate::error::FetchError;
use crate::plan::Listed;
use crate::progress::AccountProgress;
use crate::session::{download_limit, expect_ok, open_session, read_uidl};
use crate::spool::Spool;

/// A logged-in session on a remote POP3 server, in TRANSACTION state.
pub struct RemoteMaildrop {
    conn: Conn,
    /// Whether the server announced UIDL in CAPA (`None`: no CAPA).
    capa_uidl: Option<bool>,
}

impl std::fmt::Debug for RemoteMaildrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMaildrop").field("capa_uidl", &self.capa_uidl).finish_non_exhaustive()
    }
}

/// What [`RemoteMaildrop::retrieve`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrieved {
    /// The whole message is in the spool (terminator seen); `wire` is its
    /// size counted as POP3 counts it (CRLF line ends).
    Complete {
        /// Octets on the wire.
        wire: u64,
    },
    /// The server answered RETR with -ERR (the message vanished
    /// meanwhile, or the server refuses it); the session goes on.
    Refused,
}

impl RemoteMaildrop {
    /// Connects and logs in exactly as a fetch of `account` does: TLS or
    /// mandatory STLS with the server verified before any credential is
    /// sent, then the configured (or strongest offered) authentication.
    ///
    /// # Errors
    ///
    /// Connection, TLS, authentication and protocol errors, as a fetch.
    pub async fn open(account: &Account, secret: Secret) -> Result<RemoteMaildrop, FetchError> {
        let (conn, caps) = open_session(account, secret).await?;
        Ok(RemoteMaildrop { conn, capa_uidl: caps.map(|c| c.uidl) })
    }

    /// The maildrop's listing: every message's number and size (LIST)
    /// with its UIDL as the server gave it, `None` where the server gave
    /// none or an invalid one. All `None` when the server has no UIDL
    /// command. Duplicates are left as the server sent them: the caller
    /// must not store two messages under one UIDL.
    ///
    /// # Errors
    ///
    /// Network and protocol errors; a refused LIST.
    pub async fn listing(&mut self) -> Result<Vec<Listed>, FetchError> {
        let mut uidls = std::collections::HashMap::new();
        // Without CAPA there is no telling; ask anyway (-ERR is harmless).
        if self.capa_uidl != Some(false) {
            self.conn.queue(&Request::Uidl(None))?;
            self.conn.flush().await?;
            read_uidl(&mut self.conn, &mut uidls).await?;
        }
        expect_ok(self.conn.command(&Request::List(None)).await?, "LIST")?;
        let body = self.conn.read_listing().await?;
        let mut listed = Vec::new();
        for line in body_lines(&body) {
            let (num, size) = parse_list_line(line)?;
            listed.push(Listed { num, size, uidl: uidls.remove(&num) });
        }
        Ok(listed)
    }

    /// Retrieves message `msg` (RETR) into `spool`, with LF line ends (as
    /// a Maildir holds it), the dot-stuffing undone. Returns only once the
    /// terminator arrived, so a spool of a `Complete` message is never
    /// truncated. A server sending far more than LIST announced is
    /// stopped ([`FetchError::Oversent`]); the connection is unusable then.
    ///
    /// # Errors
    ///
    /// Network and protocol errors (the connection is then unusable),
    /// spool write errors.
    pub async fn retrieve(
        &mut self,
        msg: &Listed,
        spool: &mut Spool,
        progress: &AccountProgress,
    ) -> Result<Retrieved, FetchError> {
        match self.conn.command(&Request::Retr(msg.num)).await? {
            Reply::Status(Status::Ok(_)) => {}
            _ => return Ok(Retrieved::Refused),
        }
        let limit = download_limit(msg.size, None);
        let mut lines = 0u64;
        self.conn
            .read_body(LineEnding::Lf, &mut |chunk| {
                let nl = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                lines += nl;
                progress.add_bytes(chunk.len() as u64 + nl);
                if spool.len() + chunk.len() as u64 + lines > limit {
                    return Err(FetchError::Oversent {
                        num: msg.num,
                        uidl: msg.uidl.clone(),
                        announced: msg.size,
                        limit,
                    });
                }
                spool.write(chunk).map_err(|source| FetchError::Local { context: "writing the spool".into(), source })
            })
            .await?;
        let wire = spool.len() + lines;
        progress.message_done(msg.size, wire);
        Ok(Retrieved::Complete { wire })
    }

    /// Ends the session with QUIT. No DELE was ever sent, so whatever the
    /// server answers, its maildrop is unchanged.
    ///
    /// # Errors
    ///
    /// Network errors sending QUIT or reading its answer.
    pub async fn quit(mut self) -> Result<(), FetchError> {
        let _ = self.conn.command(&Request::Quit).await?;
        Ok(())
    }
}
