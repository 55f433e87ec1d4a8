#!/bin/sh
# Builds the `suture` tool package that livepatch packages (`suture package`)
# depend on: the binary in /usr/bin and the boot units in /lib/systemd/system
# (where `suture install` finds and enables them instead of writing copies).
#
#   packaging/build-suture-deb.sh [BINARY] [OUTDIR] [VERSION]
#
# BINARY defaults to target/release/suture, OUTDIR to target/debian,
# VERSION to the workspace version.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$here/target/release/suture}
out=${2:-$here/target/debian}
version=${3:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -1)}
[ -x "$bin" ] || { echo "no executable at $bin: cargo build --release -p suture first" >&2; exit 1; }
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# Stripped: the line tables stay in the build tree's binary for backtraces;
# the installed one is about a sixth of the size and starts no slower.
install -D -s -m 0755 "$bin" "$stage/usr/bin/suture"
for u in suture.service suture-confirm.service suture-confirm.timer; do
    install -D -m 0644 "$here/systemd/$u" "$stage/lib/systemd/system/$u"
done
mkdir -p "$stage/DEBIAN" "$out"
cat > "$stage/DEBIAN/control" <<CTL
Package: suture
Version: $version
Architecture: $arch
Maintainer: suture <root@localhost>
Section: admin
Priority: optional
Depends: libc6, kmod
Description: live kernel patching for Debian kernels
 Applies livepatch modules built by suture to the running kernel, keeps
 installed patches across reboots (suture.service) and reports the patch
 level. Patches come as packages built with "suture package".
CTL
# Enable the units like dh_installsystemd would, without starting them:
# there is nothing to load until a patch package is installed.
cat > "$stage/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ] || [ -z "$1" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    systemctl enable suture.service suture-confirm.timer >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
cat > "$stage/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ]; then
    systemctl disable suture.service suture-confirm.timer >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm"
deb="$out/suture_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
