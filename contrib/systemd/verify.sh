#!/bin/sh
# Checks the unit files with `systemd-analyze verify`, in system and user
# mode. The units name /usr/local/bin/pobox; verify insists the binary
# exists, so the check runs on copies pointing at POBOX_BIN (default: the
# workspace's debug build). Skips, saying so, without systemd-analyze.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${POBOX_BIN:-$here/../../target/debug/pobox}
if ! command -v systemd-analyze >/dev/null; then
    echo "SKIP: systemd-analyze not installed (apt-get install systemd)"
    exit 0
fi
[ -x "$bin" ] || { echo "no pobox binary at $bin: cargo build -p pobox, or set POBOX_BIN" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -m 700 "$tmp/run"
for f in pobox-fetch.service pobox-fetch.timer pobox-fetch-oneshot.service; do
    sed "s#/usr/local/bin/pobox#$bin#" "$here/$f" > "$tmp/$f"
done
units="$tmp/pobox-fetch.service $tmp/pobox-fetch.timer $tmp/pobox-fetch-oneshot.service"
# verify exits 0 on parse warnings ("Unknown key", "Failed to parse"), so
# any output at all counts as a failure. A user manager needs a runtime
# dir; a private one will do.
# shellcheck disable=SC2086
out=$(systemd-analyze verify --man=no $units 2>&1 &&
      XDG_RUNTIME_DIR="$tmp/run" systemd-analyze verify --user --man=no $units 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "$out" >&2
    exit 1
fi
echo "ok: systemd-analyze verify (system and user) passed"
