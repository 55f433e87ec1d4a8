#!/usr/bin/env bash
# Benchmark of `suture build` for the /proc/cmdline example, release binary,
# wall clock around the whole command:
# - one cold build (packages installed, an empty cache: extract, configure and
#   prepare the tree, extract vmlinux from the image) and three warm builds;
# - with a 6.12 release installed (setup.sh --with-612), the warm builds of each
#   release alone and of both in one run (`--kernel R1 --kernel R2`).
# Usage: bench-build.sh [RELEASE [RELEASE_612]]
set -euo pipefail
cd "$(dirname "$0")/.."
release=${1:-$(bash scripts/setup.sh)}
r612=${2:-$(ls /boot | sed -n 's/^vmlinuz-\(6\.12\..*+deb12-amd64\)$/\1/p' | sort -V | tail -n1)}
cargo build --release -q -p suture
cache=$(mktemp -d /var/tmp/suture-bench.XXXXXX)
out=$(mktemp -d)
trap 'rm -rf "$cache" "$out"' EXIT
run() { # label, then suture build arguments
  local label=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  SUTURE_CACHE=$cache target/release/suture build examples/cmdline.patch "$@" >/dev/null 2>"$out/log" || { cat "$out/log"; exit 1; }
  t1=$(date +%s.%N)
  printf '%-28s %6.1f s\n' "$label" "$(echo "$t1 - $t0" | bc)"
}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
run "cold $release" --kernel "$release" -o "$out/p.ko"
for i in 1 2 3; do run "warm $release" --kernel "$release" -o "$out/p.ko"; done
if [ -n "$r612" ]; then
  run "cold $r612" --kernel "$r612" -o "$out/q.ko"
  for i in 1 2; do
    run "warm $release" --kernel "$release" -o "$out/p.ko"
    run "warm $r612" --kernel "$r612" -o "$out/q.ko"
    run "warm both in one run" --kernel "$release" --kernel "$r612" -o "$out"
  done
fi
