//! MDA destination: runs a command (`sh -c`) with the complete message on
//! its standard input. The message counts as delivered only when the command
//! exits 0; otherwise it stays on the server and is retried next run.
//!
//! Because the whole message is spooled before the command starts, an MDA
//! never sees a truncated message (fetchmail streams into its MDA and hands
//! it half a message when the connection drops). Its standard input is the
//! spool file itself, not a pipe we feed: if `pobox fetch` is killed while
//! the MDA runs, the MDA still reads the whole message, where a pipe would
//! end early and look like a short message.
//!
//! Exactly-once has one gap here that no file name can close: if the process
//! dies between the MDA's exit 0 and the journal's fsync, the next run
//! delivers again. The environment carries `POBOX_MESSAGE_ID` (stable across
//! runs) so an MDA that cares can drop the duplicate.

use std::io::Read;
use std::process::{Command, Stdio};

use super::{Delivery, DestError, MessageId};
use crate::spool::Spool;

/// Most of the MDA's stderr kept for the error message.
const STDERR_TAIL: usize = 2048;

/// A delivery command.
#[derive(Debug)]
pub struct MdaDest {
    command: String,
}

impl MdaDest {
    /// A destination running `command` with `/bin/sh -c`.
    pub fn new(command: &str) -> MdaDest {
        MdaDest { command: command.to_string() }
    }

    /// Runs the command with the message on stdin.
    ///
    /// # Errors
    /// [`DestError::MdaSpawn`] or [`DestError::MdaFailed`].
    pub fn deliver(&self, id: MessageId<'_>, spool: &mut Spool) -> Result<Delivery, DestError> {
        let spawn_err = |source| DestError::MdaSpawn { command: self.command.clone(), source };
        let input = spool.as_file().and_then(|f| f.try_clone()).map_err(DestError::Spool)?;
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .env("POBOX_MESSAGE_ID", id.base)
            .env("POBOX_ACCOUNT", id.account)
            .env("POBOX_UIDL", id.uidl.unwrap_or(""))
            .stdin(Stdio::from(input))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let mut stderr = child.stderr.take().expect("stderr was piped");
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        let start = all.len().saturating_sub(STDERR_TAIL);
        let tail = String::from_utf8_lossy(&all[start..]).trim().to_string();
        let status = child.wait().map_err(spawn_err)?;
        if !status.success() {
            return Err(DestError::MdaFailed { command: self.command.clone(), status: status.to_string(), stderr: tail });
        }
        // Exit 0 is the MDA's word that it delivered.
        Ok(Delivery::Stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> MessageId<'static> {
        MessageId { base: "pobox-abc", uidl: Some("u1"), account: "acct" }
    }

    #[test]
    fn delivers_on_exit_zero_with_whole_message_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mda = MdaDest::new(&format!("cat > {0}; echo \"$POBOX_MESSAGE_ID $POBOX_ACCOUNT\" >> {0}", out.display()));
        let mut spool = Spool::new(dir.path().to_owned());
        let big: Vec<u8> = b"line\n".repeat(300_000);
        spool.write(&big).unwrap();
        assert_eq!(mda.deliver(id(), &mut spool).unwrap(), Delivery::Stored);
        let got = std::fs::read(&out).unwrap();
        assert_eq!(&got[..big.len()], &big[..]);
        assert_eq!(&got[big.len()..], b"pobox-abc acct\n");
    }

    #[test]
    fn nonzero_exit_is_failure_with_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path().to_owned());
        spool.write(b"x\n").unwrap();
        let e = MdaDest::new("cat >/dev/null; echo 'disk on fire' >&2; exit 75").deliver(id(), &mut spool).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("disk on fire") && s.contains("75"), "{s}");
    }
}
