//! The admin control socket: a unix socket in the data dir (mode 0600)
//! answering one request per connection.
//!
//! Requests are one line: `who` (reply: one JSON object per open session,
//! then `.`) or `kick USER` (reply: `kicked N`). Only the owner of the data
//! dir can connect; nothing here accepts network input.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::Services;

/// Serves the control socket until the task is aborted.
pub(crate) async fn serve(listener: UnixListener, svc: Arc<Services>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(1024);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = handle(line.trim_end(), &svc);
            let _ = write.write_all(reply.as_bytes()).await;
        });
    }
}

fn handle(request: &str, svc: &Services) -> String {
    let mut words = request.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("who"), None, None) => {
            let mut out = String::new();
            for s in svc.sessions.list() {
                out.push_str(&serde_json::to_string(&s).unwrap_or_default());
                out.push('\n');
            }
            out.push_str(".\n");
            out
        }
        (Some("kick"), Some(user), None) => {
            let n = svc.sessions.kick(user);
            info!(%user, sessions = n, "kick requested by admin");
            format!("kicked {n}\n")
        }
        _ => {
            warn!("unknown control request");
            "error unknown request (use: who | kick USER)\n".into()
        }
    }
}
