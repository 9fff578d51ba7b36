//! `pobox import dovecot`: users from Dovecot's passwd-file, mail from
//! their Maildirs, every message keeping the UIDL Dovecot's POP3 server
//! gave it, so leave-on-server clients download nothing again.
//!
//! The UIDL of a message is, in this order: the one Dovecot saved in
//! `dovecot-uidlist` (`P<uidl>`, `pop3_save_uidl`), its `X-UIDL` header
//! (with `--x-uidl`, Dovecot's `pop3_reuse_xuidl`), else
//! `pop3_uidl_format` expanded with the message's UID, the UIDVALIDITY,
//! file name and GUID. A message not in `dovecot-uidlist` was never
//! listed by Dovecot, so no client knows it: it keeps pobox's own UIDL.
//!
//! `--in-place` gives the messages of a Maildir pobox already serves
//! their UIDLs (`pobox-uidls`, nothing copied); `--copy` stores them in
//! pobox's `mail_location` through the store's importer (durable,
//! idempotent by UIDL). Either way a second run changes nothing.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{IsTerminal, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pobox_auth::hash::StoredPassword;
use pobox_auth::{HashedAdd, UserDb, valid_username};
use pobox_store::{AssignOutcome, ImportOutcome, MaildirStore, StoreError, Uidl};
use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

use super::dovecot_files::{self as files, DovecotUser, Template, UidlVars, Uidlist};
use crate::config::Settings;

/// Imports below this many messages show no progress bar.
const PROGRESS_MIN: usize = 500;

/// How much of a message is read looking for `X-UIDL`.
const HEADER_LIMIT: u64 = 64 * 1024;

/// `pobox import dovecot` arguments.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["in_place", "copy"])))]
pub struct DovecotArgs {
    /// Dovecot's passwd-file: users and password hashes (2.3 or 2.4).
    #[arg(long, value_name = "FILE")]
    pub passwd_file: PathBuf,
    /// Where Dovecot keeps each user's Maildir: its mail_location (2.3) or
    /// mail_path (2.4), e.g. /var/vmail/%d/%n, maildir:~/Maildir,
    /// %{home}/Maildir. A user's userdb_mail / userdb_mail_path wins.
    #[arg(long, value_name = "TEMPLATE")]
    pub mail_root: String,
    /// Dovecot's pop3_uidl_format (see `doveconf pop3_uidl_format`):
    /// '%08Xu%08Xv' is 2.3's default, '%{uid | hex(8)}%{uidvalidity | hex(8)}'
    /// 2.4's; %f / %{filename} and %g / %{guid} work too.
    #[arg(long, value_name = "FORMAT")]
    pub uidl_format: String,
    /// Use a message's X-UIDL header as its UIDL (Dovecot's
    /// pop3_reuse_xuidl = yes); a UIDL saved in dovecot-uidlist still wins.
    #[arg(long)]
    pub x_uidl: bool,
    /// Serve the Maildirs where they are: pobox's mail_location must name
    /// the same directories; only UIDLs are recorded.
    #[arg(long)]
    pub in_place: bool,
    /// Copy the mail into pobox's mail_location.
    #[arg(long)]
    pub copy: bool,
    /// Print what would happen and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only these users (comma-separated), as named in the passwd-file.
    #[arg(long, value_delimiter = ',', value_name = "USER,...")]
    pub users: Vec<String>,
    /// The scheme of passwords written without {SCHEME}: CRYPT (Dovecot's
    /// passwd-file default, and 2.4.3's rule) or, say, PLAIN if your
    /// passdb had scheme=PLAIN.
    #[arg(long, default_value = "CRYPT", value_name = "SCHEME")]
    pub default_scheme: String,
}

/// One source message.
#[derive(Debug)]
struct SourceMessage {
    path: PathBuf,
    base: Vec<u8>,
    received: SystemTime,
    /// The UIDL Dovecot showed for it, if Dovecot listed it.
    uidl: Option<String>,
}

/// What happened to one user's mail.
#[derive(Debug, Default)]
struct MailReport {
    maildir: String,
    messages: usize,
    with_uidl: usize,
    saved: usize,
    from_header: usize,
    unlisted: usize,
    done: usize,
    already: usize,
}

/// Runs `pobox import dovecot`.
///
/// # Errors
/// Unreadable or malformed inputs, configuration errors; per-user
/// problems are printed and make the command fail at the end.
pub fn run(data: &Path, config: Option<&Path>, args: &DovecotArgs) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    let format =
        files::uidl_format(&args.uidl_format).map_err(|e| anyhow::anyhow!("--uidl-format: {e}"))?;
    let scheme = args.default_scheme.to_ascii_uppercase();
    let text = fs::read(&args.passwd_file)
        .with_context(|| format!("cannot read {}", args.passwd_file.display()))?;
    let text = String::from_utf8(text).map_err(|e| {
        let line = text_line(e.as_bytes(), e.utf8_error().valid_up_to());
        anyhow::anyhow!("{}:{line}: not UTF-8", args.passwd_file.display())
    })?;
    let (mut users, errors) = files::parse_passwd(&text);
    let pfile = args.passwd_file.display().to_string();
    let mut problems = 0usize;
    for e in &errors {
        eprintln!(
            "pobox: error: {pfile}:{}: {} (line skipped)",
            e.line, e.reason
        );
        problems += 1;
    }
    if !args.users.is_empty() {
        for wanted in &args.users {
            if !users.iter().any(|u| &u.name == wanted) {
                bail!("{wanted} is not in {pfile}");
            }
        }
        users.retain(|u| args.users.contains(&u.name));
    }
    if !args.dry_run {
        fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    }
    let userdb = super::super::open_users(&settings);
    let opened = super::super::open_store(&settings)?;
    let store = opened.maildir("pobox import dovecot")?;
    if args.dry_run {
        println!("dry run: nothing will be changed");
    }
    let known: HashSet<String> = userdb
        .list()
        .map(|v| v.into_iter().collect())
        .unwrap_or_default();
    let mut accounts: Vec<(String, String)> = Vec::new();
    let mut warned_fields = HashSet::new();
    for user in &users {
        let at = format!("{pfile}:{}", user.line);
        if !valid_username(&user.name) {
            eprintln!(
                "pobox: error: {at}: user {:?} cannot be a pobox user (1-64 characters from A-Z a-z 0-9 . _ @ -); skipped with its mail",
                user.name
            );
            problems += 1;
            continue;
        }
        for (key, _) in &user.extra {
            if !matches!(key.as_str(), "userdb_mail" | "userdb_mail_path")
                && warned_fields.insert(key.clone())
            {
                eprintln!(
                    "pobox: warning: {at}: extra field {key} is ignored (set pobox's equivalent in pobox.toml)"
                );
            }
        }
        match password_for(user, &scheme) {
            Ok(stored) => accounts.push((user.name.clone(), stored)),
            Err(why) => {
                eprintln!(
                    "pobox: error: {at}: {}: {why}; the mail is imported, give a password with `pobox user passwd {}`",
                    user.name, user.name
                );
                problems += 1;
            }
        }
        match import_mail(store, user, args, &format) {
            Ok(report) => print_report(&user.name, &report, args),
            Err(e) => {
                eprintln!("pobox: error: {}: {e:#}", user.name);
                problems += 1;
            }
        }
    }
    add_users(
        &userdb,
        &accounts,
        &known,
        args.dry_run,
        &settings.passwd_file,
    )?;
    if problems > 0 {
        bail!(
            "{problems} problem(s), see above; fix them and run the same command again (what was done is not repeated)"
        );
    }
    Ok(())
}

/// The 1-based line of byte offset `at`.
fn text_line(bytes: &[u8], at: usize) -> usize {
    bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The password field as pobox stores it, if pobox can verify it.
fn password_for(user: &DovecotUser, default_scheme: &str) -> Result<String, String> {
    let field = user.password.trim();
    if field.is_empty() {
        return Err("no password in the passwd-file".into());
    }
    let stored = if field.starts_with('{') || default_scheme == "CRYPT" {
        field.to_owned()
    } else {
        format!("{{{default_scheme}}}{field}")
    };
    match StoredPassword::parse(&stored) {
        Ok(_) => Ok(stored),
        Err(e) => Err(format!("pobox cannot verify this password ({e})")),
    }
}

/// Adds the users to pobox's passwd-file (one rewrite). A user pobox
/// already has keeps the password pobox has.
fn add_users(
    userdb: &UserDb,
    accounts: &[(String, String)],
    known: &HashSet<String>,
    dry_run: bool,
    passwd_file: &Path,
) -> anyhow::Result<()> {
    if dry_run {
        for (name, _) in accounts {
            if known.contains(name) {
                println!("{name}: already in {}", passwd_file.display());
            } else {
                println!("{name}: would be added to {}", passwd_file.display());
            }
        }
        return Ok(());
    }
    let entries: Vec<(&str, &str)> = accounts
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_str()))
        .collect();
    let outcomes = userdb
        .add_hashed(&entries)
        .with_context(|| format!("cannot update {}", passwd_file.display()))?;
    for ((name, _), outcome) in accounts.iter().zip(outcomes) {
        match outcome {
            HashedAdd::Added => println!("{name}: added to {}", passwd_file.display()),
            HashedAdd::Same => println!("{name}: already in {}", passwd_file.display()),
            HashedAdd::Different => {
                eprintln!(
                    "pobox: warning: {name} is already in {} with another password; left as it is",
                    passwd_file.display()
                );
            }
        }
    }
    Ok(())
}

fn print_report(user: &str, r: &MailReport, args: &DovecotArgs) {
    if r.messages == 0 {
        println!("{user}: no messages in {}", r.maildir);
        return;
    }
    let (done, already) = match (args.in_place, args.dry_run) {
        (true, false) => ("UIDLs assigned", "already assigned"),
        (true, true) => ("UIDLs to assign", "already assigned"),
        (false, false) => ("copied", "already present"),
        (false, true) => ("to copy", "already present"),
    };
    println!(
        "{user}: {} messages in {}; {} keep Dovecot's UIDL ({} saved by pop3_save_uidl, {} from X-UIDL), {} never listed by Dovecot; {done} {}, {already} {}",
        r.messages, r.maildir, r.with_uidl, r.saved, r.from_header, r.unlisted, r.done, r.already
    );
}

/// Where Dovecot keeps `user`'s Maildir.
fn dovecot_maildir(user: &DovecotUser, template: &str) -> anyhow::Result<PathBuf> {
    let template = user.mail_override().unwrap_or(template);
    files::expand_location(template, &user.name, user.home.as_deref())
        .map(PathBuf::from)
        .map_err(|e| anyhow::anyhow!("mail location: {e}"))
}

/// The base of a Maildir file name: up to the first `,` or `:`.
fn base_of(name: &[u8]) -> &[u8] {
    let end = name
        .iter()
        .position(|&c| c == b',' || c == b':')
        .unwrap_or(name.len());
    &name[..end]
}

/// The UIDL a message Dovecot never listed gets when copied: its base
/// name when that is a valid UIDL (what pobox shows for it in place),
/// else a digest of it. The same on every run.
fn own_uidl(base: &[u8]) -> String {
    match std::str::from_utf8(base) {
        Ok(b) if Uidl::is_valid(b) => b.to_owned(),
        _ => format!("dovecot-{}", hex_prefix(&Sha256::digest(base))),
    }
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Reads `user`'s Maildir and works out every message's UIDL, then copies
/// or assigns (or, in a dry run, counts).
fn import_mail(
    store: &MaildirStore,
    user: &DovecotUser,
    args: &DovecotArgs,
    format: &Template,
) -> anyhow::Result<MailReport> {
    let maildir = dovecot_maildir(user, &args.mail_root)?;
    let mut report = MailReport {
        maildir: maildir.display().to_string(),
        ..MailReport::default()
    };
    if !maildir.join("cur").is_dir() && !maildir.join("new").is_dir() {
        return Ok(report);
    }
    let mut messages = list_messages(&maildir)?;
    report.messages = messages.len();
    let uidlist_path = maildir.join("dovecot-uidlist");
    let uidlist = match fs::read(&uidlist_path) {
        Ok(text) => Some(files::parse_uidlist(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: {}; nothing imported for this user",
                uidlist_path.display(),
                e.line,
                e.reason
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read {}: {e}",
                uidlist_path.display()
            ));
        }
    };
    let order = match &uidlist {
        Some(list) => give_uidls(
            &mut messages,
            list,
            format,
            args.x_uidl,
            &uidlist_path,
            &mut report,
        )?,
        None => {
            if !messages.is_empty() {
                eprintln!(
                    "pobox: warning: {}: no dovecot-uidlist: Dovecot never listed these messages, they keep pobox's UIDLs",
                    maildir.display()
                );
            }
            (0..messages.len()).collect()
        }
    };
    report.unlisted = messages.iter().filter(|m| m.uidl.is_none()).count();
    if args.in_place {
        assign_in_place(store, user, &maildir, &messages, args.dry_run, &mut report)?;
    } else {
        copy(store, user, &messages, &order, args.dry_run, &mut report)?;
    }
    Ok(report)
}

/// The messages in `new/` and `cur/` (regular files, not dot-files).
fn list_messages(maildir: &Path) -> anyhow::Result<Vec<SourceMessage>> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        let dir = maildir.join(sub);
        // A user who owns the Maildir must not make the import read
        // another one's mail (or any file) through a link.
        match fs::symlink_metadata(&dir) {
            Ok(meta) if !meta.is_dir() => bail!(
                "{} is not a directory (a link?); refusing to read through it",
                dir.display()
            ),
            _ => {}
        }
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let name = entry.file_name();
            if name.as_bytes().first() == Some(&b'.') {
                continue;
            }
            let meta = fs::symlink_metadata(entry.path())
                .with_context(|| format!("cannot stat {}", entry.path().display()))?;
            if !meta.is_file() {
                continue;
            }
            out.push(SourceMessage {
                path: entry.path(),
                base: base_of(name.as_bytes()).to_vec(),
                received: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                uidl: None,
            });
        }
    }
    Ok(out)
}

/// Gives each message the UIDL Dovecot shows for it; returns the order to
/// import in (Dovecot's UID order, then the unlisted ones by time).
fn give_uidls(
    messages: &mut [SourceMessage],
    list: &Uidlist,
    format: &Template,
    x_uidl: bool,
    uidlist_path: &Path,
    report: &mut MailReport,
) -> anyhow::Result<Vec<usize>> {
    let by_base: HashMap<Vec<u8>, usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.base.clone(), i))
        .collect();
    let mut taken: HashMap<String, usize> = HashMap::new();
    let mut order = Vec::new();
    for entry in &list.entries {
        let base = base_of(&entry.filename);
        let Some(&i) = by_base.get(base) else {
            continue;
        };
        let at = || format!("{}:{}", uidlist_path.display(), entry.line);
        let (uidl, source) = if let Some(p) = &entry.pop3_uidl {
            (p.clone(), 1)
        } else if let Some(h) = x_uidl.then(|| header_uidl(&messages[i].path)).flatten() {
            (h, 2)
        } else {
            let filename = entry
                .filename
                .split(|&b| b == b':')
                .next()
                .unwrap_or_default();
            let filename = String::from_utf8_lossy(filename);
            let base_str = String::from_utf8_lossy(base);
            let vars = UidlVars {
                uid: entry.uid,
                uid_validity: list.uid_validity,
                guid: entry.guid.as_deref().unwrap_or(&base_str),
                filename: &filename,
            };
            (
                files::expand_uidl(format, vars).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?,
                0,
            )
        };
        order.push(i);
        if !Uidl::is_valid(&uidl) {
            eprintln!(
                "pobox: warning: {}: UIDL {uidl:?} is not valid in POP3; the message gets a new one",
                at()
            );
            continue;
        }
        if let Some(&first) = taken.get(&uidl) {
            eprintln!(
                "pobox: warning: {}: UIDL {uidl} is also {}'s; this message gets a new one (clients will fetch it again)",
                at(),
                messages[first].path.display()
            );
            continue;
        }
        taken.insert(uidl.clone(), i);
        match source {
            1 => report.saved += 1,
            2 => report.from_header += 1,
            _ => {}
        }
        report.with_uidl += 1;
        messages[i].uidl = Some(uidl);
    }
    let listed: HashSet<usize> = order.iter().copied().collect();
    let mut rest: Vec<usize> = (0..messages.len())
        .filter(|i| !listed.contains(i))
        .collect();
    rest.sort_by_key(|&i| (messages[i].received, messages[i].base.clone()));
    order.extend(rest);
    Ok(order)
}

/// The value of the message's first `X-UIDL:` header, if valid.
fn header_uidl(path: &Path) -> Option<String> {
    let mut head = Vec::new();
    open_message(path)
        .ok()?
        .take(HEADER_LIMIT)
        .read_to_end(&mut head)
        .ok()?;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() > 7 && line[..7].eq_ignore_ascii_case(b"x-uidl:") {
            let value = String::from_utf8_lossy(&line[7..]).trim().to_owned();
            return Uidl::is_valid(&value).then_some(value);
        }
    }
    None
}

/// Opens a message file for reading, never through a symbolic link
/// (one could have replaced the file since it was listed).
fn open_message(path: &Path) -> std::io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

fn progress(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
    if total >= PROGRESS_MIN && std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
    }
    bar
}

/// `--copy`: stores every message through the store's importer.
fn copy(
    store: &MaildirStore,
    user: &DovecotUser,
    messages: &[SourceMessage],
    order: &[usize],
    dry_run: bool,
    report: &mut MailReport,
) -> anyhow::Result<()> {
    let uidl_of = |m: &SourceMessage| m.uidl.clone().unwrap_or_else(|| own_uidl(&m.base));
    if dry_run {
        let present: HashSet<String> = store
            .uidl_listing(&user.name)?
            .unwrap_or_default()
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        for &i in order {
            if present.contains(&uidl_of(&messages[i])) {
                report.already += 1;
            } else {
                report.done += 1;
            }
        }
        return Ok(());
    }
    let mut import = store.begin_import(&user.name).map_err(|e| match e {
        StoreError::InUse => {
            anyhow::anyhow!("pobox's maildrop is in use by a POP3 session; try again when it ends")
        }
        e => e.into(),
    })?;
    let bar = progress(order.len(), &user.name);
    for &i in order {
        let m = &messages[i];
        let mut file =
            open_message(&m.path).with_context(|| format!("cannot open {}", m.path.display()))?;
        match import
            .import(&uidl_of(m), m.received, &mut file)
            .with_context(|| format!("copying {}", m.path.display()))?
        {
            ImportOutcome::Imported(_) => report.done += 1,
            ImportOutcome::AlreadyPresent => report.already += 1,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// `--in-place`: pobox serves Dovecot's Maildir; records the UIDLs.
fn assign_in_place(
    store: &MaildirStore,
    user: &DovecotUser,
    maildir: &Path,
    messages: &[SourceMessage],
    dry_run: bool,
    report: &mut MailReport,
) -> anyhow::Result<()> {
    let ours = store.location().path_for(&user.name)?;
    let same = match (fs::canonicalize(&ours), fs::canonicalize(maildir)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        bail!(
            "--in-place needs pobox's mail_location ({}) to name Dovecot's Maildir: it gives {} for this user, Dovecot uses {} (set mail_location accordingly, or use --copy)",
            store.location(),
            ours.display(),
            maildir.display()
        );
    }
    if dry_run {
        let present: HashSet<String> = store
            .uidl_listing(&user.name)?
            .unwrap_or_default()
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        for uidl in messages.iter().filter_map(|m| m.uidl.as_ref()) {
            if present.contains(uidl) {
                report.already += 1;
            } else {
                report.done += 1;
            }
        }
        return Ok(());
    }
    let mut import = store.begin_import(&user.name).map_err(|e| match e {
        StoreError::InUse => {
            anyhow::anyhow!("the maildrop is in use by a POP3 session; try again when it ends")
        }
        e => e.into(),
    })?;
    for m in messages {
        let Some(uidl) = &m.uidl else { continue };
        let base = std::ffi::OsStr::from_bytes(&m.base);
        match import.assign(base, uidl) {
            Ok(AssignOutcome::Assigned) => report.done += 1,
            Ok(AssignOutcome::AlreadyAssigned) => report.already += 1,
            Err(StoreError::Vanished(_)) => {
                eprintln!(
                    "pobox: warning: {} disappeared during the import",
                    m.path.display()
                );
            }
            Err(e @ (StoreError::UidlRefused { .. } | StoreError::InvalidName(_))) => {
                eprintln!(
                    "pobox: warning: {}: {e}; it keeps pobox's UIDL",
                    m.path.display()
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    import.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_uidls_are_stable_and_valid() {
        assert_eq!(own_uidl(b"1700000000.M1P2.host"), "1700000000.M1P2.host");
        let odd = own_uidl("caf\u{e9} name".as_bytes());
        assert!(odd.starts_with("dovecot-") && Uidl::is_valid(&odd));
        assert_eq!(odd, own_uidl("caf\u{e9} name".as_bytes()));
    }

    #[test]
    fn passwords_keep_their_scheme_and_bare_ones_follow_the_default() {
        let user = |pw: &str| DovecotUser {
            line: 1,
            name: "a".into(),
            password: pw.into(),
            home: None,
            extra: vec![],
        };
        assert_eq!(
            password_for(&user("{PLAIN}x"), "CRYPT").unwrap(),
            "{PLAIN}x"
        );
        assert_eq!(
            password_for(&user("secret"), "PLAIN").unwrap(),
            "{PLAIN}secret"
        );
        let crypt = "$6$saltsalt$KVT3WtNRa9uSm1/QAv5mOmXHhhdmIoh4QOAPmg8r1b4zjAJBhMb3Gp2vsFHB3y4V7X4Xa7Xo3XuF0GyA7XWJE0";
        assert_eq!(
            password_for(&user(crypt), "CRYPT").unwrap(),
            crypt,
            "bare = CRYPT, kept as it is"
        );
        assert!(password_for(&user(""), "CRYPT").is_err());
        assert!(
            password_for(&user("{MD5-CRYPT}$1$x$y"), "CRYPT")
                .unwrap_err()
                .contains("cannot verify")
        );
        assert!(
            password_for(&user("secret"), "CRYPT").is_err(),
            "not a crypt string"
        );
    }
}
