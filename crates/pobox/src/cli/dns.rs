//! `pobox dns`: the DNS records an admin should publish for each mail
//! domain, derived from the same configuration `pobox serve` reads (not
//! from `serve`'s command-line flags, which it cannot see).
//!
//! - MX → the host name, only when an SMTP listener is configured.
//! - RFC 6186 SRV: `_pop3s._tcp` (priority 0) and `_pop3._tcp` (priority
//!   10, so implicit TLS is preferred, RFC 8314 §5.1); a service that is not
//!   offered gets target `.` (RFC 2782: "decidedly not available"), so
//!   clients do not guess it.
//! - `autoconfig.`, `autodiscover.`, `ua-auto-config.` names and
//!   `_autodiscover._tcp` SRV, only for the autoconfig listeners that exist
//!   (Autodiscover and PACC need HTTPS).
//! - The PACC `_ua-auto-config` TXT digest of the exact document served.
//! - CAA for the ACME CA when `[acme]` is configured.

use std::net::IpAddr;
use std::path::Path;

use anyhow::bail;
use clap::Args;
use pobox_server::ListenAddr;

use crate::config::Settings;

/// Arguments of `pobox dns`.
#[derive(Debug, Clone, Args)]
pub struct DnsArgs {
    /// A mail domain to print records for (repeatable); default: the
    /// config's `domains`.
    #[arg(long = "domain", value_name = "DOMAIN")]
    domains: Vec<String>,
    /// Print JSON (`{"records": [...], "notes": [...]}`) instead of zone-file lines.
    #[arg(long)]
    json: bool,
}

/// One resource record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// Owner name, fully qualified with the trailing dot.
    pub name: String,
    /// Seconds.
    pub ttl: u32,
    /// `MX`, `SRV`, `CNAME`, `TXT`, `CAA`, `A`, `AAAA`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The RDATA in zone-file syntax.
    pub value: String,
}

const TTL: u32 = 3600;

/// Prints the records.
///
/// # Errors
/// A configuration error, or no domain to print records for.
pub fn run(data: &Path, config: Option<&Path>, args: DnsArgs) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    let domains: Vec<String> = if args.domains.is_empty() { settings.server.domains.clone() } else { args.domains };
    if domains.is_empty() {
        bail!("no mail domain: pass --domain example.org, or set `domains` in the config");
    }
    let mut records = Vec::new();
    let mut notes = Vec::new();
    for d in &domains {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        if !valid_name(&d) {
            bail!("--domain {d:?}: not a DNS name");
        }
        let (r, n) = records_for(&settings, &d);
        records.extend(r);
        notes.extend(n);
    }
    // Written, not println!: a closed pipe (`| head`) is an error, not a panic.
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "records": records, "notes": notes }))?;
        return Ok(());
    }
    let source = config.map_or_else(|| "the built-in defaults".to_string(), |p| p.display().to_string());
    writeln!(out, "; DNS records for {} (pobox dns, from {source})", domains.join(", "))?;
    for n in &notes {
        writeln!(out, "; {n}")?;
    }
    let width = records.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &records {
        writeln!(out, "{:<width$} {} IN {:<5} {}", r.name, r.ttl, r.kind, r.value)?;
    }
    Ok(())
}

fn valid_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The records and notes for one domain.
#[must_use]
pub fn records_for(settings: &Settings, domain: &str) -> (Vec<Record>, Vec<String>) {
    let offer = settings.autoconfig_offer();
    let host = format!("{}.", offer.host);
    let mut records = Vec::new();
    let mut notes = Vec::new();
    let mut add =
        |name: String, kind: &'static str, value: String| records.push(Record { name, ttl: TTL, kind, value });

    // The host itself: addresses only when a listener names a public one.
    let mut addrs: Vec<IpAddr> = [&settings.pop3, &settings.pop3s, &settings.smtp]
        .into_iter()
        .flatten()
        .filter_map(|a| match a {
            ListenAddr::Tcp(sa) if !sa.ip().is_unspecified() && !sa.ip().is_loopback() => Some(sa.ip()),
            _ => None,
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        notes.push(format!("{host} needs A/AAAA records with this server's public address(es)"));
    }
    for ip in addrs {
        add(host.clone(), if ip.is_ipv4() { "A" } else { "AAAA" }, ip.to_string());
    }

    // Mail from the Internet arrives on port 25 of the MX host.
    if let Some(port) = crate::config::preferred_port(&settings.smtp, 25) {
        add(format!("{domain}."), "MX", format!("10 {host}"));
        if port != 25 {
            notes.push(format!("SMTP listens on port {port}, but other servers deliver to port 25 of the MX host"));
        }
    }

    // RFC 6186 §3.2/3.4; "." = not offered (RFC 2782).
    match offer.pop3s_port {
        Some(p) => add(format!("_pop3s._tcp.{domain}."), "SRV", format!("0 1 {p} {host}")),
        None => add(format!("_pop3s._tcp.{domain}."), "SRV", "0 0 0 .".into()),
    }
    match offer.pop3_port {
        Some(p) => add(format!("_pop3._tcp.{domain}."), "SRV", format!("10 1 {p} {host}")),
        None => add(format!("_pop3._tcp.{domain}."), "SRV", "0 0 0 .".into()),
    }

    // Client autoconfiguration: names only for listeners that exist.
    let ac = &settings.autoconfig;
    let https_port =
        ac.listen_tls.iter().map(|a| a.port()).find(|&p| p == 443).or_else(|| ac.listen_tls.first().map(|a| a.port()));
    let cname = |label: &str| -> Option<(String, String)> {
        let name = format!("{label}.{domain}.");
        // A CNAME from the host's own name to itself would be a loop.
        (name != host).then_some((name, host.clone()))
    };
    let mut https_names = Vec::new();
    if ac.enabled() {
        if let Some((name, target)) = cname("autoconfig") {
            add(name, "CNAME", target);
        }
        https_names.push(format!("autoconfig.{domain}"));
        if !ac.listen.iter().any(|a| a.port() == 80) && https_port != Some(443) {
            notes.push("Thunderbird fetches autoconfig from ports 443 and 80 only: listen on one of them".into());
        }
    }
    if let Some(port) = https_port {
        if let Some((name, target)) = cname("autodiscover") {
            add(name, "CNAME", target);
        }
        add(format!("_autodiscover._tcp.{domain}."), "SRV", format!("0 1 {port} {host}"));
        https_names.push(format!("autodiscover.{domain}"));
        if let Some(txt) = pobox_server::autoconfig::pacc_txt(&offer) {
            if let Some((name, target)) = cname("ua-auto-config") {
                add(name, "CNAME", target);
            }
            add(format!("_ua-auto-config.{domain}."), "TXT", format!("\"{txt}\""));
            https_names.push(format!("ua-auto-config.{domain}"));
            if port != 443 {
                notes.push("PACC clients fetch from port 443 only: listen_tls should include it".into());
            }
        }
        notes.push(format!(
            "the HTTPS certificate must cover {} (add them to acme.domains or to your certificate)",
            https_names.join(", ")
        ));
    }

    // CAA (RFC 8659): only the configured ACME CA may issue.
    if let Some(acme) = &settings.acme {
        match caa_issuer(&acme.directory) {
            Some(ca) => add(format!("{domain}."), "CAA", format!("0 issue \"{ca}\"")),
            None => notes.push(format!(
                "CAA: publish `{domain}. CAA 0 issue \"<CA domain>\"` with the issuer domain your CA documents for {}",
                acme.directory
            )),
        }
    }
    (records, notes)
}

/// The CAA issuer domain of well-known ACME CAs.
fn caa_issuer(directory: &str) -> Option<&'static str> {
    let host = directory.strip_prefix("https://")?.split(['/', ':']).next()?;
    [
        ("letsencrypt.org", "letsencrypt.org"),
        ("zerossl.com", "sectigo.com"),
        ("pki.goog", "pki.goog"),
        ("buypass.com", "buypass.com"),
    ]
    .into_iter()
    .find(|(suffix, _)| host == *suffix || host.ends_with(&format!(".{suffix}")))
    .map(|(_, ca)| ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_cas_get_their_caa_domain() {
        assert_eq!(caa_issuer(pobox_server::acme::LETS_ENCRYPT), Some("letsencrypt.org"));
        assert_eq!(caa_issuer(pobox_server::acme::LETS_ENCRYPT_STAGING), Some("letsencrypt.org"));
        assert_eq!(caa_issuer("https://acme.zerossl.com/v2/DV90"), Some("sectigo.com"));
        assert_eq!(caa_issuer("https://127.0.0.1:14000/dir"), None);
        assert_eq!(caa_issuer("https://evil-letsencrypt.org/dir"), None);
    }
}
