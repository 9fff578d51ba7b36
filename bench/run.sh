#!/usr/bin/env bash
# The benchmark of issue 7: pobox vs a private Dovecot vs a raw sender.
#
#   bench/run.sh            full run (~10-15 min); results in bench/results/
#   bench/run.sh --quick    smoke run (< 1 min; what CI runs); results in $WORK/results-quick
#   bench/run.sh --install  apt-get install Dovecot (dovecot-pop3d, dovecot-lmtpd), then the full run
#   bench/run.sh -- ARGS    extra arguments for pobox-bench (see pobox-bench --help)
#
# What it does: builds pobox and pobox-bench (release, niced), raises the
# open-files limit, and runs pobox-bench, which writes the shared
# passwd-file / TLS cert / Maildirs, starts pobox, Dovecot (its own config
# under $WORK/dovecot, loopback ports) and the raw sender under
# `taskset -c 0`, pins itself to CPU 1, runs every scenario, checks every
# fetched message, and writes results.json, summary.md and SVG charts.
# Needs root for Dovecot (its mail processes run as the `pobench` user the
# harness creates); without Dovecot it measures pobox alone and says so.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
WORK=${WORK:-/tmp/pobox-bench}

args=()
install=0
for a in "$@"; do
    case "$a" in
        --install) install=1 ;;
        --) ;;
        *) args+=("$a") ;;
    esac
done

if [ "$install" = 1 ] && ! command -v dovecot >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-pop3d dovecot-lmtpd
    # The package starts a system Dovecot on the standard ports; the
    # benchmark uses its own instance and does not need it.
    systemctl stop dovecot 2>/dev/null || service dovecot stop 2>/dev/null || true
fi
command -v taskset >/dev/null || { echo "taskset missing (util-linux)"; exit 1; }
command -v openssl >/dev/null || { echo "openssl missing (apt-get install openssl)"; exit 1; }

nice cargo build --release -p pobox -p pobox-bench
# 10,000 idle sessions need 10,000+ descriptors in the server and the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r); load: $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$CARGO_TARGET_DIR/release/pobox-bench" --work "$WORK" ${args[@]+"${args[@]}"}
