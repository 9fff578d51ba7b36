//! pobox behind a load balancer (issue 15, part 3): Debian's `haproxy` in
//! TCP mode on 127.0.0.1 in front of TWO `pobox serve` nodes sharing one
//! store, sending the PROXY protocol header (v2 to one frontend's backends,
//! v1 to another's) and checking the nodes' health endpoint.
//!
//! Clients connect from 127.0.0.2 or 127.0.0.3 (the socket is bound before
//! connecting), HAProxy from 127.0.0.1, the only trusted proxy. So a log
//! line, a login-history record or a throttle key that says 127.0.0.2 can
//! only have come from the header, never from the socket the node sees.
//!
//! The shared store is described by [`SharedStore`]: one passwd-file and
//! either one PostgreSQL database (the cluster tests: `[store] backend =
//! "postgres"`, the maildrop lock a lease row) or one Maildir location (the
//! lock file beside the maildrops; one cluster test and the header tests).
//!
//! Needs `haproxy` and `curl` (Debian packages; `.ci/run` installs them)
//! and, for the PostgreSQL cluster, `postgresql-15` (the testkit's
//! throwaway cluster); without them the tests fail unless
//! `POBOX_ALLOW_SKIP=1`. The last two
//! tests send headers by hand and need neither: LMTP and SMTP listeners
//! behind the header, and a pending header during shutdown.

#![allow(unreachable_pub)]

#[path = "integration/util.rs"]
#[allow(dead_code)]
mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::{Dir, PW, Server, TestCommand, eventually};

const HAPROXY: &str = "/usr/sbin/haproxy";
/// Servers over all of HAProxy's backends: two in each of the three
/// balanced backends, one in each node's pinned backend.
const SERVERS: usize = 8;
/// The abusive client, and the one whose address is checked in logs.
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Another client, which must not suffer for the first one.
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn have_tools(test: &str) -> bool {
    for (tool, package) in [(HAPROXY, "haproxy"), ("/usr/bin/curl", "curl")] {
        if !std::path::Path::new(tool).exists() {
            util::cannot_run(test, package);
            return false;
        }
    }
    true
}

/// A free TCP port on 127.0.0.1 (bound, read and released; the listeners
/// here need fixed addresses, as `[proxy_protocol] listeners` and
/// HAProxy's config name them).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `src`.
fn connect_from(src: Ipv4Addr, port: u16) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    s.connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
        .unwrap_or_else(|e| panic!("connect {src} -> 127.0.0.1:{port}: {e}"));
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    t.set_write_timeout(Some(util::IO_TIMEOUT)).unwrap();
    t
}

/// A line-level POP3 client on any connected stream.
struct Client {
    r: BufReader<TcpStream>,
    greeting: String,
}

impl Client {
    fn on(stream: TcpStream) -> Client {
        let mut c = Client { r: BufReader::new(stream), greeting: String::new() };
        c.greeting = c.line();
        c
    }
    fn from(src: Ipv4Addr, port: u16) -> Client {
        let c = Client::on(connect_from(src, port));
        assert!(c.greeting.starts_with("+OK"), "greeting through the balancer: {:?}", c.greeting);
        c
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.r.read_line(&mut l);
        l
    }
    fn cmd(&mut self, c: &str) -> String {
        self.r.get_mut().write_all(format!("{c}\r\n").as_bytes()).unwrap();
        self.line()
    }
    /// A multi-line answer's lines (without the status line and the
    /// final dot); panics on an `-ERR`. Bounded to 1000 lines.
    fn listing(&mut self, c: &str) -> Vec<String> {
        let status = self.cmd(c);
        assert!(status.starts_with("+OK"), "{c}: {status}");
        let mut lines = Vec::new();
        for _ in 0..1000 {
            let l = self.line();
            if l == ".\r\n" || l.is_empty() {
                return lines;
            }
            lines.push(l.trim_end().to_string());
        }
        panic!("{c}: listing longer than 1000 lines");
    }
    fn login(&mut self, user: &str, pw: &str) -> String {
        let u = self.cmd(&format!("USER {user}"));
        assert!(u.starts_with("+OK"), "USER: {u}");
        self.cmd(&format!("PASS {pw}"))
    }
}

/// What the nodes share: the users and the maildrops. The only place that
/// names the backend.
struct SharedStore {
    /// Holds the passwd-file, and on Maildir the maildrops.
    dir: Dir,
    /// The database URL on PostgreSQL; `None` on Maildir.
    postgres: Option<String>,
}

/// The first message in alice's maildrop.
const HELLO: &[u8] = b"Subject: hello\r\n\r\nthrough the balancer\r\n";

impl SharedStore {
    /// One Maildir location both nodes use.
    fn new() -> SharedStore {
        let store = SharedStore::with_users(None);
        store.deliver("alice", HELLO);
        store
    }

    /// A fresh database, migrated, on the PostgreSQL cluster the tests
    /// share; `None` when PostgreSQL is missing and skipping is allowed.
    fn postgres(test: &str) -> Option<SharedStore> {
        if !pobox_store_pg::testkit::require(test) {
            return None;
        }
        let url = pobox_store_pg::testkit::TestPg::shared().create_database();
        let store = SharedStore::with_users(Some(url));
        let out = store.cli().args(["db", "migrate"]).assert_exit(0);
        assert!(out.stdout().contains("applied migration"), "{}", out.dump());
        store.deliver("alice", HELLO);
        Some(store)
    }

    fn with_users(postgres: Option<String>) -> SharedStore {
        let dir = Dir::new();
        dir.add_user("alice", PW);
        dir.add_user("bob", PW);
        SharedStore { dir, postgres }
    }

    /// `pobox` with a config naming the shared store, for admin commands.
    fn cli(&self) -> TestCommand {
        let file = self.dir.scratch("cli.toml");
        let keys: Vec<String> = self.node_keys("cli").iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        std::fs::write(&file, keys.concat()).unwrap();
        let mut c = self.dir.pobox();
        c.arg("--config").arg(&file);
        c
    }

    /// Delivers with `pobox deliver` into the shared store.
    fn deliver(&self, user: &str, message: &[u8]) {
        match self.postgres {
            None => self.dir.deliver(user, message),
            Some(_) => {
                self.cli().args(["deliver", user]).stdin(message).assert_exit(0);
            }
        }
    }

    /// Config keys (TOML values) that point node `node` at the shared
    /// store (on PostgreSQL the node name owns its leases).
    fn node_keys(&self, node: &str) -> Vec<(&'static str, String)> {
        let users = ("passwd_file", format!("{:?}", self.dir.users_file().display().to_string()));
        match &self.postgres {
            None => {
                let mail = self.dir.data().join("mail/{user}");
                vec![users, ("mail_location", format!("{:?}", mail.display().to_string()))]
            }
            Some(url) => vec![
                users,
                (
                    "store",
                    format!(
                        "{{ backend = \"postgres\", postgres = {{ url = {url:?}, node = {node:?}, lease_secs = 3, pool_size = 4 }} }}"
                    ),
                ),
            ],
        }
    }
}

/// One node's fixed addresses.
#[derive(Clone, Copy)]
struct NodePorts {
    pop3: u16,
    pop3s: u16,
    health: u16,
}

/// Starts a node on its own data dir (each node claims its data dir) with
/// the shared store, PROXY protocol on its POP3 and POP3S listeners (only
/// 127.0.0.1, HAProxy, trusted) and the health endpoint.
fn start_node<'d>(
    name: &str,
    data: &'d Dir,
    store: &SharedStore,
    ports: NodePorts,
    tls: Option<(PathBuf, PathBuf)>,
    grace_secs: u32,
    drain_delay_secs: u32,
) -> Server<'d> {
    let (p, s) = (format!("127.0.0.1:{}", ports.pop3), format!("127.0.0.1:{}", ports.pop3s));
    let mut b = data
        .server()
        .listeners_in_config()
        .config("pop3", &format!("[{p:?}]"))
        .config("pop3s", &format!("[{s:?}]"))
        .config(
            "proxy_protocol",
            &format!("{{ listeners = [{p:?}, {s:?}], trusted_proxies = [\"127.0.0.1/32\"], header_timeout_secs = 2 }}"),
        )
        .config(
            "health",
            &format!("{{ listen = \"127.0.0.1:{}\", drain_delay_secs = {drain_delay_secs} }}", ports.health),
        )
        // Penalties capped at 4 s so the throttle test stays short, yet
        // long enough that the next attempt of a busy test machine still
        // arrives inside the penalty (see the throttle test).
        .config("auth_penalty_max_ms", "4000")
        .config("shutdown_grace_secs", &grace_secs.to_string())
        .log("info,pobox_server=debug");
    for (k, v) in store.node_keys(name) {
        b = b.config(k, &v);
    }
    if let Some((cert, key)) = tls {
        b = b.config("tls_cert", &format!("{:?}", cert.display().to_string()));
        b = b.config("tls_key", &format!("{:?}", key.display().to_string()));
    }
    b.start()
}

/// HAProxy, killed on drop.
struct Haproxy {
    child: Child,
    log: PathBuf,
    /// Frontend sending PROXY v2 to the nodes' POP3 listeners.
    pop3_v2: u16,
    /// Frontend sending PROXY v1 to the same listeners.
    pop3_v1: u16,
    /// Frontend sending PROXY v2 to the nodes' POP3S listeners (TLS passes
    /// through; the header comes before the ClientHello).
    pop3s_v2: u16,
    /// One frontend per node, each with a backend holding only that node
    /// (PROXY v2 to its POP3 listener): a test that needs an attempt to
    /// reach a given node, not whichever round robin picks.
    pinned: [u16; 2],
    /// HAProxy's stats socket.
    stats: PathBuf,
}

impl Haproxy {
    fn start(dir: &Dir, nodes: &[NodePorts; 2]) -> Haproxy {
        let (pop3_v2, pop3_v1, pop3s_v2) = (free_port(), free_port(), free_port());
        let pinned = [free_port(), free_port()];
        let stats = dir.scratch("haproxy.sock");
        let backend_of = |name: &str, which: &[usize], port: fn(&NodePorts) -> u16, proxy: &str| {
            let mut b = format!(
                "backend {name}\n  balance roundrobin\n  option httpchk GET /health\n  http-check expect status 200\n"
            );
            for (i, n) in nodes.iter().enumerate().filter(|(i, _)| which.contains(i)) {
                b.push_str(&format!(
                    "  server node{i} 127.0.0.1:{} {proxy} check port {} inter 200ms fall 1 rise 1\n",
                    port(n),
                    n.health
                ));
            }
            b
        };
        let backend = |name: &str, port: fn(&NodePorts) -> u16, proxy: &str| backend_of(name, &[0, 1], port, proxy);
        // `timeout check`: without it the check's read timeout is `inter`
        // (200 ms), and with `fall 1` one slow answer on a loaded machine
        // took a node out for a moment, so round robin skipped it.
        let cfg = format!(
            "global\n  maxconn 200\n  stats socket {} mode 600 level user\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout check 5s\n\
             frontend f_pop3_v2\n  bind 127.0.0.1:{pop3_v2}\n  default_backend pop3_v2\n\
             frontend f_pop3_v1\n  bind 127.0.0.1:{pop3_v1}\n  default_backend pop3_v1\n\
             frontend f_pop3s_v2\n  bind 127.0.0.1:{pop3s_v2}\n  default_backend pop3s_v2\n\
             frontend f_node0\n  bind 127.0.0.1:{}\n  default_backend node0_v2\n\
             frontend f_node1\n  bind 127.0.0.1:{}\n  default_backend node1_v2\n\
             {}{}{}{}{}",
            stats.display(),
            pinned[0],
            pinned[1],
            backend("pop3_v2", |n| n.pop3, "send-proxy-v2"),
            backend("pop3_v1", |n| n.pop3, "send-proxy"),
            backend("pop3s_v2", |n| n.pop3s, "send-proxy-v2"),
            backend_of("node0_v2", &[0], |n| n.pop3, "send-proxy-v2"),
            backend_of("node1_v2", &[1], |n| n.pop3, "send-proxy-v2"),
        );
        let path = dir.scratch("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let check = TestCommand::new(HAPROXY).arg("-c").arg("-f").arg(&path).output();
        assert!(check.status.success(), "haproxy -c refused the config:\n{cfg}\n{}", check.dump());
        let log = dir.scratch("haproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start haproxy");
        let h = Haproxy { child, log, pop3_v2, pop3_v1, pop3s_v2, pinned, stats };
        // Every server of every backend checked and UP before a test uses it.
        let up = eventually(Duration::from_secs(20), || {
            let s = h.statuses();
            s.len() == SERVERS && s.iter().all(|(_, _, st)| st == "UP")
        });
        assert!(up, "HAProxy never saw both nodes UP: {:?}\n{}", h.statuses(), h.log());
        h
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (backend, server, status) of every server, from `show stat` on the
    /// stats socket (CSV).
    fn statuses(&self) -> Vec<(String, String, String)> {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.stats) else { return Vec::new() };
        s.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
        let _ = s.write_all(b"show stat\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let mut lines = text.lines();
        let Some(header) = lines.next() else { return Vec::new() };
        let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let Some(status) = cols.iter().position(|c| *c == "status") else { return Vec::new() };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > status && f[1].starts_with("node"))
            .map(|f| (f[0].to_string(), f[1].to_string(), f[status].to_string()))
            .collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two nodes and HAProxy in front of them.
struct Cluster<'d> {
    nodes: [Server<'d>; 2],
    ports: [NodePorts; 2],
    haproxy: Haproxy,
}

/// The directories a cluster borrows: the shared store, and one data dir
/// per node.
struct Dirs {
    store: SharedStore,
    nodes: [Dir; 2],
}

impl Dirs {
    fn new(store: SharedStore) -> Dirs {
        Dirs { store, nodes: [Dir::new(), Dir::new()] }
    }

    /// On one PostgreSQL database, if `haproxy`, `curl` and PostgreSQL are
    /// there (else the test fails, or skips with `POBOX_ALLOW_SKIP=1`).
    fn postgres(test: &str) -> Option<Dirs> {
        if !have_tools(test) {
            return None;
        }
        SharedStore::postgres(test).map(Dirs::new)
    }
}

fn ports() -> NodePorts {
    NodePorts { pop3: free_port(), pop3s: free_port(), health: free_port() }
}

impl<'d> Cluster<'d> {
    /// Node 0 generates the self-signed certificate and node 1 serves the
    /// same one, so a client verifies either behind the balancer.
    fn start(dirs: &'d Dirs, grace_secs: [u32; 2], drain_delay_secs: [u32; 2]) -> Cluster<'d> {
        let ports = [ports(), ports()];
        let a = start_node("node0", &dirs.nodes[0], &dirs.store, ports[0], None, grace_secs[0], drain_delay_secs[0]);
        let pair = (dirs.nodes[0].cert(), dirs.nodes[0].data().join("tls/key.pem"));
        let b = start_node("node1", &dirs.nodes[1], &dirs.store, ports[1], Some(pair), grace_secs[1], drain_delay_secs[1]);
        let haproxy = Haproxy::start(&dirs.nodes[0], &ports);
        Cluster { nodes: [a, b], ports, haproxy }
    }

    /// Both nodes' logs.
    fn logs(&self) -> String {
        format!("{}\n{}", self.nodes[0].stderr(), self.nodes[1].stderr())
    }

    fn dump(&self) -> String {
        format!(
            "--- node 0 ---\n{}\n--- node 1 ---\n{}\n--- haproxy ---\n{}",
            self.nodes[0].dump(),
            self.nodes[1].dump(),
            self.haproxy.log()
        )
    }
}

/// Log lines of `logs` containing every one of `needles`.
fn lines_with<'a>(logs: &'a str, needles: &[&str]) -> Vec<&'a str> {
    logs.lines().filter(|l| needles.iter().all(|n| l.contains(n))).collect()
}

#[test]
fn the_client_address_from_proxy_v1_and_v2_reaches_logs_and_login_history_on_both_nodes() {
    let Some(dirs) = Dirs::postgres("haproxy client address") else { return };
    client_address_reaches_logs_and_login_history(&dirs);
}

/// The same on a shared Maildir location.
#[test]
fn the_client_address_reaches_logs_and_login_history_on_maildir_nodes() {
    if !have_tools("haproxy client address, Maildir") {
        return;
    }
    client_address_reaches_logs_and_login_history(&Dirs::new(SharedStore::new()));
}

fn client_address_reaches_logs_and_login_history(dirs: &Dirs) {
    let cluster = Cluster::start(dirs, [1, 1], [0, 0]);
    // Sessions through each frontend until both nodes have served one of
    // it. Round robin alone does not promise that a given session lands on
    // a given node (a node's check may fail for a moment on a loaded
    // machine), so the test counts where each session went instead of
    // assuming an even split. Bounded: ten sessions per frontend.
    let logins = |i: usize| lines_with(&cluster.nodes[i].stderr(), &["login", "user=alice"]).len();
    let mut served = [0usize; 2];
    for port in [cluster.haproxy.pop3_v2, cluster.haproxy.pop3_v1] {
        let mut reached = [false; 2];
        for _ in 0..10 {
            if reached == [true, true] {
                break;
            }
            let mut c = Client::from(CLIENT, port);
            let r = c.login("alice", PW);
            assert!(r.starts_with("+OK"), "login through HAProxy: {r}\n{}", cluster.dump());
            assert!(c.cmd("STAT").starts_with("+OK 1 "));
            assert!(c.cmd("QUIT").starts_with("+OK"));
            // The node logged the login before answering; its log is read
            // by a thread, hence the wait for the total to grow.
            let total = served[0] + served[1] + 1;
            assert!(eventually(Duration::from_secs(10), || logins(0) + logins(1) == total), "{}", cluster.dump());
            let node = usize::from(logins(1) > served[1]);
            served[node] += 1;
            reached[node] = true;
        }
        assert_eq!(reached, [true, true], "port {port}: HAProxy never sent a session to each node\n{}", cluster.dump());
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        let log = node.stderr();
        let logins = lines_with(&log, &["login", "user=alice"]);
        assert_eq!(logins.len(), served[i], "{}", cluster.dump());
        for l in &logins {
            assert!(l.contains("peer=127.0.0.2:"), "login line without the client's address: {l}");
        }
        assert!(node.stderr().contains("PROXY header accepted"), "{}", node.dump());
        // Nothing about a session names HAProxy's own address.
        assert!(lines_with(&node.stderr(), &["peer=127.0.0.1:"]).is_empty(), "{}", node.dump());
        // The login history records the client, not the balancer.
        let history = std::fs::read_to_string(node.dir.data().join("logins/alice.log")).unwrap_or_default();
        let logins: Vec<&str> = history.lines().filter(|l| l.starts_with("L\t")).collect();
        assert_eq!(logins.len(), served[i], "node {i} served {} logins:\n{history}\n{}", served[i], cluster.dump());
        for l in logins {
            assert!(l.ends_with("\t127.0.0.2"), "history line {l:?}");
        }
    }
}

#[test]
fn throttling_hits_the_abusive_address_while_another_address_still_logs_in() {
    let Some(dirs) = Dirs::postgres("haproxy throttling") else { return };
    let cluster = Cluster::start(&dirs, [1, 1], [0, 0]);
    // Wrong passwords from 127.0.0.2, each for a different name so only
    // the per-address penalty grows, sent to one node after the other
    // through that node's pinned frontend. Each node keeps its own
    // penalties, so only back-to-back failures on ONE node are sure to be
    // throttled: three are free, the counts leak a little, so the sixth
    // sets the first penalty (about 1 s) and the seventh waits if it comes
    // within it, the eighth within about 2 s, later ones within 4 s (the
    // cap). Alternating nodes promised nothing: while the client waited
    // out one node's penalty, the other node's ran out. So: attempts until
    // the node logs a throttled one, at most twelve per node.
    let mut sent = 0;
    for (i, node) in cluster.nodes.iter().enumerate() {
        for _ in 0..12 {
            let mut c = Client::from(CLIENT, cluster.haproxy.pinned[i]);
            let r = c.login(&format!("guess{sent}"), "wrong");
            assert!(r.starts_with("-ERR [AUTH]"), "wrong password answered {r:?}");
            sent += 1;
            if node.stderr().contains("auth throttled") {
                break;
            }
        }
        assert!(node.stderr_eventually_contains("auth throttled"), "node {i} not throttling:\n{}", node.dump());
    }
    // The other address logs in at once on whichever node it reaches.
    for port in [cluster.haproxy.pop3_v2, cluster.haproxy.pop3_v1] {
        let mut c = Client::from(OTHER, port);
        let r = c.login("bob", PW);
        assert!(r.starts_with("+OK"), "the other client was refused: {r}\n{}", cluster.dump());
        assert!(c.cmd("QUIT").starts_with("+OK"));
    }
    let logs = cluster.logs();
    let throttled = lines_with(&logs, &["auth throttled"]);
    assert!(!throttled.is_empty(), "no attempt was throttled\n{}", cluster.dump());
    for l in &throttled {
        assert!(l.contains("peer=127.0.0.2:"), "throttled someone else: {l}");
    }
    let failures = || lines_with(&cluster.logs(), &["authentication failed"]).len();
    assert!(eventually(Duration::from_secs(10), || failures() == sent), "{sent} sent\n{}", cluster.dump());
    let logs = cluster.logs();
    let failed = lines_with(&logs, &["authentication failed"]);
    assert!(failed.iter().all(|l| l.contains("ip=127.0.0.2 ")), "failure lines: {failed:#?}");
}

/// What needs the nodes to share one store, seen through HAProxy: a
/// session held through node 0 makes a login on node 1 (pinned, and
/// through the balanced frontend, whichever node that picks) answer
/// `[IN-USE]`; both nodes list the same UIDLs; a DELE committed through one
/// node is gone on the other.
#[test]
fn a_maildrop_held_through_one_node_is_in_use_on_the_other_and_both_list_the_same_uidls() {
    let Some(dirs) = Dirs::postgres("haproxy shared store") else { return };
    dirs.store.deliver("alice", b"Subject: second\r\n\r\nanother one\r\n");
    let cluster = Cluster::start(&dirs, [1, 1], [0, 0]);
    let [pin0, pin1] = cluster.haproxy.pinned;

    let mut held = Client::from(CLIENT, pin0);
    assert!(held.login("alice", PW).starts_with("+OK"), "{}", cluster.dump());
    let uidls = held.listing("UIDL");
    assert_eq!(uidls.len(), 2, "{uidls:?}");
    let mut other = Client::from(OTHER, pin1);
    let r = other.login("alice", PW);
    assert!(r.starts_with("-ERR [IN-USE]"), "node 1 while node 0 holds the maildrop: {r}\n{}", cluster.dump());
    for port in [cluster.haproxy.pop3_v2, cluster.haproxy.pop3_v1] {
        let mut c = Client::from(OTHER, port);
        let r = c.login("alice", PW);
        assert!(r.starts_with("-ERR [IN-USE]"), "through the balancer while held: {r}\n{}", cluster.dump());
    }
    assert!(held.cmd("QUIT").starts_with("+OK"));

    // Released at QUIT: node 1 serves the same maildrop, same UIDLs, and
    // commits a deletion ...
    let mut b = Client::from(OTHER, pin1);
    assert!(b.login("alice", PW).starts_with("+OK"), "node 1 after the QUIT on node 0\n{}", cluster.dump());
    assert_eq!(b.listing("UIDL"), uidls, "node 1 lists other UIDLs than node 0");
    assert!(b.cmd("DELE 1").starts_with("+OK"));
    assert!(b.cmd("QUIT").starts_with("+OK"));
    // ... that node 0 sees.
    let mut a = Client::from(CLIENT, pin0);
    assert!(a.login("alice", PW).starts_with("+OK"), "{}", cluster.dump());
    let first = uidls[0].split(' ').nth(1).unwrap();
    let second = uidls[1].split(' ').nth(1).unwrap();
    assert_eq!(a.listing("UIDL"), vec![format!("1 {second}")], "node 0 after node 1 deleted {first}");
    assert!(a.cmd("QUIT").starts_with("+OK"));
    // Both nodes logged the client's address for the refused logins.
    for node in &cluster.nodes {
        assert!(node.stderr_eventually_contains("peer=127.0.0.3:"), "{}", node.dump());
    }
}

/// Connects straight to a node's PROXY listener from `src`, sends `bytes`,
/// and returns what the node sent before closing.
fn direct(src: Ipv4Addr, port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect_from(src, port);
    // The node may close before reading it all: a failed write is fine.
    let _ = s.write_all(bytes);
    util::read_until_closed(&mut s)
}

#[test]
fn spoofed_missing_garbage_and_oversized_headers_are_refused_without_harm() {
    let Some(dirs) = Dirs::postgres("haproxy refusals") else { return };
    let cluster = Cluster::start(&dirs, [1, 1], [0, 0]);
    let node = &cluster.nodes[0];
    let pop3 = cluster.ports[0].pop3;
    // A client pretending to be a balancer: a header naming someone else,
    // from an address not in trusted_proxies. Closed before any greeting.
    let got = direct(CLIENT, pop3, b"PROXY TCP4 10.9.9.9 127.0.0.1 4000 110\r\nUSER alice\r\n");
    assert!(got.is_empty(), "untrusted peer got {:?}", String::from_utf8_lossy(&got));
    assert!(node.stderr_eventually_contains("peer is not a trusted proxy"), "{}", node.dump());
    assert!(!node.stderr().contains("10.9.9.9"), "a spoofed address reached the log");
    // The trusted balancer's address without a header: refused too (else
    // anyone behind a misconfigured balancer would be "127.0.0.1").
    let got = direct(Ipv4Addr::LOCALHOST, pop3, b"USER alice\r\nPASS secret pw\r\n");
    assert!(got.is_empty(), "headerless connection got {:?}", String::from_utf8_lossy(&got));
    assert!(node.stderr_eventually_contains("no PROXY protocol header"), "{}", node.dump());
    // Nothing at all: closed when the header timeout (2 s) ends, not held.
    let got = direct(Ipv4Addr::LOCALHOST, pop3, b"");
    assert!(got.is_empty());
    assert!(node.stderr_eventually_contains("no complete PROXY header within"), "{}", node.dump());
    // Garbage and oversized headers of both versions.
    let mut v2_huge = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
    v2_huge.extend(vec![0u8; 4096]);
    let long_v1 = format!("PROXY TCP4 {} 127.0.0.1 1 110\r\n", "1".repeat(300));
    for bytes in [
        b"PROXY TCP4 999.1.1.1 127.0.0.1 4000 110\r\n".to_vec(),
        b"PROXY TCP4 127.0.0.2 127.0.0.1 4000\r\n".to_vec(),
        b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0c127.0.0.2abc".to_vec(),
        v2_huge,
        long_v1.into_bytes(),
        vec![0xff; 64],
    ] {
        let got = direct(Ipv4Addr::LOCALHOST, pop3, &bytes);
        assert!(got.is_empty(), "{:?} answered {:?}", String::from_utf8_lossy(&bytes), String::from_utf8_lossy(&got));
    }
    assert!(node.stderr_eventually_contains("malformed PROXY header"), "{}", node.dump());
    assert!(node.stderr_eventually_contains("PROXY header too long"), "{}", node.dump());
    // A header from the trusted address, sent by hand, is honoured ...
    let mut s = connect_from(Ipv4Addr::LOCALHOST, pop3);
    s.write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 4000 110\r\n").unwrap();
    let mut c = Client::on(s);
    assert!(c.greeting.starts_with("+OK"), "{}", c.greeting);
    // A client at 192.0.2.44 is not on loopback: no cleartext password
    // without TLS, though the socket the node sees is a loopback one.
    let user = c.cmd("USER alice");
    assert!(user.starts_with("-ERR"), "cleartext USER from a remote client answered {user:?}");
    drop(c);
    assert!(node.stderr_eventually_contains("peer=192.0.2.44:"), "{}", node.dump());
    // ... and after all that the node still serves through HAProxy.
    for _ in 0..2 {
        let mut c = Client::from(CLIENT, cluster.haproxy.pop3_v2);
        assert!(c.login("alice", PW).starts_with("+OK"), "{}", cluster.dump());
        assert!(c.cmd("QUIT").starts_with("+OK"));
    }
    // The refusals are counted, not silent.
    let refused = lines_with(&node.stderr(), &["connection refused: PROXY protocol"]).len();
    assert!(refused >= 9, "{refused} refusals logged\n{}", node.dump());
}

#[test]
fn pop3s_through_haproxy_with_proxy_v2_header_before_tls() {
    let Some(dirs) = Dirs::postgres("haproxy pop3s") else { return };
    let cluster = Cluster::start(&dirs, [1, 1], [0, 0]);
    let port = cluster.haproxy.pop3s_v2;
    // curl from 127.0.0.2, verifying the nodes' certificate; twice, so
    // both nodes do a TLS handshake after the header.
    for _ in 0..2 {
        let out = TestCommand::tool("curl")
            .args(["--silent", "--show-error", "--max-time", "30", "--interface", "127.0.0.2", "--cacert"])
            .arg(dirs.nodes[0].cert())
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--user")
            .arg(format!("alice:{PW}"))
            .arg(format!("pop3s://localhost:{port}/1"))
            .output();
        assert!(out.status.success(), "curl pop3s through HAProxy failed\n{}\n{}", out.dump(), cluster.dump());
        assert!(out.stdout().contains("through the balancer"), "{}", out.dump());
    }
    for node in &cluster.nodes {
        assert!(node.stderr_eventually_contains("user=alice"), "{}", node.dump());
        let log = node.stderr();
        let logins = lines_with(&log, &["login", "user=alice", "tls=true"]);
        assert!(!logins.is_empty(), "no TLS login line\n{}", node.dump());
        assert!(logins.iter().all(|l| l.contains("peer=127.0.0.2:")), "{logins:#?}");
    }
}

/// `GET /health` on `port`: the status code, or `None` if nothing answers.
fn health(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

#[test]
fn a_draining_node_answers_503_and_goes_down_in_haproxy_while_the_other_serves() {
    let Some(dirs) = Dirs::postgres("haproxy draining") else { return };
    // Node 0: after SIGTERM it keeps accepting for 10 s while /health says
    // 503, then drains for up to 60 s while a session is open.
    let mut cluster = Cluster::start(&dirs, [60, 1], [10, 0]);
    let p0 = cluster.ports[0];
    assert_eq!(health(p0.health), Some(200));
    // A logged-in session on node 0 (a PROXY header sent by hand from the
    // trusted address) keeps the process alive through the drain.
    let held_header = b"PROXY TCP4 127.0.0.2 127.0.0.1 4000 110\r\n";
    let mut s = connect_from(Ipv4Addr::LOCALHOST, p0.pop3);
    s.write_all(held_header).unwrap();
    let mut held = Client::on(s);
    assert!(held.login("bob", PW).starts_with("+OK"));
    cluster.nodes[0].sigterm();
    assert!(cluster.nodes[0].stderr_eventually_contains("health endpoint reports draining"), "{}", cluster.dump());
    assert_eq!(health(p0.health), Some(503), "the draining node must say so");
    // Within the drain delay the node still greets a new connection, so
    // clients the balancer sends before it notices are not refused.
    let mut s = connect_from(Ipv4Addr::LOCALHOST, p0.pop3);
    s.write_all(held_header).unwrap();
    let late = Client::on(s);
    assert!(late.greeting.starts_with("+OK"), "refused within the drain delay: {:?}", late.greeting);
    drop(late);
    let down = eventually(Duration::from_secs(20), || {
        let s = cluster.haproxy.statuses();
        s.iter().filter(|(_, n, _)| n == "node0").all(|(_, _, st)| st.starts_with("DOWN"))
            && s.iter().filter(|(_, n, _)| n == "node1").all(|(_, _, st)| st == "UP")
            && s.len() == SERVERS
    });
    assert!(down, "HAProxy did not take node0 out: {:?}\n{}", cluster.haproxy.statuses(), cluster.dump());
    // New clients all reach node 1.
    for _ in 0..3 {
        let mut c = Client::from(OTHER, cluster.haproxy.pop3_v2);
        assert!(c.login("alice", PW).starts_with("+OK"), "{}", cluster.dump());
        assert!(c.cmd("QUIT").starts_with("+OK"));
    }
    assert_eq!(lines_with(&cluster.nodes[0].stderr(), &["user=alice"]).len(), 0, "a draining node got a new session");
    // After the delay the listeners close; the held session ends normally
    // and node 0 exits.
    assert!(
        eventually(Duration::from_secs(30), || cluster.nodes[0].stderr().contains("shutting down: no new connections")),
        "{}",
        cluster.dump()
    );
    assert_eq!(health(p0.health), Some(503));
    assert!(held.cmd("QUIT").starts_with("+OK"));
    let status = cluster.nodes[0].wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert_eq!(health(p0.health), None, "the endpoint is gone with the process");
}

/// Reads one SMTP/LMTP reply (all its lines); returns the last line.
fn reply(r: &mut BufReader<TcpStream>) -> String {
    for _ in 0..50 {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            return l;
        }
        if l.as_bytes().get(3) != Some(&b'-') {
            return l;
        }
    }
    panic!("reply longer than 50 lines");
}

/// One mail transaction after a PROXY header: `hello` is `LHLO` or `EHLO`.
fn transaction(port: u16, header: &[u8], hello: &str, rcpt: &str) {
    let mut s = connect_from(Ipv4Addr::LOCALHOST, port);
    s.write_all(header).unwrap();
    let mut r = BufReader::new(s);
    let greeting = reply(&mut r);
    assert!(greeting.starts_with("220"), "greeting {greeting:?}");
    for (cmd, want) in [
        (format!("{hello} client.example"), "250"),
        ("MAIL FROM:<sender@example.org>".to_string(), "250"),
        (format!("RCPT TO:<{rcpt}>"), "250"),
        ("DATA".to_string(), "354"),
        ("Subject: via proxy\r\n\r\nbody\r\n.".to_string(), "250"),
        ("QUIT".to_string(), "221"),
    ] {
        r.get_mut().write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let got = reply(&mut r);
        assert!(got.starts_with(want), "{cmd:?} answered {got:?}");
    }
}

/// The header works on the mail intake listeners too: the `Received`
/// trace line names the address the header carried (LMTP: v2, SMTP: v1).
#[test]
fn lmtp_and_smtp_listeners_take_the_header_and_trace_the_client() {
    let store = SharedStore::new();
    let data = Dir::new();
    let (lmtp, smtp) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut b = data
        .server()
        .listeners_in_config()
        .config("lmtp", &format!("[{lmtp:?}]"))
        .config("smtp", &format!("[{smtp:?}]"))
        .config("check_spf_dkim_dmarc", "false")
        .config(
            "proxy_protocol",
            &format!(
                "{{ listeners = [{lmtp:?}, {smtp:?}], trusted_proxies = [\"127.0.0.1\"], header_timeout_secs = 2 }}"
            ),
        );
    for (k, v) in store.node_keys("solo") {
        b = b.config(k, &v);
    }
    let node = b.start();
    let port = |a: &str| a.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend([192, 0, 2, 9, 127, 0, 0, 1, 0x1f, 0x90, 0, 24]);
    transaction(port(&lmtp), &v2, "LHLO", "bob@localhost");
    transaction(port(&smtp), b"PROXY TCP4 198.51.100.7 127.0.0.1 5000 25\r\n", "EHLO", "bob@localhost");
    let mail = store.dir.data().join("mail/bob/new");
    let texts: Vec<String> =
        std::fs::read_dir(&mail).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert_eq!(texts.len(), 2, "{}", node.dump());
    assert!(texts.iter().any(|t| t.contains("192.0.2.9")), "LMTP trace without the client:\n{texts:#?}");
    assert!(texts.iter().any(|t| t.contains("198.51.100.7")), "SMTP trace without the client:\n{texts:#?}");
    assert!(!texts.iter().any(|t| t.contains("127.0.0.1")), "the proxy's address was traced:\n{texts:#?}");
}

/// A balancer connection still waiting for its header does not hold up a
/// shutdown: draining ends the wait (else SIGTERM would wait for the
/// header timeout, 30 s here, or the 20 s grace, whichever came first).
#[test]
fn a_pending_header_does_not_delay_shutdown() {
    let store = SharedStore::new();
    let data = Dir::new();
    let pop3 = format!("127.0.0.1:{}", free_port());
    let mut b = data
        .server()
        .listeners_in_config()
        .config("pop3", &format!("[{pop3:?}]"))
        .config("shutdown_grace_secs", "20")
        .log("info,pobox_server=debug")
        .config(
            "proxy_protocol",
            &format!("{{ listeners = [{pop3:?}], trusted_proxies = [\"127.0.0.1\"], header_timeout_secs = 30 }}"),
        );
    for (k, v) in store.node_keys("solo") {
        b = b.config(k, &v);
    }
    let mut node = b.start();
    // Half a header from the trusted address, then silence.
    let mut s = connect_from(Ipv4Addr::LOCALHOST, node.pop3);
    s.write_all(b"PROXY TCP4 127.0.0.2").unwrap();
    assert!(node.stderr_eventually_contains("reading the PROXY header"), "{}", node.dump());
    node.sigterm();
    // Far below the 20 s the drain would otherwise wait for the slot.
    let status = node.wait(Duration::from_secs(12));
    assert!(status.success(), "{status:?}");
    assert!(util::read_until_closed(&mut s).is_empty());
}
