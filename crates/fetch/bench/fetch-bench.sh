#!/usr/bin/env bash
# Benchmark (not a test): fetch N messages (default 1000) from a private
# Dovecot on loopback with pobox fetch, mpop and fetchmail, each into an
# empty local store, in delete mode and then in keep mode (MODES, default
# "delete keep"), and print messages/s and MiB/s.
#
#   cargo build --release -p pobox
#   bash crates/fetch/bench/fetch-bench.sh [N] ["target/release/pobox fetch" or path/to/pobox-fetch-dev] [MODES]
#
# Needs: dovecot-pop3d, mpop, fetchmail, python3 (apt-get install -y
# dovecot-pop3d mpop fetchmail). Plaintext POP3 on 127.0.0.1 for all three,
# so the figures compare the fetchers, not TLS stacks.
set -euo pipefail
N=${1:-1000}
FETCH=${2:-${CARGO_TARGET_DIR:-target}/release/pobox-fetch-dev}
MODES=${3:-delete keep}
W=$(mktemp -d /tmp/pobox-bench.XXXXXX)
chmod 755 "$W"
trap 'kill $(cat "$W/run/master.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$W"' EXIT
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
if [ "$(id -u)" = 0 ]; then U=65534; G=65534; LOGIN=dovenull; INT=dovecot; INTG=dovecot
else U=$(id -u); G=$(id -g); LOGIN=$(id -un); INT=$LOGIN; INTG=$(id -gn); fi
echo "bench:{PLAIN}secret:$U:$G::$W/home::" > "$W/passwd"
cat > "$W/dovecot.conf" <<EOF
protocols = pop3
listen = 127.0.0.1
base_dir = $W/run
state_dir = $W/run/state
log_path = $W/dovecot.log
ssl = no
disable_plaintext_auth = no
default_login_user = $LOGIN
default_internal_user = $INT
default_internal_group = $INTG
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = $W/passwd
}
userdb {
  driver = passwd-file
  args = $W/passwd
}
service pop3-login {
  chroot =
  inet_listener pop3 {
    port = $PORT
  }
}
service anvil {
  chroot =
}
service imap-login {
  chroot =
}
EOF
# N messages, sizes 1-40 KB (mean ~20 KB), with dot-stuffing and From lines.
python3 - "$W/msgs" "$N" <<'EOF'
import os, sys, random
d, n = sys.argv[1], int(sys.argv[2]); os.makedirs(d)
r = random.Random(42)
for i in range(n):
    body = "".join(r.choice("abcdefghij klmnop") for _ in range(r.randint(1000, 40000)))
    lines = [body[k:k+76] for k in range(0, len(body), 76)]
    msg = f"From: s{i}@example.org\nTo: bench@example.org\nSubject: bench {i}\nMessage-ID: <{i}@bench>\n\n.dot\nFrom here\n" + "\n".join(lines) + "\n"
    open(f"{d}/{i}.msg", "w").write(msg)
EOF
TOTAL_BYTES=$(cat "$W"/msgs/*.msg | wc -c)
dovecot -F -c "$W/dovecot.conf" & sleep 1
fill() {
  rm -rf "$W/home/Maildir"; mkdir -p "$W/home/Maildir"/{new,cur,tmp}
  cp "$W"/msgs/*.msg "$W/home/Maildir/new/"
  [ "$(id -u)" = 0 ] && chown -R $U:$G "$W/home"
  # Warm Dovecot's index so every client sees the same server state.
  python3 - "$PORT" <<'EOF'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"USER bench\r\nPASS secret\r\nSTAT\r\nQUIT\r\n"); time.sleep(0.3); s.close()
EOF
}
left() { ls "$W/home/Maildir/new" "$W/home/Maildir/cur" | grep -c msg || true; }
report() { # name seconds stored
  python3 -c "import sys; n,s,b,st=sys.argv[1],float(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4]); print(f'| {n} | {st} | {s:.2f} | {st/s:.0f} | {b/s/1048576:.1f} |')" "$1" "$2" "$TOTAL_BYTES" "$3"
}
for MODE in $MODES; do
if [ "$MODE" = keep ]; then POBOX_KEEP="keep = true"; MPOP_KEEP=on; FM_KEEP=keep; WANT_LEFT=$N
else POBOX_KEEP=""; MPOP_KEEP=off; FM_KEEP="no keep"; WANT_LEFT=0; fi
echo
echo "$MODE mode:"
echo
echo "| fetcher | messages stored | seconds | messages/s | MiB/s |"
echo "|---|---|---|---|---|"

fill
rm -rf "$W/pobox"; mkdir -p "$W/pobox"
cat > "$W/pobox/fetch.toml" <<EOF
state_dir = "$W/pobox/state"
[accounts.bench]
host = "127.0.0.1"
port = $PORT
security = "none"
allow_insecure = true
user = "bench"
password = "secret"
maildir = "$W/pobox/Maildir"
$POBOX_KEEP
EOF
chmod 600 "$W/pobox/fetch.toml"
T0=$(date +%s.%N); $FETCH --config "$W/pobox/fetch.toml" --quiet || true; T1=$(date +%s.%N)
report "pobox fetch" "$(echo "$T1 - $T0" | bc)" "$(ls "$W/pobox/Maildir/new" | wc -l)"
[ "$(left)" = "$WANT_LEFT" ] || echo "WARNING: pobox left $(left) on the server"

fill
rm -rf "$W/mpop"; mkdir -p "$W/mpop/Maildir"/{new,cur,tmp}
T0=$(date +%s.%N)
mpop --host=127.0.0.1 --port="$PORT" --tls=off --auth=user --user=bench --passwordeval='echo secret' \
     --delivery=maildir,"$W/mpop/Maildir" --keep=$MPOP_KEEP --only-new=off --uidls-file="$W/mpop/uidls" -q >/dev/null 2>&1 || true
T1=$(date +%s.%N)
report "mpop $(mpop --version | head -1 | awk '{print $3}')" "$(echo "$T1 - $T0" | bc)" "$(find "$W/mpop/Maildir/new" "$W/mpop/Maildir/cur" -type f | wc -l)"
[ "$(left)" = "$WANT_LEFT" ] || echo "WARNING: mpop left $(left) on the server"

fill
rm -rf "$W/fm"; mkdir -p "$W/fm/Maildir"/{new,cur,tmp}
# fetchmail has no Maildir writer: the usual setup is an MDA; this one
# writes each message to its own file in new/ (write, fsync via sync -d is
# not available, so: no fsync; fetchmail's figure is flattered by that).
cat > "$W/fm/rc" <<EOF
set no syslog
poll 127.0.0.1 port $PORT proto pop3 no uidl
  user "bench" password "secret" is "$(id -un)" here
  $FM_KEEP fetchall sslproto "" no sslcertck
  mda "sh -c 'cat > $W/fm/Maildir/tmp/\$\$ && mv $W/fm/Maildir/tmp/\$\$ $W/fm/Maildir/new/\$\$'"
EOF
chmod 600 "$W/fm/rc"
T0=$(date +%s.%N)
HOME="$W/fm" fetchmail -f "$W/fm/rc" --pidfile "$W/fm/pid" -s >/dev/null 2>&1 || true
T1=$(date +%s.%N)
report "fetchmail $(fetchmail --version 2>/dev/null | head -1 | awk '{print $5}' | cut -d+ -f1)" "$(echo "$T1 - $T0" | bc)" "$(ls "$W/fm/Maildir/new" | wc -l)"
[ "$(left)" = "$WANT_LEFT" ] || echo "WARNING: fetchmail left $(left) on the server"
done
echo
echo "$N messages, $TOTAL_BYTES octets ($(python3 -c "print(round($TOTAL_BYTES/1048576,1))") MiB) on the server each time; $(nproc) cores."
