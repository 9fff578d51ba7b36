#!/usr/bin/env python3
"""Delivery benchmark: messages/s through pobox's LMTP and SMTP listeners and
Dovecot's LMTP (Debian's dovecot-lmtpd), on the same messages in the same run,
at 1, 8 and 32 concurrent senders. Every delivery is fsynced by the server
before its 250 (pobox always; Dovecot with its default mail_fsync=optimized).

Not a test: it prints a Markdown table. Needs root (Dovecot drops to a mail
user), python3, dovecot-lmtpd, and a release build of pobox:

    cargo build --release -p pobox
    sudo python3 bench/deliver/bench.py --pobox target/release/pobox

Each sender keeps one connection and sends messages back to back
(PIPELINING: MAIL+RCPT+DATA in one write, then the body), each to its own
user (sender i -> user benchI), for --seconds per cell. Afterwards the
maildrops are counted: every acknowledged message must be in new/.
"""
import argparse, os, pathlib, pwd, shutil, socket, subprocess, sys, tempfile, threading, time

USERS = 32
MAIL_USER = "pobench"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, name, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{name} exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{name} did not listen on {port}")


def message(i, size):
    head = (f"From: Sender <sender@bench.test>\r\nTo: user@example.org\r\n"
            f"Subject: bench message {i}\r\nMessage-ID: <{i}@bench.test>\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n")
    line = "The quick brown fox jumps over the lazy dog, delivering mail. 0123456789\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head) - 2)] + "\r\n"
    # dot-stuffing is not needed: no line starts with '.'
    return (head + body).encode()


class Sender:
    def __init__(self, port, proto, user):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.f = self.s.makefile("rb")
        self.user = user
        self.reply()  # greeting
        hello = b"LHLO" if proto == "lmtp" else b"EHLO"
        self.s.sendall(hello + b" client.bench.test\r\n")
        self.reply()

    def reply(self):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("connection closed")
            if line[3:4] != b"-":
                return line

    def send(self, data):
        self.s.sendall(b"MAIL FROM:<sender@bench.test>\r\nRCPT TO:<%s@example.org>\r\nDATA\r\n" % self.user.encode())
        for _ in range(3):
            r = self.reply()
            if r[:1] not in (b"2", b"3"):
                raise RuntimeError(f"refused: {r!r}")
        self.s.sendall(data + b".\r\n")
        r = self.reply()
        if not r.startswith(b"250"):
            raise RuntimeError(f"not delivered: {r!r}")


def run_cell(port, proto, conc, seconds, msg):
    counts = [0] * conc
    errors = []
    start = threading.Barrier(conc + 1)
    stop = [False]

    def worker(i):
        try:
            snd = Sender(port, proto, f"bench{i}")
        except Exception as e:  # noqa: BLE001
            errors.append(e)
            start.wait()
            return
        start.wait()
        try:
            while not stop[0]:
                snd.send(msg)
                counts[i] += 1
            snd.s.sendall(b"QUIT\r\n")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop[0] = True
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        sys.exit(f"{proto} :{port} x{conc}: {errors[0]}")
    return sum(counts), elapsed


def count_new(root):
    n = 0
    for d in pathlib.Path(root).glob("**/new"):
        n += sum(1 for _ in d.iterdir())
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pobox", default="target/release/pobox")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--size", type=int, default=4096, help="message size in bytes")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--no-dovecot", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (Dovecot needs it)")
    levels = [int(x) for x in args.concurrency.split(",")]
    msg = message(0, args.size)
    work = pathlib.Path(tempfile.mkdtemp(prefix="pobox-deliver-bench-"))
    os.chmod(work, 0o755)  # Dovecot's auth process runs as the dovecot user
    procs = []
    try:
        # --- pobox ---
        data = work / "pobox"
        data.mkdir()
        (data / "users").write_text("".join(f"bench{i}:{{PLAIN}}pw\n" for i in range(USERS)))
        lmtp_port, smtp_port = free_port(), free_port()
        (work / "pobox.toml").write_text(
            f'hostname = "mx.example.org"\npop3 = []\npop3s = []\n'
            f'lmtp = ["127.0.0.1:{lmtp_port}"]\nsmtp = ["127.0.0.1:{smtp_port}"]\n'
            f'domains = ["example.org"]\nuser = "root"\nlog = "warn"\n'
            f'smtp_max_connections_per_ip = 100\nmax_connections_per_ip = 100\n'
            f'check_spf_dkim_dmarc = false\n')
        pobox = subprocess.Popen([args.pobox, "--data", str(data), "--config", str(work / "pobox.toml"), "serve"],
                                 stdout=subprocess.DEVNULL, stderr=open(work / "pobox.log", "w"))
        procs.append(pobox)
        wait_port(lmtp_port, pobox, "pobox")
        wait_port(smtp_port, pobox, "pobox")
        targets = [("pobox LMTP", lmtp_port, "lmtp", data / "mail"), ("pobox SMTP", smtp_port, "smtp", data / "mail")]

        # --- Dovecot ---
        if not args.no_dovecot:
            if not os.path.exists("/usr/lib/dovecot/lmtp"):
                sys.exit("dovecot-lmtpd is not installed (apt-get install -y dovecot-lmtpd), or pass --no-dovecot")
            try:
                pw = pwd.getpwnam(MAIL_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                                "--shell", "/usr/sbin/nologin", MAIL_USER], check=True)
                pw = pwd.getpwnam(MAIL_USER)
            d = work / "dovecot"
            for sub in ["run", "state", "log", "mail"]:
                (d / sub).mkdir(parents=True)
            os.chown(d / "mail", pw.pw_uid, pw.pw_gid)
            (d / "passwd").write_text("".join(
                f"bench{i}:{{PLAIN}}pw:{pw.pw_uid}:{pw.pw_gid}::{d}/mail/bench{i}::\n" for i in range(USERS)))
            dport = free_port()
            (d / "dovecot.conf").write_text(f"""
base_dir = {d}/run
state_dir = {d}/state
instance_name = pobox-deliver-bench
log_path = {d}/log/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
auth_username_format = %Ln
mail_location = maildir:{d}/mail/%u/Maildir
first_valid_uid = {pw.pw_uid}
last_valid_uid = {pw.pw_uid}
postmaster_address = postmaster@example.org
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {dport}
  }}
  process_limit = 64
}}
""")
            dove = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", str(d / "dovecot.conf")],
                                    stdout=subprocess.DEVNULL, stderr=open(d / "log" / "stderr.log", "w"))
            procs.append(dove)
            wait_port(dport, dove, "dovecot")
            targets.append(("Dovecot LMTP", dport, "lmtp", d / "mail"))

        results = {}
        acked = {}
        for name, port, proto, root in targets:
            for conc in levels:
                n, el = run_cell(port, proto, conc, args.seconds, msg)
                results[(name, conc)] = n / el
                acked[root] = acked.get(root, 0) + n
                print(f"{name:13} x{conc:<3} {n:6} msgs in {el:5.1f} s = {n / el:8.1f} msg/s", file=sys.stderr)
        for root, n in acked.items():
            found = count_new(root)
            status = "ok" if found == n else "MISMATCH"
            print(f"check {root}: {n} acknowledged, {found} in new/ ({status})", file=sys.stderr)
            if found != n:
                sys.exit(1)

        print(f"\n| server | " + " | ".join(f"{c} sender{'s' if c > 1 else ''}" for c in levels) + " |")
        print("|---|" + "---:|" * len(levels))
        for name, _, _, _ in targets:
            print(f"| {name} | " + " | ".join(f"{results[(name, c)]:.0f} msg/s" for c in levels) + " |")
        print(f"\n{args.size}-byte messages, {args.seconds:g} s per cell, cpus={os.cpu_count()}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("KEEP"):
            print("kept", work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
