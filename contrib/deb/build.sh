#!/bin/sh
# Builds the Debian package with cargo-deb (metadata: crates/pobox/Cargo.toml
# [package.metadata.deb]) and prints its path on the last line.
#
#   contrib/deb/build.sh                      release build: the package to ship
#   contrib/deb/build.sh --profile dev        from the debug binary (CI: no
#                                             second, optimised build)
#   contrib/deb/build.sh --no-build           package an already-built binary
#   contrib/deb/build.sh -- --fast            anything after -- goes to cargo deb
#
# Needs cargo-deb (cargo install cargo-deb --locked) and, for the package's
# Depends line, dpkg-shlibdeps (Debian's dpkg-dev).
#
# Before cargo deb runs, the binary itself writes the man pages and shell
# completions (so they describe exactly the options it has), and the user
# units get the packaged binary's path, all into contrib/deb/generated/
# (git-ignored; outside target/ because cargo-deb treats target/ paths
# other than target/release/ with suspicion).
set -eu
cd "$(dirname "$0")/../.."

profile=release
build=yes
while [ $# -gt 0 ]; do
    case "$1" in
    --profile) profile=$2; shift 2 ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    --no-build) build=no; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--profile PROFILE] [--no-build] [-- CARGO-DEB-OPTIONS]" >&2; exit 2 ;;
    esac
done

if ! cargo deb --version >/dev/null 2>&1; then
    echo "cargo-deb is not installed: cargo install cargo-deb --locked" >&2
    exit 1
fi

# Cargo calls the dev profile's directory "debug".
case "$profile" in
dev|debug) profile=dev; profile_dir=debug ;;
*) profile_dir=$profile ;;
esac
bin=${CARGO_TARGET_DIR:-target}/$profile_dir/pobox

if [ "$build" = yes ]; then
    cargo build --locked -p pobox --bin pobox --profile "$profile"
fi
[ -x "$bin" ] || { echo "no binary at $bin (build it, or drop --no-build)" >&2; exit 1; }

# The asset list in crates/pobox/Cargo.toml names these paths.
assets=contrib/deb/generated
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/systemd-user"
"$bin" man --dir "$assets/man"
[ -s "$assets/man/pobox.1" ] || { echo "pobox man wrote no pobox.1" >&2; exit 1; }
"$bin" completions bash > "$assets/completions/pobox.bash"
"$bin" completions zsh > "$assets/completions/_pobox"
"$bin" completions fish > "$assets/completions/pobox.fish"
# The user units in contrib/ name /usr/local/bin/pobox (cargo install);
# the package's binary is /usr/bin/pobox.
for unit in pobox-fetch.service pobox-fetch-oneshot.service pobox-fetch.timer; do
    sed 's#/usr/local/bin/pobox#/usr/bin/pobox#g' "contrib/systemd/$unit" > "$assets/systemd-user/$unit"
done
if grep -q /usr/local/bin "$assets"/systemd-user/*; then
    echo "a packaged user unit still names /usr/local/bin" >&2
    exit 1
fi

# --no-build: the binary above is the one packaged (cargo deb would
# otherwise rebuild it, possibly with other flags). cargo-deb warns that
# the dev profile is meant for tests only, which is what CI uses it for.
mkdir -p target/debian
cargo deb -p pobox --locked --no-build --profile "$profile" -o target/debian/ "$@"
