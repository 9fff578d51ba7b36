//! The fetcher's configuration file: one TOML table per account.
//!
//! ```toml
//! state_dir = "/home/me/.local/state/pobox/fetch"   # optional
//!
//! [accounts.work]
//! host = "pop.example.com"
//! port = 995                     # default: 995 for tls, 110 otherwise
//! security = "tls"               # "tls" (default) | "starttls" | "none"
//! allow_insecure = false         # "none" needs this set to true
//! user = "me"
//! password_command = "pass show mail/work"   # or password = "...", or neither: prompt
//! auth = "auto"                  # auto | user | plain | login | scram-sha-256 | xoauth2 | oauthbearer | oauth2
//! ca_file = "/etc/ssl/my-ca.pem" # extra trust anchors (PEM)
//! fingerprint = "sha256:AB:CD:…" # pin the server certificate instead of trusting CAs
//! maildir = "~/Mail/work"        # default ~/Mail/<account>; or mbox = "…" or mda = "…"
//! keep = false                   # true: leave mail on the server, fetch only new UIDLs
//! delete_after_days = 14         # keep on the server this long after download
//! max_size = 10485760            # octets; larger messages are skipped…
//! oversize = "skip"              # …or only their headers fetched ("headers")
//! poll_interval = 300            # --daemon: seconds between polls (also top-level)
//! on_new_mail = ["notify-send", "mail"]  # argv run after new mail (also top-level)
//!
//! [accounts.outlook.oauth]       # built-in OAuth2 (auth = "oauth2"), see `oauth`
//! provider = "microsoft"         # microsoft | google | custom
//! client_id = "…"
//! ```
//!
//! The raw serde structs are turned into validated [`Account`]s here, so the
//! rest of the crate never sees a contradictory setting (two destinations,
//! `security = "none"` without the opt-in, a malformed pin).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, reported before any connection is made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        source: Box<toml::de::Error>,
    },
    /// A setting is invalid; the text says which and why.
    #[error("account {account:?}: {reason}")]
    Invalid {
        /// The account's name.
        account: String,
        /// What is wrong.
        reason: String,
    },
    /// An account named on the command line is not in the file.
    #[error("no account {0:?} in the configuration")]
    UnknownAccount(String),
    /// The file defines no account.
    #[error("the configuration defines no [accounts.NAME] table")]
    NoAccounts,
    /// The file holds a password and others may read it.
    #[error(
        "{path} holds a password and can be read by others (mode {mode:04o}); \
         refusing to use it. Fix: chmod 600 {path}"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No home directory to expand `~` or find defaults in.
    #[error("cannot find the home directory (HOME is not set)")]
    NoHome,
}

/// A starting accounts file, printed when there is none.
pub const STARTER: &str = r#"# ~/.config/pobox/fetch.toml: one [accounts.NAME] table per mailbox.
[accounts.work]
host = "pop.example.com"
user = "me@example.com"
password_command = "pass show mail/work"   # or password = "..." (then chmod 600 this file)
maildir = "~/Mail/work"                    # or mbox = "~/mbox", or mda = "procmail"
# security = "tls"                         # port 995; "starttls" for port 110
# keep = true                              # leave mail on the server, fetch only new mail
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    /// Default `poll_interval` for `--daemon` (seconds).
    poll_interval: Option<u64>,
    /// Default `on_new_mail` command (argv, no shell).
    on_new_mail: Option<Vec<String>>,
    #[serde(default)]
    accounts: BTreeMap<String, RawAccount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    host: String,
    port: Option<u16>,
    #[serde(default)]
    security: Security,
    #[serde(default)]
    allow_insecure: bool,
    user: String,
    password: Option<String>,
    password_command: Option<String>,
    #[serde(default)]
    auth: AuthMethod,
    ca_file: Option<PathBuf>,
    fingerprint: Option<String>,
    tls_server_name: Option<String>,
    maildir: Option<PathBuf>,
    mbox: Option<PathBuf>,
    mda: Option<String>,
    #[serde(default)]
    keep: bool,
    delete_after_days: Option<u32>,
    max_size: Option<u64>,
    #[serde(default)]
    oversize: Oversize,
    timeout_secs: Option<u64>,
    pipeline_depth: Option<usize>,
    /// `[accounts.NAME.oauth]`: built-in OAuth2 (see `oauth`).
    oauth: Option<crate::oauth::RawOAuth>,
    poll_interval: Option<u64>,
    on_new_mail: Option<Vec<String>>,
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte (RFC 8314, port 995). The default.
    #[default]
    Tls,
    /// Plain connection upgraded with STLS (RFC 2595); the upgrade is
    /// mandatory, never opportunistic.
    Starttls,
    /// No encryption at all; needs `allow_insecure = true`.
    None,
}

/// Which authentication to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// The strongest the server offers: SCRAM-SHA-256, then PLAIN, then
    /// USER/PASS, then LOGIN.
    #[default]
    Auto,
    /// `USER` / `PASS` (RFC 1939 §7).
    User,
    /// SASL PLAIN (RFC 4616).
    Plain,
    /// SASL LOGIN (draft-murchison-sasl-login).
    Login,
    /// SASL SCRAM-SHA-256 (RFC 7677).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// Google/Microsoft XOAUTH2, the token coming from `password_command`.
    Xoauth2,
    /// OAUTHBEARER (RFC 7628), the token coming from `password_command`.
    Oauthbearer,
    /// OAUTHBEARER if the server offers it, else XOAUTH2; the token comes
    /// from the built-in OAuth client (`[accounts.NAME.oauth]`).
    #[serde(rename = "oauth2")]
    Oauth2,
}

/// What to do with a message larger than `max_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversize {
    /// Leave it on the server untouched.
    #[default]
    Skip,
    /// Store its header (`TOP n 0`) locally; leave it on the server.
    Headers,
}

/// Where fetched messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A Maildir (created if missing).
    Maildir(PathBuf),
    /// An mbox file (mboxrd quoting, locked while appending).
    Mbox(PathBuf),
    /// A command run with `sh -c`, the message on its stdin.
    Mda(String),
}

/// Where the password (or OAuth token) comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// Written in the config file.
    Inline(String),
    /// First line of this command's standard output.
    Command(String),
    /// Asked on the terminal.
    Prompt,
    /// An access token from the built-in OAuth client (`Account::oauth`).
    OAuth2,
}

impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::Inline(_) => f.write_str("Inline([redacted])"),
            PasswordSource::Command(c) => f.debug_tuple("Command").field(c).finish(),
            PasswordSource::Prompt => f.write_str("Prompt"),
            PasswordSource::OAuth2 => f.write_str("OAuth2"),
        }
    }
}

/// Server-side retention after a message is safely stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// DELE right after the message is stored and journalled.
    Delete,
    /// Leave it; fetch only UIDLs not seen before.
    Keep,
    /// Leave it for this many days after the first download, then DELE.
    DeleteAfterDays(u32),
}

/// A validated account.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// The table name, `[accounts.NAME]`.
    pub name: String,
    /// Server host name (also the name checked in its certificate).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Connection protection.
    pub security: Security,
    /// Login name.
    pub user: String,
    /// Password or token source.
    pub password: PasswordSource,
    /// Authentication method.
    pub auth: AuthMethod,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// SHA-256 pin of the server's end-entity certificate.
    pub fingerprint: Option<[u8; 32]>,
    /// Name to verify in the certificate, when it differs from `host`.
    pub tls_server_name: Option<String>,
    /// Where messages go.
    pub destination: Destination,
    /// What happens on the server after download.
    pub retention: Retention,
    /// Largest message fetched in full, in POP3 octets.
    pub max_size: Option<u64>,
    /// What to do with larger ones.
    pub oversize: Oversize,
    /// Per-read and per-write network timeout.
    pub timeout: Duration,
    /// Most commands in flight when the server offers PIPELINING.
    pub pipeline_depth: usize,
    /// Built-in OAuth2 settings (with `auth = "oauth2"`).
    pub oauth: Option<crate::oauth::OAuthSettings>,
    /// `--daemon`: time between polls of this account (before the daemon's
    /// minimum is applied).
    pub poll_interval: Duration,
    /// Command run (argv, no shell) after a run that stored new mail.
    pub on_new_mail: Option<Vec<String>>,
}

impl Account {
    /// A stable identity for the mailbox this account reads: `user@host`.
    /// Message names and the journal are keyed on it rather than on the
    /// account's label, so renaming the table does not re-download mail;
    /// the port is left out because moving from STARTTLS on 110 to TLS on
    /// 995 reaches the same maildrop.
    pub fn identity(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }
}

/// The whole validated file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for journals and locks.
    pub state_dir: PathBuf,
    /// Accounts in name order.
    pub accounts: Vec<Account>,
}

impl Config {
    /// The default config file: `$XDG_CONFIG_HOME/pobox/fetch.toml`, else
    /// `~/.config/pobox/fetch.toml`.
    ///
    /// # Errors
    /// [`ConfigError::NoHome`] when neither variable is set.
    pub fn default_path() -> Result<PathBuf, ConfigError> {
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("pobox/fetch.toml"));
        }
        Ok(home()?.join(".config/pobox/fetch.toml"))
    }

    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or account at fault.
    ///
    /// A file with an inline `password` that group or others may read is
    /// refused, as mpop refuses one: the fix is one `chmod`, and a
    /// password already exposed should be changed anyway.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| ConfigError::Read { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(read)?;
        let mode = file.metadata().map_err(read)?.permissions().mode();
        let text = std::io::read_to_string(file).map_err(read)?;
        let config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: path.to_owned(), source },
            other => other,
        })?;
        if mode & 0o077 != 0 && config.accounts.iter().any(|a| matches!(a.password, PasswordSource::Inline(_))) {
            return Err(ConfigError::Exposed { path: path.to_owned(), mode: mode & 0o7777 });
        }
        Ok(config)
    }

    /// Parses and validates config text.
    ///
    /// # Errors
    /// [`ConfigError`] for syntax errors, unknown keys and invalid settings.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), source: Box::new(e) })?;
        if raw.accounts.is_empty() {
            return Err(ConfigError::NoAccounts);
        }
        let state_dir = match raw.state_dir {
            Some(p) => expand_tilde(&p)?,
            None => default_state_dir()?,
        };
        let mut accounts = raw
            .accounts
            .into_iter()
            .map(|(name, a)| validate(name, a))
            .collect::<Result<Vec<_>, _>>()?;
        // Defaults from the top level, and the per-account token file under
        // the state dir (`validate` does not know it).
        for a in &mut accounts {
            if let Some(o) = &mut a.oauth {
                o.token_file = state_dir.join("oauth").join(format!("{}.json", a.name));
            }
            if a.on_new_mail.is_none() {
                a.on_new_mail.clone_from(&raw.on_new_mail);
            }
            if a.poll_interval.is_zero() {
                a.poll_interval = Duration::from_secs(raw.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL));
            }
        }
        if raw.poll_interval == Some(0) {
            return Err(ConfigError::Invalid { account: "*".into(), reason: "poll_interval must be at least 1 second".into() });
        }
        if raw.on_new_mail.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::Invalid { account: "*".into(), reason: "on_new_mail is an empty command".into() });
        }
        Ok(Config { state_dir, accounts })
    }

    /// The accounts named (all of them when `names` is empty), in the
    /// order given.
    ///
    /// # Errors
    /// [`ConfigError::UnknownAccount`] for a name not in the file.
    pub fn select(&self, names: &[String]) -> Result<Vec<Account>, ConfigError> {
        if names.is_empty() {
            return Ok(self.accounts.clone());
        }
        names
            .iter()
            .map(|n| {
                self.accounts
                    .iter()
                    .find(|a| &a.name == n)
                    .cloned()
                    .ok_or_else(|| ConfigError::UnknownAccount(n.clone()))
            })
            .collect()
    }
}

fn validate(name: String, a: RawAccount) -> Result<Account, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { account: name.clone(), reason };
    // The name ends up in file names (journal, default Maildir).
    if name.is_empty()
        || name.starts_with('.')
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@+".contains(&b))
    {
        return Err(invalid("account names may use letters, digits and . _ - @ + only".into()));
    }
    if a.host.is_empty() {
        return Err(invalid("host is empty".into()));
    }
    if a.security == Security::None && !a.allow_insecure {
        return Err(invalid(
            "security = \"none\" sends the password in clear text; add allow_insecure = true if you really mean it"
                .into(),
        ));
    }
    if a.security == Security::None && (a.ca_file.is_some() || a.fingerprint.is_some()) {
        return Err(invalid("ca_file/fingerprint make no sense with security = \"none\"".into()));
    }
    let oauth = a.oauth.map(|o| o.validate()).transpose().map_err(invalid)?;
    let auth = match (a.auth, &oauth) {
        (AuthMethod::Auto | AuthMethod::Oauth2, Some(_)) => AuthMethod::Oauth2,
        (AuthMethod::Xoauth2 | AuthMethod::Oauthbearer, Some(_)) => a.auth,
        (_, Some(_)) => return Err(invalid("an [oauth] table needs auth = \"oauth2\" (or xoauth2/oauthbearer)".into())),
        (AuthMethod::Oauth2, None) => {
            return Err(invalid("auth = \"oauth2\" needs an [accounts.NAME.oauth] table (provider, client_id)".into()));
        }
        (m, None) => m,
    };
    if a.on_new_mail.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid("on_new_mail is an empty command".into()));
    }
    if a.poll_interval == Some(0) {
        return Err(invalid("poll_interval must be at least 1 second".into()));
    }
    let password = match (a.password, a.password_command) {
        (Some(_), _) | (_, Some(_)) if oauth.is_some() => {
            return Err(invalid("with an [oauth] table the token comes from `pobox fetch login`: drop password/password_command".into()));
        }
        (None, None) if oauth.is_some() => PasswordSource::OAuth2,
        (Some(_), Some(_)) => return Err(invalid("set password or password_command, not both".into())),
        (Some(p), None) => PasswordSource::Inline(p),
        (None, Some(c)) => PasswordSource::Command(c),
        (None, None) => PasswordSource::Prompt,
    };
    if matches!(auth, AuthMethod::Xoauth2 | AuthMethod::Oauthbearer)
        && !matches!(password, PasswordSource::Command(_) | PasswordSource::OAuth2)
    {
        return Err(invalid("OAuth tokens expire: xoauth2/oauthbearer need password_command or an [oauth] table".into()));
    }
    let fingerprint = a.fingerprint.as_deref().map(parse_fingerprint).transpose().map_err(invalid)?;
    let destination = match (a.maildir, a.mbox, a.mda) {
        (Some(p), None, None) => Destination::Maildir(expand_tilde(&p)?),
        (None, Some(p), None) => Destination::Mbox(expand_tilde(&p)?),
        (None, None, Some(c)) => Destination::Mda(c),
        (None, None, None) => Destination::Maildir(home()?.join("Mail").join(&name)),
        _ => return Err(invalid("choose one destination: maildir, mbox or mda".into())),
    };
    let retention = match (a.keep, a.delete_after_days) {
        (true, Some(_)) => {
            return Err(invalid("keep = true and delete_after_days contradict each other".into()));
        }
        (true, None) => Retention::Keep,
        (false, Some(d)) => Retention::DeleteAfterDays(d),
        (false, None) => Retention::Delete,
    };
    if a.oversize == Oversize::Headers && a.max_size.is_none() {
        return Err(invalid("oversize = \"headers\" needs max_size".into()));
    }
    let port = a.port.unwrap_or(match a.security {
        Security::Tls => 995,
        Security::Starttls | Security::None => 110,
    });
    let pipeline_depth = a.pipeline_depth.unwrap_or(32).clamp(1, 1000);
    Ok(Account {
        host: a.host,
        port,
        security: a.security,
        user: a.user,
        password,
        auth,
        ca_file: a.ca_file.map(|p| expand_tilde(&p)).transpose()?,
        fingerprint,
        tls_server_name: a.tls_server_name,
        destination,
        retention,
        max_size: a.max_size,
        oversize: a.oversize,
        timeout: Duration::from_secs(a.timeout_secs.unwrap_or(120).max(1)),
        pipeline_depth,
        oauth,
        // 0: the file's default, filled in by `Config::parse`.
        poll_interval: Duration::from_secs(a.poll_interval.unwrap_or(0)),
        on_new_mail: a.on_new_mail,
        name,
    })
}

/// Parses `sha256:AB:CD:…`, `AB:CD:…` or plain hex (64 digits, any case).
///
/// # Errors
/// A message saying what shape is expected.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let body = s.trim();
    let body = body
        .strip_prefix("sha256:")
        .or_else(|| body.strip_prefix("SHA256:"))
        .unwrap_or(body);
    let hexdigits: String = body.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hexdigits, &mut out).map_err(|_| {
        format!("fingerprint {s:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    })?;
    Ok(out)
}

/// Formats a fingerprint the way `fingerprint =` accepts it.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    let pairs: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", pairs.join(":"))
}

/// `poll_interval` when neither the account nor the file sets one.
pub const DEFAULT_POLL_INTERVAL: u64 = 300;

fn home() -> Result<PathBuf, ConfigError> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).ok_or(ConfigError::NoHome)
}

/// Where journals and locks go unless `state_dir` says otherwise:
/// `$XDG_STATE_HOME/pobox/fetch`, else `~/.local/state/pobox/fetch`.
///
/// # Errors
/// [`ConfigError::NoHome`] when neither variable is set.
pub fn default_state_dir() -> Result<PathBuf, ConfigError> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("pobox/fetch"));
    }
    Ok(home()?.join(".local/state/pobox/fetch"))
}

fn expand_tilde(p: &Path) -> Result<PathBuf, ConfigError> {
    match p.strip_prefix("~") {
        Ok(rest) => Ok(home()?.join(rest)),
        Err(_) => Ok(p.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "state_dir = \"/tmp/st\"\n[accounts.work]\nhost = \"pop.example.com\"\nuser = \"me\"\npassword = \"pw\"\nmaildir = \"/tmp/md\"\n";

    #[test]
    fn defaults_are_the_safe_ones() {
        let c = Config::parse(BASE).unwrap();
        let a = &c.accounts[0];
        assert_eq!(a.security, Security::Tls);
        assert_eq!(a.port, 995);
        assert_eq!(a.retention, Retention::Delete);
        assert_eq!(a.auth, AuthMethod::Auto);
        assert_eq!(a.destination, Destination::Maildir("/tmp/md".into()));
        assert_eq!(a.identity(), "me@pop.example.com");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/st"));
    }

    #[test]
    fn plaintext_needs_explicit_opt_in() {
        let e = Config::parse(&format!("{BASE}security = \"none\"\n")).unwrap_err();
        assert!(e.to_string().contains("allow_insecure"), "{e}");
        let c = Config::parse(&format!("{BASE}security = \"none\"\nallow_insecure = true\n")).unwrap();
        assert_eq!(c.accounts[0].port, 110);
    }

    #[test]
    fn contradictions_are_refused() {
        for extra in [
            "mbox = \"/tmp/mb\"\n",
            "keep = true\ndelete_after_days = 3\n",
            "password_command = \"echo x\"\n",
            "oversize = \"headers\"\n",
            "auth = \"xoauth2\"\n",
            "fingerprint = \"sha256:zz\"\n",
            "colour = \"blue\"\n",
        ] {
            assert!(Config::parse(&format!("{BASE}{extra}")).is_err(), "accepted {extra:?}");
        }
    }

    #[test]
    fn retention_and_size_policies() {
        let c = Config::parse(&format!("{BASE}delete_after_days = 7\nmax_size = 1000\noversize = \"headers\"\n")).unwrap();
        assert_eq!(c.accounts[0].retention, Retention::DeleteAfterDays(7));
        assert_eq!(c.accounts[0].oversize, Oversize::Headers);
        let c = Config::parse(&format!("{BASE}keep = true\n")).unwrap();
        assert_eq!(c.accounts[0].retention, Retention::Keep);
    }

    #[test]
    fn fingerprints_round_trip() {
        let fp: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let s = format_fingerprint(&fp);
        assert!(s.starts_with("sha256:00:07:0E"));
        assert_eq!(parse_fingerprint(&s).unwrap(), fp);
        assert_eq!(parse_fingerprint(&hex::encode(fp)).unwrap(), fp);
        assert!(parse_fingerprint("sha256:00:07").is_err());
    }

    #[test]
    fn a_password_in_a_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fetch.toml");
        std::fs::write(&path, BASE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.ends_with(&format!("chmod 600 {}", path.display())), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Config::load(&path).unwrap();
        // No secret in it: readable is fine.
        std::fs::write(&path, BASE.replace("password = \"pw\"", "password_command = \"pass x\"")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Config::load(&path).unwrap();
    }

    #[test]
    fn the_starter_example_parses() {
        let c = Config::parse(STARTER).unwrap();
        assert_eq!(c.accounts[0].name, "work");
    }

    #[test]
    fn selects_accounts_by_name() {
        let c = Config::parse(&format!("{BASE}[accounts.home]\nhost = \"h\"\nuser = \"u\"\nmbox = \"/tmp/x\"\n")).unwrap();
        assert_eq!(c.select(&[]).unwrap().len(), 2);
        assert_eq!(c.select(&["home".into()]).unwrap()[0].destination, Destination::Mbox("/tmp/x".into()));
        assert!(matches!(c.select(&["nope".into()]), Err(ConfigError::UnknownAccount(_))));
        assert!(matches!(Config::parse("state_dir = \"/x\"\n"), Err(ConfigError::NoAccounts)));
    }
}
