#!/usr/bin/env bash
# Installs everything suture, its demo and its tests need on Debian 12 (run as
# root): QEMU, Debian's current 6.1 kernel image with its headers and source,
# a static busybox for the test guests, and the kernel build dependencies.
# Idempotent. Prints the kernel release the demo and the tests use.
#
# --with-old: also install two older 6.1 releases side by side (their images
# and headers; suture fetches their own source package versions), for the
# tests that check each release is built from its own source and for the
# triage of a later update.
#
# --with-612: also install the newest release of Debian's 6.12 series
# (linux-image-6.12.N+deb12-amd64, an IBT/CALL_PADDING kernel) whose
# linux-source-6.12 version is in the archive, with its headers and that
# source, for the 6.12 tests. The flags combine; stdout stays the main release.
set -euo pipefail

OLD_RELEASE=6.1.0-47-amd64
# A second older release for `suture triage` (its source, 6.1.176-1, is
# older than an update the archive still has).
TRIAGE_RELEASE=6.1.0-50-amd64
with_old=false
with_612=false
for arg in "$@"; do
  case "$arg" in
    --with-old) with_old=true ;;
    --with-612) with_612=true ;;
    *) echo "setup.sh: unknown option $arg (known: --with-old, --with-612)" >&2; exit 1 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

packages=(
  qemu-system-x86 busybox-static
  linux-image-amd64 linux-headers-amd64 linux-source-6.1
  gcc gcc-12 make libc6-dev bc bison flex libelf-dev libssl-dev
  cpio xz-utils zstd kmod dwarves python3 ca-certificates openssl
  debootstrap python3-prometheus-client
  openssh-client python3-venv
  ccache iproute2 nftables
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
for r in "$OLD_RELEASE" "$TRIAGE_RELEASE"; do
  if $with_old && [ ! -e "/boot/vmlinuz-$r" ]; then
    missing+=("linux-image-$r" "linux-headers-$r")
  fi
done
if $with_612; then
  export LC_ALL=C
  candidates=$(apt-cache search --names-only '^linux-image-6\.12\..*\+deb12-amd64$' | awk '{print $1}')
  if [ -z "$candidates" ]; then
    apt-get update -qq >&2
    candidates=$(apt-cache search --names-only '^linux-image-6\.12\..*\+deb12-amd64$' | awk '{print $1}')
  fi
  # Versions of linux-source-6.12 the archive has: suture builds each release
  # from the source of its own version, so a release without one is useless.
  sources=$(apt-cache madison linux-source-6.12 | awk -F'|' '{gsub(/ /, "", $2); print $2}')
  release_612=""
  version_612=""
  for pkg in $(printf '%s\n' $candidates | sort -V -r); do
    v=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
    if [ -n "$v" ] && [ "$v" != "(none)" ] && grep -qxF "$v" <<< "$sources"; then
      release_612=${pkg#linux-image-}
      version_612=$v
      break
    fi
  done
  if [ -z "$release_612" ]; then
    echo "setup.sh: no linux-image-6.12.*+deb12-amd64 whose linux-source-6.12 version is in the archive (apt-cache madison linux-source-6.12)" >&2
    exit 1
  fi
  echo "setup.sh: 6.12 release $release_612 (source $version_612)" >&2
  if [ ! -e "/boot/vmlinuz-$release_612" ] || [ ! -e "/usr/src/linux-headers-$release_612/Module.symvers" ]; then
    missing+=("linux-image-$release_612" "linux-headers-$release_612")
  fi
  if [ "$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || true)" != "$version_612" ]; then
    missing+=("linux-source-6.12=$version_612")
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
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
# ansible-core (and ansible-lint) from PyPI for the fleet test
# (crates/suture/tests/vm_fleet.rs), in a venv: Debian 12's ansible is older.
venv=/var/cache/suture/venv
if ! "$venv/bin/ansible-playbook" --version >/dev/null 2>&1 || [ ! -x "$venv/bin/ansible-lint" ]; then
  echo "setup.sh: installing ansible-core and ansible-lint into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q 'ansible-core==2.19.*' 'ansible-lint==26.10.*' >&2
fi
echo "$release"
