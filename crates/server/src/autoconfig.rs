//! Client autoconfiguration (issue 13 item 4): the documents mail clients
//! fetch to set up a POP3 account from an e-mail address and a password,
//! served by the [`http`](crate::http) listener when `[autoconfig]` is
//! configured (off by default).
//!
//! | path | for | format |
//! |---|---|---|
//! | `/mail/config-v1.1.xml`, `/.well-known/autoconfig/mail/config-v1.1.xml` | Thunderbird, K-9/Thunderbird for Android, Evolution, ... (draft-ietf-mailmaint-autoconfig) | XML `clientConfig` 1.1 |
//! | `POST /autodiscover/autodiscover.xml` (any case) | Outlook (POX Autodiscover, MS-OXDSCLI) | XML, `outlook/responseschema/2006a` |
//! | `/autodiscover/autodiscover.json[/v1.0/ADDRESS]` | Outlook (JSON Autodiscover) | JSON: only `Protocol=AutodiscoverV1`, pointing at the POX URL; other protocols 404 |
//! | `/.well-known/user-agent-configuration.json` | PACC (draft-ietf-mailmaint-pacc-02) | JSON |
//! | `/apple/pobox.mobileconfig?emailaddress=` | iOS, macOS | plist, `com.apple.mail.managed` payload (unsigned) |
//!
//! Every document names the POP3 listeners the server really has, implicit
//! TLS (995) first and STLS (110) second, and the user name that logs in:
//! by default the address's local part, since a recipient `user@domain` is
//! delivered to the passwd-file user `user` (`user+tag` to `user`); the
//! whole address with `autoconfig.username = "address"`.
//!
//! Everything here is pure: [`Offer`] in, bytes out. The documents carry
//! nothing secret; the e-mail address a client sends is escaped for the
//! format it lands in and never logged.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::http::{Handler, Limits, Request, Response};

/// What the listener serves: the server's public face.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The host name clients connect to for POP3 (and this listener).
    pub host: String,
    /// The implicit-TLS POP3 port, if a `pop3s` listener exists.
    pub pop3s_port: Option<u16>,
    /// The cleartext+STLS POP3 port, if a `pop3` listener exists.
    pub pop3_port: Option<u16>,
    /// Mail domains served; empty: any domain is accepted.
    pub domains: Vec<String>,
    /// The provider's name shown by clients.
    pub provider: String,
    /// The outgoing (submission) server users send through: pobox has none
    /// of its own.
    pub submission: Option<Submission>,
    /// What clients should do with retrieved mail (from the default
    /// retention policy).
    pub leave_on_server: LeaveOnServer,
    /// Which form of the address logs in.
    pub login: LoginForm,
}

/// The user name clients log in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoginForm {
    /// The local part without `+tag`: what delivery maps `user@domain` to,
    /// so pobox's own users (`pobox user add alice`).
    #[default]
    LocalPart,
    /// The whole address, for passwd-files whose user names are addresses
    /// (imported from a Dovecot set up that way).
    Address,
}

/// An outgoing mail server run elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// Host name.
    pub host: String,
    /// Port: 465 is implicit TLS (RFC 8314), anything else STARTTLS.
    pub port: u16,
}

impl Submission {
    /// Implicit TLS (465) rather than STARTTLS.
    #[must_use]
    pub fn implicit_tls(&self) -> bool {
        self.port == 465
    }
}

/// The client's keep-or-delete setting, derived from the server's default
/// retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveOnServer {
    /// The server keeps what clients do not delete (no EXPIRE limit), or
    /// removes it at once (EXPIRE 0): clients should delete what they
    /// retrieved.
    No,
    /// The server removes retrieved mail itself after this many days
    /// (EXPIRE n): clients may leave it, for as long.
    Days(u32),
}

/// The bounds of the autoconfig listener. A POX request is a few hundred
/// bytes; 16 KiB leaves room for clients that add more, and nothing more
/// is ever held.
pub const LIMITS: Limits =
    Limits { max_head: 8 * 1024, max_body: 16 * 1024, timeout: Duration::from_secs(10), max_connections: 64 };

/// The path of the Apple profile (pobox's own choice: Apple defines none).
pub const MOBILECONFIG_PATH: &str = "/apple/pobox.mobileconfig";
/// PACC's well-known path.
pub const PACC_PATH: &str = "/.well-known/user-agent-configuration.json";

const XML: &str = "text/xml; charset=utf-8";
const JSON: &str = "application/json";
const APPLE: &str = "application/x-apple-aspen-config";

/// The request handler for [`crate::http::serve`]. With `acme`, it also
/// answers ACME HTTP-01 challenges: the listener then shares port 80 with
/// them (see `Acme::take_http_listener`).
#[must_use]
pub fn handler(offer: Offer, acme: Option<Arc<crate::acme::Challenges>>) -> Handler {
    let offer = Arc::new(offer);
    Arc::new(move |request: &Request| match &acme {
        Some(challenges) if request.path.starts_with(crate::acme::HTTP_CHALLENGE_PREFIX) => {
            crate::acme::http_challenge_response(request, challenges)
        }
        _ => respond(&offer, request),
    })
}

/// Routes one request.
#[must_use]
pub fn respond(offer: &Offer, request: &Request) -> Response {
    let path = request.path.as_str();
    let lower = path.to_ascii_lowercase();
    let get = matches!(request.method.as_str(), "GET" | "HEAD");
    if lower == "/autodiscover/autodiscover.xml" {
        if request.method != "POST" {
            return Response::text(405, "Method Not Allowed").with_header("Allow", "POST".into());
        }
        return autodiscover_pox(offer, request);
    }
    let json_autodiscover =
        lower == "/autodiscover/autodiscover.json" || lower.starts_with("/autodiscover/autodiscover.json/v1.0/");
    let known = matches!(
        path,
        "/mail/config-v1.1.xml" | "/.well-known/autoconfig/mail/config-v1.1.xml" | PACC_PATH | MOBILECONFIG_PATH
    ) || json_autodiscover;
    if !known {
        return Response::text(404, "Not Found");
    }
    if !get {
        return Response::text(405, "Method Not Allowed").with_header("Allow", "GET, HEAD".into());
    }
    if json_autodiscover {
        return autodiscover_json(offer, request);
    }
    match path {
        PACC_PATH => match pacc_document(offer) {
            Some(doc) => Response::ok(JSON, doc),
            None => Response::text(404, "Not Found"),
        },
        MOBILECONFIG_PATH => {
            let Some(raw) = request.query_param("emailaddress") else {
                return Response::text(400, "emailaddress=ADDRESS is required");
            };
            match address(offer, &raw) {
                Ok(a) => match mobileconfig(offer, &a) {
                    Some(doc) => Response::ok(APPLE, doc)
                        .with_header("Content-Disposition", "attachment; filename=\"pobox.mobileconfig\"".into()),
                    None => Response::text(404, "Not Found"),
                },
                Err(r) => r,
            }
        }
        _ => {
            // Thunderbird: the domain from the address, else from the name
            // it asked (autoconfig.DOMAIN), else the first served domain.
            let domain = match request.query_param("emailaddress") {
                Some(raw) => match address(offer, &raw) {
                    Ok(a) => a.domain,
                    Err(r) => return r,
                },
                None => {
                    let host = request.header("host").unwrap_or_default().to_ascii_lowercase();
                    let host = host.as_str();
                    let host = host
                        .rsplit_once(':')
                        .map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
                    let from_host = host.strip_prefix("autoconfig.").filter(|d| valid_domain(d)).map(str::to_string);
                    match from_host.filter(|d| serves(offer, d)) {
                        Some(d) => d,
                        None => offer.domains.first().cloned().unwrap_or_else(|| offer.host.clone()),
                    }
                }
            };
            match thunderbird(offer, &domain) {
                Some(doc) => Response::ok(XML, doc),
                None => Response::text(404, "Not Found"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// An e-mail address a client sent, split; not yet escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// As sent (trimmed).
    pub full: String,
    /// The user name that logs in: the local part without `+tag`.
    pub login: String,
    /// Lower-cased.
    pub domain: String,
}

/// Splits and checks an address: `local@domain`, at most 254 octets, no
/// control characters or spaces, a domain that looks like one, and (when
/// `domains` is configured) a domain served here.
fn address(offer: &Offer, raw: &str) -> Result<Address, Response> {
    let full = raw.trim();
    let Some((local, domain)) = full.rsplit_once('@') else {
        return Err(Response::text(400, "not an e-mail address"));
    };
    if local.is_empty()
        || full.len() > 254
        || full.chars().any(|c| c.is_control() || c.is_whitespace())
        || !valid_domain(domain)
    {
        return Err(Response::text(400, "not an e-mail address"));
    }
    let domain = domain.to_ascii_lowercase();
    if !serves(offer, &domain) {
        return Err(Response::text(404, "domain not served here"));
    }
    let login = match offer.login {
        LoginForm::LocalPart => local.split_once('+').map_or(local, |(u, _)| u).to_string(),
        LoginForm::Address => format!("{local}@{domain}"),
    };
    Ok(Address { full: full.to_string(), login, domain })
}

fn serves(offer: &Offer, domain: &str) -> bool {
    offer.domains.is_empty() || offer.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
}

/// LDH labels (IDNs as A-labels), at most 253 octets.
fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

// ---------------------------------------------------------------------------
// Escaping
// ---------------------------------------------------------------------------

/// Text for XML element content and attribute values (also plists).
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON string literal, quotes included.
fn json(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

// ---------------------------------------------------------------------------
// Thunderbird
// ---------------------------------------------------------------------------

/// The POP3 endpoints, best first: (port, implicit TLS).
fn pop3_endpoints(offer: &Offer) -> Vec<(u16, bool)> {
    offer.pop3s_port.map(|p| (p, true)).into_iter().chain(offer.pop3_port.map(|p| (p, false))).collect()
}

/// `config-v1.1.xml` for `domain`; `None` without a POP3 listener.
#[must_use]
pub fn thunderbird(offer: &Offer, domain: &str) -> Option<String> {
    let endpoints = pop3_endpoints(offer);
    if endpoints.is_empty() {
        return None;
    }
    let mut x = String::new();
    let _ = writeln!(x, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    let _ = writeln!(x, "<clientConfig version=\"1.1\">");
    let _ = writeln!(x, "  <emailProvider id=\"{}\">", xml(domain));
    let _ = writeln!(x, "    <domain>{}</domain>", xml(domain));
    let _ = writeln!(x, "    <displayName>{}</displayName>", xml(&offer.provider));
    let _ = writeln!(x, "    <displayShortName>{}</displayShortName>", xml(&offer.provider));
    for (port, implicit) in endpoints {
        let _ = writeln!(x, "    <incomingServer type=\"pop3\">");
        let _ = writeln!(x, "      <hostname>{}</hostname>", xml(&offer.host));
        let _ = writeln!(x, "      <port>{port}</port>");
        let _ = writeln!(x, "      <socketType>{}</socketType>", if implicit { "SSL" } else { "STARTTLS" });
        // The local part logs in (see the module docs); the client fills it in.
        let placeholder = match offer.login {
            LoginForm::LocalPart => "%EMAILLOCALPART%",
            LoginForm::Address => "%EMAILADDRESS%",
        };
        let _ = writeln!(x, "      <username>{placeholder}</username>");
        let _ = writeln!(x, "      <authentication>password-cleartext</authentication>");
        let _ = writeln!(x, "      <pop3>");
        match offer.leave_on_server {
            LeaveOnServer::No => {
                let _ = writeln!(x, "        <leaveMessagesOnServer>false</leaveMessagesOnServer>");
            }
            LeaveOnServer::Days(n) => {
                let _ = writeln!(x, "        <leaveMessagesOnServer>true</leaveMessagesOnServer>");
                let _ = writeln!(x, "        <daysToLeaveMessagesOnServer>{n}</daysToLeaveMessagesOnServer>");
            }
        }
        let _ = writeln!(x, "      </pop3>");
        let _ = writeln!(x, "    </incomingServer>");
    }
    if let Some(s) = &offer.submission {
        let _ = writeln!(x, "    <outgoingServer type=\"smtp\">");
        let _ = writeln!(x, "      <hostname>{}</hostname>", xml(&s.host));
        let _ = writeln!(x, "      <port>{}</port>", s.port);
        let _ = writeln!(x, "      <socketType>{}</socketType>", if s.implicit_tls() { "SSL" } else { "STARTTLS" });
        let _ = writeln!(x, "      <username>%EMAILADDRESS%</username>");
        let _ = writeln!(x, "      <authentication>password-cleartext</authentication>");
        let _ = writeln!(x, "    </outgoingServer>");
    }
    let _ = writeln!(x, "  </emailProvider>");
    let _ = writeln!(x, "</clientConfig>");
    Some(x)
}

// ---------------------------------------------------------------------------
// Microsoft Autodiscover
// ---------------------------------------------------------------------------

const POX_RESPONSE_NS: &str = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006";
const POX_OUTLOOK_NS: &str = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";

/// `POST /autodiscover/autodiscover.xml`: the request body names the
/// address (`<EMailAddress>`); the answer lists the POP3 endpoints.
fn autodiscover_pox(offer: &Offer, request: &Request) -> Response {
    let body = String::from_utf8_lossy(&request.body);
    let Some(raw) = element_text(&body, "EMailAddress") else {
        return Response::text(400, "the request names no EMailAddress");
    };
    let a = match address(offer, &raw) {
        Ok(a) => a,
        Err(r) => return r,
    };
    match autodiscover_xml(offer, &a) {
        Some(doc) => Response::ok("application/xml; charset=utf-8", doc),
        None => Response::text(404, "Not Found"),
    }
}

/// The POX response document; `None` without a POP3 listener.
#[must_use]
pub fn autodiscover_xml(offer: &Offer, a: &Address) -> Option<String> {
    let endpoints = pop3_endpoints(offer);
    if endpoints.is_empty() {
        return None;
    }
    let mut x = String::new();
    let _ = writeln!(x, "<?xml version=\"1.0\" encoding=\"utf-8\"?>");
    let _ = writeln!(x, "<Autodiscover xmlns=\"{POX_RESPONSE_NS}\">");
    let _ = writeln!(x, "  <Response xmlns=\"{POX_OUTLOOK_NS}\">");
    let _ = writeln!(x, "    <Account>");
    let _ = writeln!(x, "      <AccountType>email</AccountType>");
    let _ = writeln!(x, "      <Action>settings</Action>");
    let mut protocol = |kind: &str, host: &str, port: u16, implicit: bool, login: &str| {
        let _ = writeln!(x, "      <Protocol>");
        let _ = writeln!(x, "        <Type>{kind}</Type>");
        let _ = writeln!(x, "        <Server>{}</Server>", xml(host));
        let _ = writeln!(x, "        <Port>{port}</Port>");
        let _ = writeln!(x, "        <LoginName>{}</LoginName>", xml(login));
        let _ = writeln!(x, "        <DomainRequired>off</DomainRequired>");
        let _ = writeln!(x, "        <SPA>off</SPA>");
        // MS-OXDSCLI: Encryption overrides SSL; "SSL" is TLS from the
        // first byte, "TLS" is STARTTLS.
        let _ = writeln!(x, "        <SSL>on</SSL>");
        let _ = writeln!(x, "        <Encryption>{}</Encryption>", if implicit { "SSL" } else { "TLS" });
        let _ = writeln!(x, "        <AuthRequired>on</AuthRequired>");
        let _ = writeln!(x, "      </Protocol>");
    };
    for (port, implicit) in endpoints {
        protocol("POP3", &offer.host, port, implicit, &a.login);
    }
    if let Some(s) = &offer.submission {
        protocol("SMTP", &s.host, s.port, s.implicit_tls(), &a.full);
    }
    let _ = writeln!(x, "    </Account>");
    let _ = writeln!(x, "  </Response>");
    let _ = writeln!(x, "</Autodiscover>");
    Some(x)
}

/// The text of the first element named `name` (any namespace prefix),
/// with XML's predefined entities decoded; `None` if absent or holding
/// markup or another reference (no DTD, no entity expansion: this is not
/// an XML parser and accepts nothing it does not need).
fn element_text(doc: &str, name: &str) -> Option<String> {
    let mut rest = doc;
    loop {
        let open = rest.find('<')?;
        rest = &rest[open + 1..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        let local = tag.rsplit_once(':').map_or(tag, |(_, l)| l);
        if local == name {
            let text = &rest[end + 1..];
            let text = &text[..text.find('<')?];
            return decode_entities(text);
        }
    }
}

fn decode_entities(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let semi = rest.find(';')?;
        out.push(match &rest[..=semi] {
            "&lt;" => '<',
            "&gt;" => '>',
            "&amp;" => '&',
            "&quot;" => '"',
            "&apos;" => '\'',
            _ => return None,
        });
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// `autodiscover.json`: Outlook asks it for the URL of a protocol's
/// endpoint. pobox has one: `AutodiscoverV1`, the POX document above (on
/// this listener's HTTPS name). Exchange-only protocols (`ActiveSync`,
/// `Ews`, `Rest`, ...) get 404 with a JSON error, so the client moves on.
fn autodiscover_json(offer: &Offer, request: &Request) -> Response {
    // In a path `+` is itself (unlike in a query).
    let from_path = request
        .path
        .splitn(5, '/')
        .nth(4)
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned());
    let Some(raw) = from_path.filter(|s| !s.is_empty()).or_else(|| request.query_param("Email")) else {
        return json_error(400, "MissingEmail", "give the address as ?Email= or in the path");
    };
    if let Err(r) = address(offer, &raw) {
        return r;
    }
    let protocol = request.query_param("Protocol").unwrap_or_default();
    if !protocol.eq_ignore_ascii_case("AutodiscoverV1") || pop3_endpoints(offer).is_empty() {
        return json_error(404, "ProtocolNotSupported", "this server offers POP3 only: use Protocol=AutodiscoverV1");
    }
    let url = format!("https://{}/autodiscover/autodiscover.xml", offer.host);
    Response::ok(JSON, format!("{{\"Protocol\":\"AutodiscoverV1\",\"Url\":{}}}", json(&url)))
}

fn json_error(status: u16, code: &str, message: &str) -> Response {
    Response {
        status,
        ..Response::ok(JSON, format!("{{\"ErrorCode\":{},\"ErrorMessage\":{}}}", json(code), json(message)))
    }
}

// ---------------------------------------------------------------------------
// PACC
// ---------------------------------------------------------------------------

/// The PACC document (draft-ietf-mailmaint-pacc-02): `protocols.pop3.host`
/// with implicit TLS on the standard port 995, so only when a `pop3s`
/// listener exists on 995 (PACC has no port or STARTTLS field).
/// Deterministic bytes: its SHA-256 goes into the `_ua-auto-config` TXT
/// record ([`pacc_txt`]), and a client refuses a document whose digest
/// differs.
#[must_use]
pub fn pacc_document(offer: &Offer) -> Option<String> {
    if offer.pop3s_port != Some(995) {
        return None;
    }
    let mut protocols = format!("\"pop3\":{{\"host\":{}}}", json(&offer.host));
    if let Some(s) = offer.submission.as_ref().filter(|s| s.port == 465) {
        let _ = write!(protocols, ",\"smtp\":{{\"host\":{}}}", json(&s.host));
    }
    Some(format!(
        "{{\"protocols\":{{{protocols}}},\"authentication\":{{\"password\":true}},\"info\":{{\"provider\":{{\"name\":{}}}}}}}\n",
        json(&offer.provider)
    ))
}

/// The `_ua-auto-config.DOMAIN` TXT value vouching for [`pacc_document`].
#[must_use]
pub fn pacc_txt(offer: &Offer) -> Option<String> {
    use base64::Engine as _;
    let doc = pacc_document(offer)?;
    let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(doc.as_bytes()));
    Some(format!("v=UAAC1; a=sha256; d={digest}"))
}

// ---------------------------------------------------------------------------
// Apple
// ---------------------------------------------------------------------------

/// A configuration profile with one `com.apple.mail.managed` POP payload
/// for `a`; `None` without a POP3 listener. Unsigned: the device shows it
/// as "Unverified" (signing needs a key the admin holds, not ours).
#[must_use]
pub fn mobileconfig(offer: &Offer, a: &Address) -> Option<String> {
    let (port, implicit) = *pop3_endpoints(offer).first()?;
    // Reverse-DNS style: the user part reduced to letters, digits and '-'.
    let user: String = a.login.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let id = format!("{}.pobox.{user}", reverse(&offer.host));
    let mut mail = vec![
        ("EmailAccountDescription", string(&a.full)),
        ("EmailAccountType", string("EmailTypePOP")),
        ("EmailAddress", string(&a.full)),
        ("IncomingMailServerAuthentication", string("EmailAuthPassword")),
        ("IncomingMailServerHostName", string(&offer.host)),
        ("IncomingMailServerPortNumber", format!("<integer>{port}</integer>")),
        // On 110 Apple Mail upgrades with STLS when SSL is on.
        ("IncomingMailServerUseSSL", "<true/>".into()),
        ("IncomingMailServerUsername", string(&a.login)),
        ("PayloadDescription", string(&format!("POP3 account {} ({})", a.full, if implicit { "TLS" } else { "STLS" }))),
        ("PayloadDisplayName", string(&a.full)),
        ("PayloadIdentifier", string(&format!("{id}.mail"))),
        ("PayloadType", string("com.apple.mail.managed")),
        ("PayloadUUID", string(&uuid(&[&offer.host, &a.full, "mail"]))),
        ("PayloadVersion", "<integer>1</integer>".into()),
    ];
    if let Some(s) = &offer.submission {
        mail.extend([
            ("OutgoingMailServerAuthentication", string("EmailAuthPassword")),
            ("OutgoingMailServerHostName", string(&s.host)),
            ("OutgoingMailServerPortNumber", format!("<integer>{}</integer>", s.port)),
            ("OutgoingMailServerUseSSL", "<true/>".into()),
            ("OutgoingMailServerUsername", string(&a.full)),
        ]);
    }
    mail.sort_by_key(|(k, _)| *k);
    let mut x = String::new();
    let _ = writeln!(x, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    let _ = writeln!(
        x,
        "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">"
    );
    let _ = writeln!(x, "<plist version=\"1.0\">");
    let _ = writeln!(x, "<dict>");
    let _ = writeln!(x, "  <key>PayloadContent</key>");
    let _ = writeln!(x, "  <array>");
    let _ = writeln!(x, "    <dict>");
    for (k, v) in mail {
        let _ = writeln!(x, "      <key>{k}</key>");
        let _ = writeln!(x, "      {v}");
    }
    let _ = writeln!(x, "    </dict>");
    let _ = writeln!(x, "  </array>");
    for (k, v) in [
        ("PayloadDisplayName", string(&format!("{} mail", offer.provider))),
        ("PayloadIdentifier", string(&id)),
        ("PayloadRemovalDisallowed", "<false/>".into()),
        ("PayloadType", string("Configuration")),
        ("PayloadUUID", string(&uuid(&[&offer.host, &a.full, "profile"]))),
        ("PayloadVersion", "<integer>1</integer>".into()),
    ] {
        let _ = writeln!(x, "  <key>{k}</key>");
        let _ = writeln!(x, "  {v}");
    }
    let _ = writeln!(x, "</dict>");
    let _ = writeln!(x, "</plist>");
    Some(x)
}

fn string(s: &str) -> String {
    format!("<string>{}</string>", xml(s))
}

/// `mail.example.org` → `org.example.mail` (profile identifiers).
fn reverse(host: &str) -> String {
    host.split('.').rev().collect::<Vec<_>>().join(".")
}

/// A stable UUID (RFC 9562 version 8, from SHA-256 of the parts): the same
/// account gets the same payload UUID, so installing the profile again
/// replaces the account instead of adding a second one.
fn uuid(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let mut b: [u8; 16] = h.finalize()[..16].try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex::encode_upper(b);
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            host: "mail.example.org".into(),
            pop3s_port: Some(995),
            pop3_port: Some(110),
            domains: vec!["example.org".into()],
            provider: "Example".into(),
            submission: None,
            leave_on_server: LeaveOnServer::No,
            login: LoginForm::LocalPart,
        }
    }

    fn get(path: &str) -> Response {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        respond(
            &offer(),
            &Request { method: "GET".into(), path: path.into(), query: query.into(), ..Request::default() },
        )
    }

    #[test]
    fn thunderbird_lists_implicit_tls_first_then_stls() {
        let r = get("/mail/config-v1.1.xml?emailaddress=alice%40example.org");
        assert_eq!(r.status, 200);
        let doc = String::from_utf8(r.body).unwrap();
        let ssl = doc.find("<socketType>SSL</socketType>").unwrap();
        let stls = doc.find("<socketType>STARTTLS</socketType>").unwrap();
        assert!(ssl < stls, "{doc}");
        assert!(doc.contains("<port>995</port>") && doc.contains("<username>%EMAILLOCALPART%</username>"));
    }

    #[test]
    fn only_enabled_listeners_are_named() {
        let o = Offer { pop3_port: None, ..offer() };
        let doc = thunderbird(&o, "example.org").unwrap();
        assert!(!doc.contains("STARTTLS") && !doc.contains("<port>110</port>"), "{doc}");
        let o = Offer { pop3s_port: None, ..offer() };
        assert!(pacc_document(&o).is_none(), "PACC cannot express STLS on 110");
        let none = Offer { pop3s_port: None, pop3_port: None, ..offer() };
        assert!(thunderbird(&none, "example.org").is_none());
    }

    #[test]
    fn foreign_domains_and_non_addresses_are_refused() {
        assert_eq!(get("/mail/config-v1.1.xml?emailaddress=a%40other.example").status, 404);
        assert_eq!(get("/mail/config-v1.1.xml?emailaddress=nobody").status, 400);
        assert_eq!(get("/mail/config-v1.1.xml?emailaddress=a%20b%40example.org").status, 400);
        assert_eq!(get("/mail/../../etc/passwd").status, 404);
    }

    #[test]
    fn the_whole_address_logs_in_when_configured() {
        let o = Offer { login: LoginForm::Address, ..offer() };
        assert!(thunderbird(&o, "example.org").unwrap().contains("<username>%EMAILADDRESS%</username>"));
        let a = address(&o, "bob+x@Example.org").unwrap();
        assert_eq!(a.login, "bob+x@example.org");
        assert!(autodiscover_xml(&o, &a).unwrap().contains("<LoginName>bob+x@example.org</LoginName>"));
    }

    #[test]
    fn the_pox_request_address_is_read_and_its_local_part_logs_in() {
        let body = "<?xml version=\"1.0\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\"><Request><EMailAddress>bob+news@Example.org</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>";
        let r = respond(
            &offer(),
            &Request {
                method: "POST".into(),
                path: "/AutoDiscover/AutoDiscover.xml".into(),
                body: body.into(),
                ..Request::default()
            },
        );
        assert_eq!(r.status, 200);
        let doc = String::from_utf8(r.body).unwrap();
        assert!(doc.contains("<LoginName>bob</LoginName>"), "{doc}");
        assert!(doc.contains("<Encryption>SSL</Encryption>") && doc.contains("<Encryption>TLS</Encryption>"));
    }

    #[test]
    fn entities_are_decoded_and_anything_else_refused() {
        assert_eq!(
            element_text("<a:EMailAddress>x&amp;y@z</a:EMailAddress>", "EMailAddress").as_deref(),
            Some("x&y@z")
        );
        assert_eq!(element_text("<EMailAddress>&xxe;</EMailAddress>", "EMailAddress"), None);
        assert_eq!(element_text("<Other>x</Other>", "EMailAddress"), None);
    }

    #[test]
    fn the_pacc_digest_is_the_documents() {
        use base64::Engine as _;
        let doc = pacc_document(&offer()).unwrap();
        let txt = pacc_txt(&offer()).unwrap();
        let d = txt.strip_prefix("v=UAAC1; a=sha256; d=").unwrap();
        let digest = base64::engine::general_purpose::STANDARD.decode(d).unwrap();
        assert_eq!(digest, Sha256::digest(doc.as_bytes()).to_vec());
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["protocols"]["pop3"]["host"], "mail.example.org");
    }

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let u = uuid(&["a", "b"]);
        assert_eq!(u, uuid(&["a", "b"]));
        assert_ne!(u, uuid(&["ab", ""]));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8");
    }
}
