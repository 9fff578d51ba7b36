//! The session's view of a maildrop: numbered messages, their sizes and
//! UIDLs, and which of them are marked deleted.
//!
//! Message numbers are positions in the snapshot taken at login; they stay
//! fixed for the session and a deleted number is never reused (RFC 1939 §§5,
//! 7). Mail delivered during the session is not in the snapshot: it shows up
//! in the next session.

/// One message as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    /// Exact octets RETR sends before byte-stuffing (RFC 1939 §5).
    pub size: u64,
    /// The unique-id listing (RFC 1939 §7): 1–70 characters in 0x21..=0x7E.
    pub uidl: String,
}

/// The maildrop snapshot with the session's deletion marks.
#[derive(Debug, Clone, Default)]
pub struct Maildrop {
    messages: Vec<MessageMeta>,
    deleted: Vec<bool>,
}

impl Maildrop {
    /// A snapshot of `messages`, numbered 1..=n in this order.
    pub fn new(messages: Vec<MessageMeta>) -> Maildrop {
        let deleted = vec![false; messages.len()];
        Maildrop { messages, deleted }
    }

    /// The message numbered `number` (1-based) unless it is out of range or
    /// marked deleted: RFC 1939 treats both alike ("no such message").
    pub fn live(&self, number: u32) -> Option<(usize, &MessageMeta)> {
        let index = usize::try_from(number).ok()?.checked_sub(1)?;
        match self.deleted.get(index) {
            Some(false) => Some((index, &self.messages[index])),
            _ => None,
        }
    }

    /// Marks message `number` deleted. Returns false if it is not live.
    pub fn mark_deleted(&mut self, number: u32) -> bool {
        match self.live(number) {
            Some((index, _)) => {
                self.deleted[index] = true;
                true
            }
            None => false,
        }
    }

    /// Unmarks every message (RSET).
    pub fn unmark_all(&mut self) {
        self.deleted.iter_mut().for_each(|d| *d = false);
    }

    /// Live messages with their 1-based numbers, in order.
    pub fn iter_live(&self) -> impl Iterator<Item = (u32, &MessageMeta)> {
        self.messages
            .iter()
            .zip(&self.deleted)
            .enumerate()
            .filter(|(_, (_, deleted))| !**deleted)
            .map(|(i, (m, _))| (i as u32 + 1, m))
    }

    /// Count and total octets of live messages (STAT).
    pub fn stat(&self) -> (usize, u64) {
        self.iter_live().fold((0, 0), |(n, octets), (_, m)| (n + 1, octets + m.size))
    }

    /// Zero-based indices of the messages marked deleted, for UPDATE.
    pub fn deleted_indices(&self) -> Vec<usize> {
        self.deleted.iter().enumerate().filter(|(_, d)| **d).map(|(i, _)| i).collect()
    }
}
