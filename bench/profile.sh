#!/usr/bin/env bash
# Profile one server during one scenario with perf (Debian: linux-perf).
#
#   bench/profile.sh SCENARIO [pobox|dovecot] [SECONDS]
#
# Runs pobox-bench for SCENARIO only (1 repetition, longer reps so perf
# has time), waits for the server to start and the scenario to begin,
# samples the server's CPU for SECONDS (default 12), and writes a flat
# self-time report to $OUT/SCENARIO-SERVER.txt (default OUT=/tmp/pobox-bench-profile).
# pobox is sampled by pid (all its threads); Dovecot by CPU (the server CPU,
# 0) filtered to Dovecot's process names, because it forks per session.
# EXTRA="--big 2000" passes more arguments to pobox-bench.
set -euo pipefail
scenario=${1:?usage: bench/profile.sh SCENARIO [pobox|dovecot] [SECONDS]}
server=${2:-pobox}
secs=${3:-12}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
WORK=${WORK:-/tmp/pobox-bench}
OUT=${OUT:-/tmp/pobox-bench-profile}
mkdir -p "$OUT"
perf stat -e task-clock true >/dev/null 2>&1 || { echo "perf does not work here (apt-get install linux-perf)"; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log=$OUT/$scenario-$server.log
extra=()
[ "$server" = pobox ] && extra+=(--no-dovecot)
"$CARGO_TARGET_DIR/release/pobox-bench" --work "$WORK" --out "$OUT/results-$scenario-$server" \
    --scenarios "$scenario" --reps 1 --duration-ms "${DURATION_MS:-6000}" "${extra[@]}" ${EXTRA:-} >"$log" 2>&1 &
bench=$!
pid=
for _ in $(seq 1 1200); do
    pid=$(awk -v s="$server" '$1=="started" && $2==s {print $4}' "$log" | tail -1)
    grep -q "^== $scenario" "$log" && [ -n "$pid" ] && break
    sleep 0.25
done
[ -n "$pid" ] || { echo "server $server never started; see $log"; kill "$bench"; exit 1; }
data=$OUT/$scenario-$server.data
if [ "$server" = pobox ]; then
    perf record -q -F 1999 -p "$pid" -o "$data" -- sleep "$secs" 2>/dev/null
    filter=()
else
    perf record -q -F 1999 -C 0 -o "$data" -- sleep "$secs" 2>/dev/null
    filter=(--comms dovecot,pop3,pop3-login,auth,auth-worker,lmtp,anvil,log,config,stats)
fi
wait "$bench" || true
perf report -i "$data" --no-children --sort comm,dso,symbol --stdio "${filter[@]}" 2>/dev/null \
    | grep -v "^#" | grep -v "^$" | sed -E "s/ +/ /g; s/ - - *$//" | head -45 >"$OUT/$scenario-$server.txt"
echo "== $OUT/$scenario-$server.txt"
cat "$OUT/$scenario-$server.txt"
