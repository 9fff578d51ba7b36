//! Reading the login history for `pobox user show`, `pobox user apppass
//! list` and `pobox mailbox show`: which credential took which message.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use pobox_store::history::{LoginHistory, Session};

use crate::config::{LOGIN_HISTORY_DIR, Settings};

/// `user`'s sessions, oldest first (none when the history is off or empty).
///
/// # Errors
/// The history file exists but cannot be read.
pub(super) fn sessions(settings: &Settings, user: &str) -> anyhow::Result<Vec<Session>> {
    let dir = settings
        .server
        .login_history_dir
        .clone()
        .unwrap_or_else(|| settings.data_dir.join(LOGIN_HISTORY_DIR));
    LoginHistory::new(&dir).sessions(user).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the login history {}/{user}.log: {e}",
            dir.display()
        )
    })
}

/// Per UIDL: the credentials that retrieved it (in order, each once) and
/// the one that deleted it.
#[derive(Debug, Default)]
pub(super) struct Takers {
    retrieved_by: HashMap<String, Vec<String>>,
    deleted_by: HashMap<String, String>,
}

impl Takers {
    pub(super) fn of(sessions: &[Session]) -> Takers {
        let mut takers = Takers::default();
        for s in sessions {
            let Some(update) = &s.update else { continue };
            for uidl in &update.retrieved {
                let by = takers.retrieved_by.entry(uidl.clone()).or_default();
                if !by.contains(&s.login.credential) {
                    by.push(s.login.credential.clone());
                }
            }
            for uidl in &update.deleted {
                takers
                    .deleted_by
                    .insert(uidl.clone(), s.login.credential.clone());
            }
        }
        takers
    }

    /// The credentials that retrieved `uidl`.
    pub(super) fn retrieved_by(&self, uidl: &str) -> Vec<String> {
        self.retrieved_by.get(uidl).cloned().unwrap_or_default()
    }

    /// The credential whose session deleted `uidl`.
    pub(super) fn deleted_by(&self, uidl: &str) -> Option<String> {
        self.deleted_by.get(uidl).cloned()
    }
}

/// Unix seconds as RFC 3339.
pub(super) fn time(unix: u64) -> String {
    pobox_server::date::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
}
