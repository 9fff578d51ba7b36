//! The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): a
//! load balancer in front of pobox prefixes each connection with a header
//! naming the client's address, so throttling, connection limits, logs and
//! the login history see the client and not the balancer.
//!
//! Trust: a listener that expects the header (`[proxy_protocol] listeners`)
//! serves only peers in `trusted_proxies`. Any other peer is closed before a
//! byte is read, header or not, and a trusted peer that sends no valid header
//! is closed too, so nobody can choose the address pobox believes in.
//!
//! Reading: at most [`V2_MAX`] bytes, within the configured timeout, and
//! never a byte past the header (what follows belongs to POP3, LMTP, SMTP,
//! or the TLS handshake of POP3S). Every header is at least 15 bytes long
//! (`PROXY UNKNOWN\r\n`), so those are read at once; a version 1 line is then
//! read to its CRLF (107 bytes at most), a version 2 header to the length it
//! announces. Version 2 TLVs are skipped without being interpreted.
//!
//! Why not the `ppp` crate: it parses a buffer, but the part that needs
//! care here is reading exactly one header from the socket within bounds,
//! and the parsing left is a few dozen strict lines.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The version 2 signature (proxy-protocol.txt §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, CRLF included (§2.1).
const V1_MAX: usize = 107;
/// The shortest header of either version: `PROXY UNKNOWN\r\n`.
const MIN_HEADER: usize = 15;
/// The longest version 2 header accepted: 16 fixed bytes and up to this
/// many of addresses and TLVs. Balancers send a few dozen to a few hundred
/// (addresses, unique IDs, TLS details); a peer announcing more is refused.
pub const V2_MAX: usize = 16 + 2048;

/// Which address a header asks pobox to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client the balancer relays (`PROXY` with TCP over IPv4/IPv6).
    Client(SocketAddr),
    /// The connection is the balancer's own (`LOCAL`, a health check), or
    /// the balancer does not know the client (`UNKNOWN`, `AF_UNSPEC`,
    /// `AF_UNIX`): the socket's peer address stands.
    Proxy,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The peer is not in `trusted_proxies`.
    #[error("peer is not a trusted proxy")]
    Untrusted,
    /// The first bytes are not a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// A header that breaks the specification.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// A version 2 header longer than [`V2_MAX`].
    #[error("PROXY header too long ({0} bytes)")]
    TooLong(usize),
    /// The whole header did not arrive in time.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The peer closed or the read failed.
    #[error("connection lost while reading the PROXY header")]
    Lost,
}

/// Reads one PROXY header (either version) from `stream` within `timeout`.
///
/// # Errors
/// [`Refused`]: the caller closes the connection.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S, timeout: Duration) -> Result<Source, Refused> {
    match tokio::time::timeout(timeout, read_within_bounds(stream)).await {
        Ok(r) => r,
        Err(_) => Err(Refused::Timeout(timeout)),
    }
}

async fn read_within_bounds<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Source, Refused> {
    let mut head = [0u8; MIN_HEADER];
    read_exact(stream, &mut head).await?;
    if head.starts_with(V2_SIGNATURE) {
        let mut fixed = [0u8; 16];
        fixed[..MIN_HEADER].copy_from_slice(&head);
        read_exact(stream, &mut fixed[MIN_HEADER..]).await?;
        let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        if 16 + len > V2_MAX {
            return Err(Refused::TooLong(16 + len));
        }
        let mut rest = vec![0u8; len];
        read_exact(stream, &mut rest).await?;
        parse_v2(fixed[12], fixed[13], &rest)
    } else if head.starts_with(b"PROXY ") {
        let mut line = head.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(Refused::TooLong(line.len()));
            }
            let mut byte = [0u8; 1];
            read_exact(stream, &mut byte).await?;
            line.push(byte[0]);
        }
        parse_v1(&line)
    } else {
        Err(Refused::Missing)
    }
}

async fn read_exact<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), Refused> {
    stream.read_exact(buf).await.map(|_| ()).map_err(|_| Refused::Lost)
}

/// Parses a whole version 1 line, CRLF included.
///
/// # Errors
/// [`Refused::Malformed`] for anything but the grammar of §2.1.
pub fn parse_v1(line: &[u8]) -> Result<Source, Refused> {
    let bad = Refused::Malformed;
    let text = line.strip_suffix(b"\r\n").ok_or(bad("v1 line without CRLF"))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("v1 line is not ASCII"))?;
    if !text.is_ascii() || text.contains(['\r', '\n']) {
        return Err(bad("v1 line is not one ASCII line"));
    }
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(bad("v1 line does not start with PROXY"));
    }
    let family = parts.next().ok_or(bad("v1 line without protocol"))?;
    if family == "UNKNOWN" {
        // The rest, if any, is to be ignored (§2.1).
        return Ok(Source::Proxy);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields.as_slice() else {
        return Err(bad("v1 line needs four fields after the protocol"));
    };
    // The destination is checked for form and otherwise unused.
    let (src, _dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            src.parse::<Ipv4Addr>().map_err(|_| bad("v1 source is not an IPv4 address"))?.into(),
            dst.parse::<Ipv4Addr>().map_err(|_| bad("v1 destination is not an IPv4 address"))?.into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>().map_err(|_| bad("v1 source is not an IPv6 address"))?.into(),
            dst.parse::<Ipv6Addr>().map_err(|_| bad("v1 destination is not an IPv6 address"))?.into(),
        ),
        _ => return Err(bad("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let sport = port(sport).ok_or(bad("v1 source port is not 0..65535 without leading zeros"))?;
    port(dport).ok_or(bad("v1 destination port is not 0..65535 without leading zeros"))?;
    Ok(Source::Client(SocketAddr::new(src, sport)))
}

fn port(s: &str) -> Option<u16> {
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if s.is_empty() || leading_zero || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a version 2 header from its version/command byte, its
/// family/transport byte and the `len` bytes after the fixed 16.
///
/// # Errors
/// [`Refused::Malformed`] for an unknown version or command, a datagram
/// transport, or an address block shorter than its family needs.
pub fn parse_v2(ver_cmd: u8, family: u8, rest: &[u8]) -> Result<Source, Refused> {
    let bad = Refused::Malformed;
    if ver_cmd >> 4 != 2 {
        return Err(bad("v2 version is not 2"));
    }
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection; addresses (if any) ignored.
        0 => return Ok(Source::Proxy),
        1 => {}
        _ => return Err(bad("v2 command is neither LOCAL nor PROXY")),
    }
    match family {
        // UNSPEC: the balancer does not know the client.
        0x00 => Ok(Source::Proxy),
        // TCP over IPv4: 4 + 4 + 2 + 2 bytes, then TLVs (ignored).
        0x11 => {
            let a = rest.get(..12).ok_or(bad("v2 IPv4 address block shorter than 12 bytes"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Source::Client(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]]))))
        }
        // TCP over IPv6: 16 + 16 + 2 + 2 bytes.
        0x21 => {
            let a = rest.get(..36).ok_or(bad("v2 IPv6 address block shorter than 36 bytes"))?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            Ok(Source::Client(SocketAddr::new(Ipv6Addr::from(ip).into(), u16::from_be_bytes([a[32], a[33]]))))
        }
        // A unix-socket client has no address to throttle by: the
        // balancer's stands, as for LOCAL.
        0x30 | 0x31 => Ok(Source::Proxy),
        0x12 | 0x22 | 0x32 => Err(bad("v2 datagram transport on a stream listener")),
        _ => Err(bad("v2 unknown address family or transport")),
    }
}

/// Whether `ip` is one of `trusted` (IPv4-mapped IPv6 peers count as
/// their IPv4 address, as a dual-stack socket reports them).
#[must_use]
pub fn is_trusted(trusted: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

/// What a listener that expects the header does with a new connection:
/// refuses an untrusted peer at once, else reads the header. Returns the
/// client's address to use from now on.
///
/// # Errors
/// [`Refused`]: close the connection.
pub async fn accept<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    config: &crate::config::ProxyProtocol,
) -> Result<SocketAddr, Refused> {
    if !is_trusted(&config.trusted_proxies, peer.ip()) {
        return Err(Refused::Untrusted);
    }
    Ok(match read_header(stream, config.header_timeout).await? {
        Source::Client(client) => client,
        Source::Proxy => peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn v1(s: &str) -> Result<Source, Refused> {
        parse_v1(s.as_bytes())
    }

    fn client(s: &str) -> Source {
        Source::Client(s.parse().unwrap())
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        assert_eq!(v1("PROXY TCP4 192.0.2.7 198.51.100.1 56324 110\r\n"), Ok(client("192.0.2.7:56324")));
        assert_eq!(v1("PROXY TCP6 2001:db8::7 2001:db8::1 65535 995\r\n"), Ok(client("[2001:db8::7]:65535")));
        assert_eq!(v1("PROXY UNKNOWN\r\n"), Ok(Source::Proxy));
        assert_eq!(v1("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), Ok(Source::Proxy));
    }

    #[test]
    fn v1_is_strict() {
        for line in [
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324 110\n",     // LF only
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",       // a field missing
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324 110 1\r\n", // one too many
            "PROXY TCP4  192.0.2.7 198.51.100.1 56324 110\r\n",  // two spaces
            "PROXY TCP4 2001:db8::7 198.51.100.1 56324 110\r\n", // family mismatch
            "PROXY TCP6 192.0.2.7 2001:db8::1 56324 110\r\n",
            "PROXY TCP4 192.0.2.7 198.51.100.1 065535 110\r\n", // leading zero
            "PROXY TCP4 192.0.2.7 198.51.100.1 65536 110\r\n",  // out of range
            "PROXY TCP4 192.0.2.7 198.51.100.1 -1 110\r\n",
            "PROXY TCP4 192.0.2.07 198.51.100.1 1 110\r\n", // octet with a leading zero
            "PROXY UDP4 192.0.2.7 198.51.100.1 1 110\r\n",
            "PROXY tcp4 192.0.2.7 198.51.100.1 1 110\r\n",
        ] {
            assert!(matches!(v1(line), Err(Refused::Malformed(_))), "{line:?} accepted");
        }
    }

    fn v2_header(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([ver_cmd, family]);
        h.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend(body);
        h
    }

    fn ipv4_body(tlvs: &[u8]) -> Vec<u8> {
        let mut b = vec![127, 0, 0, 2, 127, 0, 0, 1, 0xdb, 0xf0, 0, 110];
        b.extend(tlvs);
        b
    }

    #[test]
    fn v2_commands_and_families() {
        assert_eq!(parse_v2(0x21, 0x11, &ipv4_body(&[])), Ok(client("127.0.0.2:56304")));
        // TLVs after the addresses are skipped, whatever they hold.
        assert_eq!(
            parse_v2(0x21, 0x11, &ipv4_body(&[0x05, 0, 3, b'a', b'b', b'c', 0xff])),
            Ok(client("127.0.0.2:56304"))
        );
        let mut v6 = vec![0u8; 36];
        v6[15] = 1;
        v6[32..34].copy_from_slice(&995u16.to_be_bytes());
        assert_eq!(parse_v2(0x21, 0x21, &v6), Ok(client("[::1]:995")));
        assert_eq!(parse_v2(0x20, 0x00, &[]), Ok(Source::Proxy), "LOCAL");
        assert_eq!(parse_v2(0x20, 0x11, &ipv4_body(&[])), Ok(Source::Proxy), "LOCAL ignores addresses");
        assert_eq!(parse_v2(0x21, 0x00, &[]), Ok(Source::Proxy), "UNSPEC");
        assert_eq!(parse_v2(0x21, 0x31, &[0; 216]), Ok(Source::Proxy), "AF_UNIX");
        for (vc, fam, body) in [
            (0x11, 0x11, ipv4_body(&[])),  // version 1 in a v2 header
            (0x22, 0x11, ipv4_body(&[])),  // unknown command
            (0x21, 0x12, ipv4_body(&[])),  // UDP
            (0x21, 0x11, vec![127, 0, 0]), // short address block
            (0x21, 0x21, vec![0; 35]),
            (0x21, 0x41, vec![]), // unknown family
        ] {
            assert!(matches!(parse_v2(vc, fam, &body), Err(Refused::Malformed(_))), "{vc:#x} {fam:#x} accepted");
        }
    }

    async fn read(bytes: &[u8]) -> (Result<Source, Refused>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(8192);
        a.write_all(bytes).await.unwrap();
        drop(a);
        let r = read_header(&mut b, Duration::from_secs(5)).await;
        let mut after = Vec::new();
        b.read_to_end(&mut after).await.unwrap();
        (r, after)
    }

    #[tokio::test]
    async fn reads_exactly_the_header_and_leaves_the_rest() {
        let (r, after) = read(b"PROXY TCP4 127.0.0.2 127.0.0.1 4000 110\r\nCAPA\r\n").await;
        assert_eq!(r, Ok(client("127.0.0.2:4000")));
        assert_eq!(after, b"CAPA\r\n");
        let (r, after) = read(b"PROXY UNKNOWN\r\n\x16\x03\x01").await;
        assert_eq!(r, Ok(Source::Proxy));
        assert_eq!(after, b"\x16\x03\x01");
        let mut v2 = v2_header(0x21, 0x11, &ipv4_body(&[0x04, 0, 1, 0]));
        v2.extend(b"\x16\x03\x01 client hello");
        let (r, after) = read(&v2).await;
        assert_eq!(r, Ok(client("127.0.0.2:56304")));
        assert_eq!(after, b"\x16\x03\x01 client hello", "TLS starts right after the header");
    }

    #[tokio::test]
    async fn refuses_missing_long_and_cut_headers() {
        assert_eq!(read(b"USER alice\r\nPASS secret\r\n").await.0, Err(Refused::Missing));
        // A v1 line that never ends within 107 bytes.
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(read(long.as_bytes()).await.0, Err(Refused::TooLong(107))));
        // A v2 header announcing more than the cap: refused before reading it.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend([0x21, 0x11, 0xff, 0xff]);
        assert_eq!(read(&big).await.0, Err(Refused::TooLong(16 + 65535)));
        // Cut short by the peer.
        assert_eq!(read(b"PROXY TCP4 127.0.0.2").await.0, Err(Refused::Lost));
        assert_eq!(read(&v2_header(0x21, 0x11, &ipv4_body(&[]))[..20]).await.0, Err(Refused::Lost));
    }

    #[tokio::test]
    async fn a_slow_header_times_out() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // Part of a header, then nothing: the peer holds the connection open.
        a.write_all(b"PROXY TCP4 127.0.0.2 ").await.unwrap();
        let r = read_header(&mut b, Duration::from_millis(200)).await;
        assert_eq!(r, Err(Refused::Timeout(Duration::from_millis(200))));
        drop(a);
    }

    #[test]
    fn trust_is_by_network_and_sees_through_mapped_ipv4() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.1/32".parse().unwrap(), "10.1.0.0/16".parse().unwrap()];
        assert!(is_trusted(&trusted, "127.0.0.1".parse().unwrap()));
        assert!(is_trusted(&trusted, "10.1.200.3".parse().unwrap()));
        assert!(is_trusted(&trusted, "::ffff:10.1.0.9".parse().unwrap()));
        assert!(!is_trusted(&trusted, "127.0.0.2".parse().unwrap()));
        assert!(!is_trusted(&trusted, "10.2.0.1".parse().unwrap()));
        assert!(!is_trusted(&[], "127.0.0.1".parse().unwrap()));
    }
}
