//! The fetcher's error type: one enum naming each cause, so the caller can
//! tell "try again later" from "fix your configuration".

use std::io;

use pobox_proto::pop3::client::{EncodeError, ReplyError};

use crate::config::ConfigError;
use crate::dest::DestError;
use crate::journal::JournalError;
use crate::tls::TlsError;

/// Everything that can stop an account's fetch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS setup failed or the server's certificate was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TCP connection could not be made.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// `host:port`.
        server: String,
        /// Why.
        source: io::Error,
    },
    /// Reading from or writing to the server failed.
    #[error("network error talking to the server: {0}")]
    Network(#[source] io::Error),
    /// The server did not answer within the account's timeout.
    #[error("server did not answer within {0} seconds")]
    Timeout(u64),
    /// The server's first line is not a POP3 greeting: the host and port
    /// lead to something else (an HTTP, SSH or SMTP server, a TLS port
    /// spoken to in plaintext…). Nothing was sent.
    #[error("{server} is not a POP3 server: its greeting was {said} (check host, port and security)")]
    NotPop3 {
        /// `host:port`.
        server: String,
        /// The start of what it sent, quoted and escaped.
        said: String,
    },
    /// The server accepted the connection but sent no greeting in time.
    #[error("{server} sent no greeting within {secs} seconds (a TLS-only port needs security = \"tls\")")]
    NoGreeting {
        /// `host:port`.
        server: String,
        /// The timeout.
        secs: u64,
    },
    /// The server closed the connection where a reply was due.
    #[error("server closed the connection unexpectedly")]
    Closed,
    /// The server's reply broke the protocol (bad framing, a truncated
    /// message, a line too long).
    #[error("protocol error: {0}")]
    Protocol(#[from] ReplyError),
    /// A command could not be encoded (a user name with a line break…).
    #[error("cannot send command: {0}")]
    Encode(#[from] EncodeError),
    /// The server answered `-ERR` where the fetch cannot go on.
    #[error("server refused {command}: {text}")]
    Server {
        /// The command, secrets redacted.
        command: String,
        /// The server's text.
        text: String,
    },
    /// STARTTLS was required but the server does not offer STLS, or the
    /// upgrade was refused. Nothing secret was sent.
    #[error("server does not offer STLS; refusing to continue without TLS (nothing was sent)")]
    NoStls,
    /// The server sent bytes after its STLS reply, before the handshake:
    /// a command-injection attempt (CVE-2011-0411 class).
    #[error("server sent unexpected data before the TLS handshake; refusing")]
    StlsInjection,
    /// Authentication was refused.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// No authentication method both sides support.
    #[error("no usable authentication method: {0}")]
    NoAuthMethod(String),
    /// The built-in OAuth client could not get an access token.
    #[error(transparent)]
    OAuth(#[from] crate::oauth::OAuthError),
    /// The daemon was told to stop (SIGTERM) between two messages; what
    /// was stored is journalled, the rest waits for the next run.
    #[error("stopped by a signal")]
    Interrupted,
    /// The password or token could not be obtained.
    #[error("cannot get the password: {0}")]
    Password(String),
    /// The journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Storing a message failed.
    #[error(transparent)]
    Dest(#[from] DestError),
    /// Keep-mode fetching needs UIDL to know what is new.
    #[error("server does not support UIDL; keep / delete_after_days need it (use delete mode)")]
    NoUidl,
    /// The server sent more of a message than LIST announced, past the
    /// margin (see `session::download_limit`): the download was abandoned,
    /// nothing of it stored. Handled inside the account's run, which goes
    /// on without that message.
    #[error("the server sent more than {limit} octets of message {num}, announced as {announced}")]
    Oversent {
        /// Message number.
        num: u32,
        /// Its UIDL, if the server has them.
        uidl: Option<String>,
        /// LIST's size.
        announced: u64,
        /// Where the download stopped.
        limit: u64,
    },
    /// Plain POP3 spoken to a TLS port: no greeting came, and the port
    /// answers a TLS handshake.
    #[error(
        "{server} sent no greeting within {secs} seconds because it speaks TLS from the first byte \
         (like port 995): set security = \"tls\" (STARTTLS is for the plain port, usually 110)"
    )]
    TlsPort {
        /// `host:port`.
        server: String,
        /// The timeout.
        secs: u64,
    },
    /// A local I/O error outside the destination (spool file).
    #[error("{context}: {source}")]
    Local {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
}

impl FetchError {
    /// True when retrying without a human changes nothing: the server's
    /// certificate, the user's credentials or password source, a security
    /// mode that does not fit the port, a host that is not a POP3 server.
    pub fn needs_attention(&self) -> bool {
        match self {
            FetchError::OAuth(e) => e.needs_attention(),
            FetchError::Tls(e) => e.needs_attention(),
            FetchError::Config(_)
            | FetchError::Auth(_)
            | FetchError::NoAuthMethod(_)
            | FetchError::Password(_)
            | FetchError::NoStls
            | FetchError::TlsPort { .. }
            | FetchError::NotPop3 { .. } => true,
            _ => false,
        }
    }
}
