#!/bin/sh
# Installs a pobox package into throwaway roots with
# `dpkg --root=DIR --force-script-chrootless`, so the maintainer scripts run
# on this host against DIR (they honour DPKG_ROOT), and checks what an admin
# relies on: the binary runs, the pobox user exists, /var/lib/pobox is its
# own, the conffile is in place, the service is not enabled; removal keeps
# the data; purge keeps the mail and says so; the host is left untouched.
# It runs twice: with systemd-sysusers/systemd-tmpfiles, and with PATH
# hiding them (the adduser/useradd/install fallback).
#
#   contrib/deb/test-install.sh target/debian/pobox_*.deb
#
# Needs root (dpkg sets file owners, tmpfiles chowns to pobox); it fails,
# never skips, where it cannot run.
set -eu
deb=$(realpath "${1:?usage: $0 PACKAGE.deb}")
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" != 0 ]; then
    echo "test-install FAILED: needs root (dpkg sets owners; /var/lib/pobox is chowned to pobox)" >&2
    exit 1
fi
for tool in dpkg systemd-sysusers systemd-tmpfiles useradd; do
    command -v "$tool" >/dev/null || { echo "test-install FAILED: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
fail() {
    echo "FAIL: $*" >&2
    failed=1
}

# What must not change on the host (the scripts run here, outside DIR).
# Only pobox's traces, so that other users or packages coming and going
# meanwhile do not make this fail.
host_state() {
    getent passwd pobox || echo "no pobox user"
    getent group pobox || echo "no pobox group"
    dpkg-query -W -f='${Package} ${Version} ${Status}\n' pobox 2>&1 || true
    ls -ld --time-style=+%s.%N /var/lib/pobox /etc/pobox /etc/fail2ban/filter.d/pobox.conf 2>&1 || true
}
host_before=$(host_state)

# A PATH without systemd's tools: links to everything else in the usual
# directories (dpkg and the scripts need the rest).
nosystemd=$work/path-nosystemd
mkdir "$nosystemd"
for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
    [ -d "$d" ] || continue
    for f in "$d"/*; do
        name=${f##*/}
        case "$name" in systemd-sysusers|systemd-tmpfiles) continue ;; esac
        [ -e "$nosystemd/$name" ] || ln -s "$f" "$nosystemd/$name"
    done
done
if PATH=$nosystemd command -v systemd-sysusers >/dev/null || PATH=$nosystemd command -v systemd-tmpfiles >/dev/null; then
    echo "test-install FAILED: cannot hide systemd's tools for the fallback run" >&2
    exit 1
fi

run_case() {
    label=$1 path=$2
    root=$work/root-$label
    echo "-- install into $root ($label)"
    mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
    : > "$root/var/lib/dpkg/status"
    # --force-depends: the empty root has no libc6 package (the binary runs
    # on the host's libc). --log: the host's dpkg.log stays untouched.
    dpkgr() {
        PATH=$path dpkg --root="$root" --log="$work/dpkg-$label.log" \
            --force-script-chrootless --force-not-root --force-depends "$@"
    }
    dpkgr -i "$deb" > "$work/out" 2>&1 || { cat "$work/out"; fail "$label: dpkg -i"; return; }
    cat "$work/out"
    grep -q 'NOT enabled or started' "$work/out" || fail "$label: postinst does not say the service is not started"
    # Reinstalling runs postinst again as an upgrade: nothing may duplicate.
    dpkgr -i "$deb" > "$work/out" 2>&1 || { cat "$work/out"; fail "$label: reinstall"; return; }
    dpkgr -s pobox | grep -qx 'Status: install ok installed' || fail "$label: dpkg -s pobox"

    version=$("$root/usr/bin/pobox" --version) || fail "$label: usr/bin/pobox --version"
    echo "installed: $version"
    case "$version" in "pobox "[0-9]*) ;; *) fail "$label: --version printed '$version'" ;; esac

    n=$(grep -c '^pobox:' "$root/etc/passwd" || true)
    [ "$n" = 1 ] || fail "$label: $n pobox lines in etc/passwd"
    entry=$(grep '^pobox:' "$root/etc/passwd" || true)
    echo "passwd: $entry"
    uid=$(echo "$entry" | cut -d: -f3)
    gid=$(echo "$entry" | cut -d: -f4)
    [ -n "$uid" ] && [ "$uid" != 0 ] && [ "$uid" -lt 1000 ] || fail "$label: pobox uid '$uid' is not a system uid"
    [ "$(echo "$entry" | cut -d: -f6,7)" = /var/lib/pobox:/usr/sbin/nologin ] || fail "$label: pobox home/shell"
    grep -q "^pobox:[^:]*:$gid:" "$root/etc/group" || fail "$label: no pobox group with gid $gid"

    if [ -d "$root/var/lib/pobox" ]; then
        stat -c 'var/lib/pobox: %A %u:%g' "$root/var/lib/pobox"
        [ "$(stat -c '%u:%g %a' "$root/var/lib/pobox")" = "$uid:$gid 750" ] ||
            fail "$label: var/lib/pobox is not 0750 pobox:pobox"
    else
        fail "$label: no var/lib/pobox"
    fi
    cmp -s "$root/etc/pobox/pobox.toml" "$here/../pobox.toml" || fail "$label: etc/pobox/pobox.toml"
    dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Conffiles}\n' pobox | grep -q '/etc/pobox/pobox.toml' ||
        fail "$label: pobox.toml not registered as a conffile"
    # Installed, never enabled: no `systemctl enable` links.
    if ls "$root"/etc/systemd/system/*.wants/pobox.* >/dev/null 2>&1; then
        fail "$label: the package enabled pobox"
    fi

    # Mail that must survive removal and purge.
    mkdir -p "$root/var/lib/pobox/mail/alice/new"
    echo "Subject: keep me" > "$root/var/lib/pobox/mail/alice/new/1.keep"
    chown -R "$uid:$gid" "$root/var/lib/pobox/mail"
    echo "# admin edit" >> "$root/etc/pobox/pobox.toml"

    echo "-- remove"
    dpkgr -r pobox > "$work/out" 2>&1 || { cat "$work/out"; fail "$label: dpkg -r"; return; }
    [ ! -e "$root/usr/bin/pobox" ] || fail "$label: usr/bin/pobox still there after -r"
    [ ! -e "$root/lib/systemd/system/pobox.service" ] || fail "$label: pobox.service still there after -r"
    [ -f "$root/var/lib/pobox/mail/alice/new/1.keep" ] || fail "$label: -r removed mail"
    grep -q '# admin edit' "$root/etc/pobox/pobox.toml" 2>/dev/null || fail "$label: -r removed the edited conffile"

    echo "-- purge"
    dpkgr -P pobox > "$work/out" 2>&1 || { cat "$work/out"; fail "$label: dpkg -P"; return; }
    cat "$work/out"
    [ ! -e "$root/etc/pobox/pobox.toml" ] || fail "$label: conffile survived purge"
    [ -f "$root/var/lib/pobox/mail/alice/new/1.keep" ] || fail "$label: purge removed mail"
    grep -q '^pobox:' "$root/etc/passwd" || fail "$label: purge removed the pobox user"
    grep -q 'kept /var/lib/pobox' "$work/out" || fail "$label: purge does not say /var/lib/pobox was kept"
}

run_case systemd "$PATH"
run_case fallback "$nosystemd"

[ "$(host_state)" = "$host_before" ] || fail "the host's users, dpkg database, /var/lib/pobox or /etc/pobox changed"

if [ "$failed" != 0 ]; then
    echo "test-install FAILED" >&2
    exit 1
fi
echo "ok: installed, checked, removed and purged in throwaway roots (systemd tools and fallback); host untouched"
