#!/usr/bin/env bash
# Retention on a 100,000-message maildrop: time and peak memory of
# `pobox mailbox expire` (dry run and real), and of a POP3 login that runs
# expiry before its snapshot. Writes the Maildir directly (Dovecot-style
# names with S= and W=), marks half the messages retrieved 10 days ago,
# and applies `retrieved_days = 3` with a 7-day restore window.
#
#   bench/expire-100k.sh [N] [POBOX_BINARY]
set -euo pipefail
N=${1:-100000}
BIN=${2:-target/release/pobox}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DATA=$WORK/data
mkdir -p "$DATA"
echo pw | "$BIN" --data "$DATA" user add alice --password-stdin >/dev/null
cat > "$WORK/pobox.toml" <<TOML
[retention]
retrieved_days = 3
restore_days = 7
TOML
python3 - "$DATA/mail/alice" "$N" <<'PY'
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
for d in ("tmp", "new", "cur"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
body = b"From: bench@example.org\nSubject: message\n\n" + b"x" * 3000 + b"\n"
wire = len(body) + body.count(b"\n")
now = int(time.time())
log = []
for i in range(n):
    base = f"{now - 20*86400}.M{i}P1.bench"
    name = f"{base},S={len(body)},W={wire}:2,S"
    with open(os.path.join(root, "cur", name), "wb") as f:
        f.write(body)
    if i % 2 == 0:
        log.append(f"R {now - 10*86400} {base}\n")
with open(os.path.join(root, "pobox-retention.log"), "w") as f:
    f.writelines(log)
PY
measure() {
    /usr/bin/time -f "%e s wall, %M KiB max RSS" "$@" 2>&1 >/dev/null | tail -n 1
}
echo "maildrop: $N messages, half retrieved 10 days ago; retrieved_days = 3"
echo -n "expire --dry-run: "; measure "$BIN" --data "$DATA" --config "$WORK/pobox.toml" mailbox expire alice --dry-run
echo -n "expire:           "; measure "$BIN" --data "$DATA" --config "$WORK/pobox.toml" mailbox expire alice
echo "left in cur/: $(ls "$DATA/mail/alice/cur" | wc -l); restorable: $(ls "$DATA/mail/alice/.pobox-deleted/cur" | wc -l)"
echo -n "second expire (nothing to do): "; measure "$BIN" --data "$DATA" --config "$WORK/pobox.toml" mailbox expire alice
