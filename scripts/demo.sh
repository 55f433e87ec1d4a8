#!/usr/bin/env bash
# The demo: build a livepatch for Debian's current kernel from a source patch
# that changes what /proc/cmdline prints, boot that kernel in a VM, load the
# patch live with suture, show the change, unload it, show the original again.
set -euo pipefail
cd "$(dirname "$0")/.."

release=$(bash scripts/setup.sh)
echo "== building suture" >&2
cargo build --release -q -p suture -p suture-lab

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== suture build examples/cmdline.patch --kernel $release" >&2
echo "   (the first run prepares the kernel tree: about a minute; later runs reuse it)" >&2
target/release/suture build examples/cmdline.patch --kernel "$release" -o "$work/livepatch_cmdline.ko"

cat > "$work/guest.sh" <<'GUEST'
echo "== in the guest: uname -r: $(uname -r)"
echo "== cat /proc/cmdline"
cat /proc/cmdline
echo "== suture load livepatch_cmdline.ko"
suture load /root/livepatch_cmdline.ko || exit 1
echo "== cat /proc/cmdline (patched, no reboot)"
cat /proc/cmdline
echo "== suture list"
suture list
echo "== suture unload livepatch_cmdline"
suture unload livepatch_cmdline || exit 1
echo "== cat /proc/cmdline (original again)"
cat /proc/cmdline
GUEST

echo "== booting $release in QEMU (TCG) and running the patch live" >&2
target/release/suture-lab --kernel "$release" \
  --exec target/release/suture:/bin/suture \
  --file "$work/livepatch_cmdline.ko:/root/livepatch_cmdline.ko" \
  "$work/guest.sh"
