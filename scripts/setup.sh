#!/usr/bin/env bash
# Installs everything suture, its demo and its tests need on Debian 12 (run as
# root): QEMU, Debian's current 6.1 kernel image with its headers and source,
# a static busybox for the test guests, and the kernel build dependencies.
# Idempotent. Prints the kernel release the demo and the tests use.
#
# --with-old: also install an older 6.1 release side by side (its image and
# headers; suture fetches its own source package version), for the tests that
# check each release is built from its own source.
set -euo pipefail

OLD_RELEASE=6.1.0-47-amd64
with_old=false
[ "${1:-}" = "--with-old" ] && with_old=true

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

packages=(
  qemu-system-x86 busybox-static
  linux-image-amd64 linux-headers-amd64 linux-source-6.1
  gcc gcc-12 make libc6-dev bc bison flex libelf-dev libssl-dev
  cpio xz-utils zstd kmod dwarves python3 ca-certificates
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if $with_old && [ ! -e "/boot/vmlinuz-$OLD_RELEASE" ]; then
  missing+=("linux-image-$OLD_RELEASE" "linux-headers-$OLD_RELEASE")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: cargo not found: install a Rust toolchain (1.80 or newer, e.g. with rustup) and run again" >&2
  exit 1
fi

# The release linux-image-amd64 points at, with its own headers installed.
release=$(dpkg-query -W -f='${Depends}' linux-image-amd64 | grep -o 'linux-image-[^ ,]*' | head -n1 | sed 's/^linux-image-//')
if [ -z "$release" ] || [ ! -e "/boot/vmlinuz-$release" ]; then
  echo "setup.sh: could not find the kernel linux-image-amd64 installs" >&2
  exit 1
fi
mkdir -p /var/cache/suture
echo "$release"
