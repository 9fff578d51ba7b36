//! systemd integration of `pobox serve`: listeners passed by socket
//! activation (`LISTEN_FDS`, sd_listen_fds(3)) and state notifications
//! (`NOTIFY_SOCKET`, sd_notify(3)): READY=1 once every listener accepts,
//! RELOADING=1 while SIGHUP re-reads the configuration (READY=1 again after
//! it), STOPPING=1 when shutdown begins, WATCHDOG=1 while the runtime is alive.
//! Outside systemd none of the variables is set and all of this is a no-op.

use std::time::Duration;

use anyhow::{Context, bail};
use pobox_server::{PreBound, Protocol};

/// The listeners systemd passed, each with the protocol its
/// `FileDescriptorName=` says (`pop3`, `pop3s`, `lmtp`, `smtp`). Without
/// names (`systemd-socket-activate` without `--fdname`), a TCP socket's
/// well-known port decides (110, 995, 24, 25) and a unix socket is LMTP.
///
/// Call on the main thread before any other thread exists: taking the
/// descriptors clears `LISTEN_FDS` from the environment.
///
/// # Errors
/// A passed descriptor that is not a listening stream socket, or whose
/// protocol cannot be told; the message says which and how to name it.
pub fn activated_listeners() -> anyhow::Result<Vec<PreBound>> {
    let names: Vec<String> =
        std::env::var("LISTEN_FDNAMES").map(|v| v.split(':').map(str::to_owned).collect()).unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    for idx in 0..fds.len() {
        let name = names.get(idx).map(String::as_str).unwrap_or("");
        let named = protocol_named(name);
        match fds.take_tcp_listener(idx) {
            Ok(Some(l)) => {
                let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
                let Some(protocol) = named.or_else(|| protocol_of_port(port)) else {
                    bail!(
                        "socket-activated descriptor {idx} (port {port}, name {name:?}) is not pop3, pop3s, lmtp, \
                         smtp or policy; set FileDescriptorName= in the .socket unit"
                    );
                };
                out.push(PreBound::from_tcp(protocol, l).context("socket-activated TCP listener")?);
            }
            Ok(None) => {}
            Err(_) => {
                let l = fds
                    .take_unix_listener(idx)
                    .with_context(|| format!("socket-activated descriptor {idx} ({name:?}) is not a stream listener"))?;
                let Some(l) = l else { continue };
                let protocol = named.unwrap_or(Protocol::Lmtp);
                if !matches!(protocol, Protocol::Lmtp | Protocol::Policy) {
                    bail!("socket-activated unix socket {idx} is named {name:?}; only LMTP and policy listen on unix sockets");
                }
                out.push(PreBound::from_unix(protocol, l).context("socket-activated unix listener")?);
            }
        }
    }
    Ok(out)
}

fn protocol_named(name: &str) -> Option<Protocol> {
    match name {
        "pop3" => Some(Protocol::Pop3),
        "pop3s" => Some(Protocol::Pop3s),
        "lmtp" => Some(Protocol::Lmtp),
        "smtp" => Some(Protocol::Smtp),
        "policy" => Some(Protocol::Policy),
        _ => None,
    }
}

fn protocol_of_port(port: u16) -> Option<Protocol> {
    match port {
        110 => Some(Protocol::Pop3),
        995 => Some(Protocol::Pop3s),
        24 => Some(Protocol::Lmtp),
        25 => Some(Protocol::Smtp),
        _ => None,
    }
}

/// Tells systemd the service is ready (Type=notify).
pub fn ready() {
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("serving")]);
}

/// Tells systemd a configuration reload has begun (`Type=notify-reload`
/// needs `MONOTONIC_USEC` with it, to tell this reload from an older one);
/// [`ready`] ends it.
pub fn reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now, sd_notify::NotifyState::Status("reloading")]),
        Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for systemd"),
    }
}

/// Tells systemd shutdown has begun.
pub fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status("draining sessions")]);
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// With `WatchdogSec=` set, pings systemd at half the interval from a task
/// on the async runtime: if the runtime wedges, the pings stop and systemd
/// restarts the service.
pub fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let every = (interval / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_then_well_known_ports_decide_the_protocol() {
        assert_eq!(protocol_named("pop3s"), Some(Protocol::Pop3s));
        assert_eq!(protocol_named("http"), None);
        assert_eq!(protocol_of_port(110), Some(Protocol::Pop3));
        assert_eq!(protocol_of_port(24), Some(Protocol::Lmtp));
        assert_eq!(protocol_of_port(1110), None);
    }
}
