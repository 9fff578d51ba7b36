//! `pobox check`: validates what `pobox serve` would use, without binding
//! anything: the config file, the passwd-file, the data dir's ownership and
//! mode, every TLS certificate (parses, key matches, expiry, names cover the
//! host name, key file not readable by others) and the OAuth JWKS.
//!
//! Prints one line per finding (`ok`, `warning`, `error`) and fails when
//! there is at least one error, so it fits `ExecStartPre=` and CI.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use pobox_server::privdrop;
use pobox_server::tls::{self, CertPair};

use crate::config::Settings;

/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

#[derive(Default)]
struct Report {
    errors: usize,
    warnings: usize,
}

impl Report {
    fn ok(&mut self, what: &str) {
        println!("ok       {what}");
    }
    fn warn(&mut self, what: &str) {
        self.warnings += 1;
        println!("warning  {what}");
    }
    fn error(&mut self, what: &str) {
        self.errors += 1;
        println!("error    {what}");
    }
}

/// Runs the checks.
///
/// # Errors
/// When the config cannot be loaded or any check reports an error.
pub fn run(data: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    let mut r = Report::default();
    r.ok(&match config {
        Some(p) => format!("config {} parsed", p.display()),
        None => "no config file; defaults".into(),
    });

    // The user pobox serve would run as (see privdrop's rules).
    let target = match settings.user.as_deref() {
        Some(name) => nix_user(name),
        None if rustix::process::geteuid().is_root() => nix_user(privdrop::DEFAULT_USER),
        None => None,
    };
    let (uid, name) = match &target {
        Some((uid, name)) => (*uid, name.clone()),
        None => (rustix::process::geteuid().as_raw(), "the current user".to_string()),
    };
    if let Some(wanted) = settings.user.as_deref()
        && wanted != "root"
        && target.is_none()
    {
        r.error(&format!("user {wanted:?} (config key `user`) does not exist"));
    }
    match std::fs::metadata(&settings.data_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.warn(&format!("data dir {}: {e} (created at first start)", settings.data_dir.display()));
        }
        Err(e) => r.error(&format!("data dir {}: {e}", settings.data_dir.display())),
        Ok(_) => match privdrop::check_data_dir(&settings.data_dir, &name, uid) {
            Ok(()) => r.ok(&format!("data dir {} owned by {name}, not world-writable", settings.data_dir.display())),
            Err(e) => r.error(&e.to_string()),
        },
    }

    // The same access check `pobox serve` makes after dropping privileges
    // (admin commands run as root have already switched to the service
    // user, see main.rs).
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        // Only the Maildir store has paths to check here; the database is
        // checked below, where a failure is a finding and not an abort.
        let maildir = match settings.store {
            crate::store_config::StoreSettings::Maildir => Some(super::open_store(&settings)?),
            crate::store_config::StoreSettings::Postgres(_) => None,
        };
        let (read, write) = super::service_paths(&settings, maildir.as_ref().and_then(super::Store::as_maildir));
        match privdrop::verify_access(&format!("uid {}", euid.as_raw()), &read, &write) {
            Ok(()) => r.ok(&format!("uid {} can read the users, keys and scripts and write the data dir", euid.as_raw())),
            Err(e) => r.error(&e),
        }
    }
    check_passwd(&settings, &mut r);
    check_store(&settings, &mut r);
    check_tls(&settings, &mut r, uid);
    check_sieve(&settings, &mut r);

    if let Some(o) = &settings.server.outbound {
        // Offline checks only: `pobox check` does not connect anywhere.
        match pobox_server::relay::preflight(&o.relay) {
            Ok(()) => r.ok(&format!(
                "relay {}:{} ({:?}): CA and password files usable; vacation replies are queued in {}",
                o.relay.host,
                o.relay.port,
                o.relay.tls,
                o.outbox_dir.display()
            )),
            Err(e) => r.error(&e),
        }
        if let Some(file) = &o.relay.password_file
            && let Ok(meta) = std::fs::metadata(file)
            && meta.mode() & 0o004 != 0
        {
            r.warn(&format!(
                "relay.password_file {} is world-readable (mode {:o}); fix with: chmod o-r {}",
                file.display(),
                meta.mode() & 0o7777,
                file.display()
            ));
        }
    }

    if let Some(o) = &settings.server.oauth {
        // Fetches the JWKS URL once (a diagnosis may use the network; the
        // server itself starts without it).
        let bearer = pobox_server::oauth_remote::BearerAuth::new(o, settings.server.oauth_remote.as_ref());
        match bearer.check_all() {
            Ok(lines) => {
                for line in lines {
                    r.ok(&format!("oauth {line}"));
                }
            }
            Err(e) => r.error(&format!("oauth: {e}")),
        }
    }

    println!("{} error(s), {} warning(s)", r.errors, r.warnings);
    if r.errors > 0 {
        anyhow::bail!("configuration has {} error(s)", r.errors);
    }
    Ok(())
}

fn nix_user(name: &str) -> Option<(u32, String)> {
    // Only for reporting: a failed lookup reads as "does not exist".
    let line = std::fs::read_to_string("/etc/passwd").ok()?;
    line.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        let uid = f.nth(1)?.parse().ok()?;
        Some((uid, name.to_owned()))
    })
}

/// The store: Maildir's location, or PostgreSQL's connection and schema
/// (this check connects, as `pobox serve` would).
fn check_store(settings: &Settings, r: &mut Report) {
    use crate::store_config::{StoreSettings, display_url};
    let pg = match &settings.store {
        StoreSettings::Maildir => {
            r.ok(&format!("store: maildir at {}", settings.mail_location));
            return;
        }
        StoreSettings::Postgres(pg) => pg,
    };
    let url = display_url(&pg.url);
    if let Some(file) = &pg.password_file {
        match std::fs::metadata(file) {
            Err(e) => r.error(&format!("store.postgres.password_file {}: {e}", file.display())),
            Ok(meta) if meta.mode() & 0o004 != 0 => r.warn(&format!(
                "store.postgres.password_file {} is world-readable (mode {:o}); fix with: chmod o-r {}",
                file.display(),
                meta.mode() & 0o7777,
                file.display()
            )),
            Ok(_) => {}
        }
    }
    match pobox_store_pg::schema_status(&super::store::pg_config(pg)) {
        Err(e) => r.error(&format!("store: postgres {url}: {e}")),
        Ok(s) if s.is_current() => r.ok(&format!(
            "store: postgres {url} reachable, schema version {} (current); node {}, lease {} s",
            s.current, pg.node, pg.lease_secs
        )),
        Ok(s) if pg.migrate_on_start => r.warn(&format!(
            "store: postgres {url} reachable, schema version {} of {}; pobox serve migrates it at start (migrate_on_start)",
            s.current, s.latest
        )),
        Ok(s) => r.error(&format!(
            "store: postgres {url} reachable, schema version {} but this pobox needs {}; run pobox db migrate",
            s.current, s.latest
        )),
    }
}

fn check_passwd(settings: &Settings, r: &mut Report) {
    let path = &settings.passwd_file;
    match std::fs::metadata(path) {
        Err(e) if settings.passwd_file_configured || e.kind() != std::io::ErrorKind::NotFound => r.error(&format!(
            "passwd-file {} (config key passwd_file): {e}; every login would fail",
            path.display()
        )),
        Err(e) => r.warn(&format!("passwd-file {}: {e} (no users yet)", path.display())),
        Ok(meta) => {
            if meta.mode() & 0o004 != 0 {
                r.error(&format!("passwd-file {} is world-readable (mode {:o}); fix with: chmod o-r {}", path.display(), meta.mode() & 0o7777, path.display()));
            }
            let db = pobox_auth::UserDb::open(path);
            for w in db.warnings() {
                r.warn(&format!("passwd-file {}:{}: {} (line ignored)", path.display(), w.line, w.reason));
            }
            match db.entries() {
                Ok(entries) => {
                    let scram = entries.iter().filter(|e| db.scram_secret(&e.name).ok().flatten().is_some()).count();
                    r.ok(&format!("passwd-file {}: {} user(s), {scram} with SCRAM secrets", path.display(), entries.len()));
                }
                Err(e) => r.error(&e.to_string()),
            }
        }
    }
}

/// Compiles every Sieve script delivery would run. A global (`before`,
/// `after`) script that is missing or does not compile is an error: the
/// admin's filtering silently does nothing (delivery keeps the message).
/// A user's own script that does not compile is a warning: that user's
/// mail is kept unfiltered, as at delivery.
fn check_sieve(settings: &Settings, r: &mut Report) {
    let sieve = &settings.server.sieve;
    // `vacation` and `redirect` compile only with a relay, as at delivery.
    let relay = settings.server.outbound.is_some();
    let caps = pobox_sieve::Capabilities { vacation: relay, redirect: relay };
    let compile = |path: &Path| -> Result<(), String> {
        let source = std::fs::read_to_string(path).map_err(|e| format!("sieve script {}: {e}", path.display()))?;
        pobox_sieve::compile(&source, &caps).map(|_| ()).map_err(|errors| {
            let first: Vec<String> = errors.errors().iter().take(3).map(|e| format!("{}:{e}", path.display())).collect();
            format!("sieve script does not compile: {}", first.join("; "))
        })
    };
    for path in sieve.before.iter().chain(&sieve.after) {
        match compile(path) {
            Ok(()) => r.ok(&format!("sieve script {} compiles", path.display())),
            Err(e) => r.error(&e),
        }
    }
    let Some(dir) = &sieve.user_dir else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut scripts: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sieve"))
        .collect();
    scripts.sort();
    let (mut good, total) = (0, scripts.len());
    for path in scripts {
        match compile(&path) {
            Ok(()) => good += 1,
            Err(e) => r.warn(&format!("{e} (that user's mail is delivered unfiltered)")),
        }
    }
    if total > 0 {
        r.ok(&format!("{good} of {total} per-user sieve script(s) in {} compile", dir.display()));
    }
}

fn check_tls(settings: &Settings, r: &mut Report, service_uid: u32) {
    if settings.pop3.is_empty() && settings.pop3s.is_empty() {
        return;
    }
    let pairs = if settings.tls_pairs.is_empty() {
        let dir = settings.data_dir.join("tls");
        let pair = CertPair { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        if !pair.cert.exists() {
            r.ok("no certificate configured; a self-signed one is generated at first start");
            return;
        }
        vec![pair]
    } else {
        settings.tls_pairs.clone()
    };
    let now = SystemTime::now();
    let mut covers_host = false;
    for pair in &pairs {
        let label = pair.cert.display().to_string();
        match tls::load_one(pair) {
            Err(e) => r.error(&e.to_string()),
            Ok(cert) => {
                r.ok(&format!("{label}: key matches, names {}", cert.names.join(", ")));
                match cert.not_after.duration_since(now) {
                    Err(_) => r.error(&format!("{label}: expired")),
                    Ok(left) if left < EXPIRY_WARNING => {
                        r.warn(&format!("{label}: expires in {} day(s)", left.as_secs() / 86_400));
                    }
                    Ok(left) => r.ok(&format!("{label}: valid for {} more day(s)", left.as_secs() / 86_400)),
                }
                covers_host |= name_matches(&cert.names, &settings.server.hostname);
            }
        }
        if let Ok(meta) = std::fs::metadata(&pair.key) {
            if meta.mode() & 0o077 != 0 {
                r.error(&format!("key {} is readable by group/others (mode {:o}); fix with: chmod 600 {}", pair.key.display(), meta.mode() & 0o7777, pair.key.display()));
            }
            if meta.uid() != service_uid && meta.uid() != 0 {
                r.warn(&format!("key {} is owned by uid {}, neither root nor the service user", pair.key.display(), meta.uid()));
            } else if meta.uid() != service_uid && meta.mode() & 0o040 == 0 {
                r.warn(&format!(
                    "key {} is readable by root only: it loads at start, but reloads after the switch to the service user will fail",
                    pair.key.display()
                ));
            }
        }
    }
    if !covers_host {
        r.warn(&format!(
            "no certificate names the host name {:?} (RFC 7817: clients check the name they were configured with)",
            settings.server.hostname
        ));
    }
}

fn name_matches(names: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let wildcard = host.split_once('.').map(|(_, rest)| format!("*.{rest}"));
    names.iter().any(|n| *n == host || Some(n) == wildcard.as_ref())
}
