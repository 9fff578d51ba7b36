//! Graceful shutdown in two steps: stop accepting, then (after the grace
//! period) close the sessions that are still open, without UPDATE.

use tokio::sync::watch;

/// The server's shutdown phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// Not accepting new connections; open sessions may finish.
    Draining,
    /// Open sessions must close now.
    Forced,
}

/// Sends phase changes to every listener and connection.
#[derive(Debug)]
pub struct Trigger(watch::Sender<Phase>);

/// A connection's or listener's view of the shutdown phase.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<Phase>);

/// A connected trigger/receiver pair.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(Phase::Running);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Moves to `phase` (never backwards).
    pub fn set(&self, phase: Phase) {
        self.0.send_if_modified(|p| {
            if phase > *p {
                *p = phase;
                true
            } else {
                false
            }
        });
    }
}

impl Shutdown {
    async fn reached(&mut self, phase: Phase) {
        // An error means the trigger is gone: treat as the final phase.
        let _ = self.0.wait_for(|p| *p >= phase).await;
    }

    /// Completes when listeners must stop accepting.
    pub async fn draining(&mut self) {
        self.reached(Phase::Draining).await;
    }

    /// Completes when sessions must close.
    pub async fn forced(&mut self) {
        self.reached(Phase::Forced).await;
    }
}
