#!/bin/sh
# Prints `dpkg-deb --info` and `--contents` of a pobox package and fails if
# anything the package promises is missing or wrong: the files at their
# Debian paths, the conffiles, the maintainer scripts, the Depends line,
# the user units' binary path, the jail kept out of /etc.
#
#   contrib/deb/check-package.sh target/debian/pobox_*.deb
set -eu
deb=${1:?usage: $0 PACKAGE.deb}
[ -f "$deb" ] || { echo "no such package: $deb" >&2; exit 1; }

echo "-- dpkg-deb --info $deb"
dpkg-deb --info "$deb"
echo "-- dpkg-deb --contents $deb"
contents=$(dpkg-deb --contents "$deb")
echo "$contents"

failed=0
fail() {
    echo "MISSING/WRONG: $*" >&2
    failed=1
}

# "MODE PATH": dpkg-deb lists ./path with its mode string first.
while read -r mode path; do
    echo "$contents" | awk -v m="$mode" -v p="./$path" '$1 == m && $NF == p { found = 1 } END { exit !found }' ||
        fail "$path ($mode)"
done <<'LIST'
-rwxr-xr-x usr/bin/pobox
-rw-r--r-- lib/systemd/system/pobox.service
-rw-r--r-- lib/systemd/system/pobox.socket
-rw-r--r-- usr/lib/systemd/user/pobox-fetch.service
-rw-r--r-- usr/lib/systemd/user/pobox-fetch-oneshot.service
-rw-r--r-- usr/lib/systemd/user/pobox-fetch.timer
-rw-r--r-- usr/lib/sysusers.d/pobox.conf
-rw-r--r-- usr/lib/tmpfiles.d/pobox.conf
-rw-r--r-- usr/share/man/man1/pobox.1.gz
-rw-r--r-- usr/share/man/man1/pobox-serve.1.gz
-rw-r--r-- usr/share/bash-completion/completions/pobox
-rw-r--r-- usr/share/zsh/vendor-completions/_pobox
-rw-r--r-- usr/share/fish/vendor_completions.d/pobox.fish
-rw-r--r-- etc/pobox/pobox.toml
-rw-r--r-- etc/fail2ban/filter.d/pobox.conf
-rw-r--r-- usr/share/doc/pobox/examples/fail2ban/jail.d/pobox.conf
-rw-r--r-- usr/share/doc/pobox/copyright
-rw-r--r-- usr/share/doc/pobox/LICENSE-MIT
-rw-r--r-- usr/share/doc/pobox/LICENSE-APACHE
-rw-r--r-- usr/share/doc/pobox/changelog.Debian.gz
LIST

# Nothing root-owned by accident, nothing in places Debian reserves.
echo "$contents" | awk '$2 != "0/0" { bad = 1; print "not root-owned: " $NF > "/dev/stderr" } END { exit bad }' ||
    fail "file ownership"
echo "$contents" | grep -E ' \./(usr/local|etc/fail2ban/jail\.d|etc/systemd|var/lib/pobox)/' >&2 &&
    fail "files in usr/local, an enabled jail, unit links or package-owned data"
# An uncompressed man page would mean cargo-deb's compression was bypassed.
echo "$contents" | grep -E ' \./usr/share/man/.*\.[0-9]$' >&2 && fail "uncompressed man page"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb --control "$deb" "$tmp/control"
dpkg-deb --extract "$deb" "$tmp/root"

# Both /etc files must be conffiles, or an upgrade overwrites the admin's edits.
for f in /etc/pobox/pobox.toml /etc/fail2ban/filter.d/pobox.conf; do
    grep -qx "$f" "$tmp/control/conffiles" || fail "conffile $f"
done
for s in postinst prerm postrm; do
    [ -x "$tmp/control/$s" ] || fail "maintainer script $s"
    sh -n "$tmp/control/$s" || fail "maintainer script $s does not parse"
done
grep -q 'DPKG_ROOT' "$tmp/control/postinst" || fail "postinst ignores DPKG_ROOT"
grep -Eq '^Depends: .*libc6' "$tmp/control/control" || fail "Depends: libc6 (dpkg-shlibdeps)"
# cargo-deb wraps a crate description longer than 79 columns into the
# extended text: the synopsis must be the whole description, unbroken.
desc=$(sed -n 's/^Description: //p' "$tmp/control/control")
want=$(sed -n 's/^description = "\(.*\)"$/\1/p' "$(dirname "$0")/../../crates/pobox/Cargo.toml")
[ -n "$want" ] && [ "$desc" = "$want" ] || fail "Description synopsis '$desc' is not the crate description, unwrapped"

# The changelog's top entry names the version being packaged.
version=$(sed -n 's/^Version: //p' "$tmp/control/control")
gzip -dc "$tmp/root/usr/share/doc/pobox/changelog.Debian.gz" | head -n 1 | grep -q "^pobox ($version) " ||
    fail "contrib/deb/changelog's top entry is not pobox ($version)"

# Packaged units name the packaged binary.
for u in "$tmp"/root/lib/systemd/system/pobox.service "$tmp"/root/usr/lib/systemd/user/*; do
    if grep -E '^Exec[A-Za-z]*=' "$u" | grep -v -e '/usr/bin/pobox' -e '/bin/kill' >&2; then
        fail "$(basename "$u") runs something other than /usr/bin/pobox"
    fi
done
# The shipped config and the man page are the ones in the tree/binary.
cmp -s "$tmp/root/etc/pobox/pobox.toml" "$(dirname "$0")/../pobox.toml" || fail "etc/pobox/pobox.toml differs from contrib/pobox.toml"
gzip -dc "$tmp/root/usr/share/man/man1/pobox.1.gz" | grep -q '^\.TH pobox 1' || fail "pobox.1.gz is not a pobox(1) man page"
grep -q 'complete -F' "$tmp/root/usr/share/bash-completion/completions/pobox" || fail "bash completion content"
head -n 1 "$tmp/root/usr/share/zsh/vendor-completions/_pobox" | grep -q '^#compdef pobox' || fail "zsh completion content"
grep -q '^complete -c pobox' "$tmp/root/usr/share/fish/vendor_completions.d/pobox.fish" || fail "fish completion content"

if [ "$failed" != 0 ]; then
    echo "package check FAILED: $deb" >&2
    exit 1
fi
echo "ok: $deb has every expected file, conffile and maintainer script"
