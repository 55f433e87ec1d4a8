#!/usr/bin/env bash
# Benchmark of `suture build` for the /proc/cmdline example: one cold build
# (packages installed, an empty cache: extract, configure and prepare the tree,
# extract vmlinux from the image) and three warm builds (tree prepared).
# Prints wall-clock seconds of each run, measured around the whole command.
set -euo pipefail
cd "$(dirname "$0")/.."
release=${1:-$(bash scripts/setup.sh)}
cargo build --release -q -p suture
cache=$(mktemp -d /var/tmp/suture-bench.XXXXXX)
out=$(mktemp -d)
trap 'rm -rf "$cache" "$out"' EXIT
run() {
  local t0 t1
  t0=$(date +%s.%N)
  SUTURE_CACHE=$cache target/release/suture build examples/cmdline.patch --kernel "$release" -o "$out/p.ko" >/dev/null 2>"$out/log" || { cat "$out/log"; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; release $release"
echo "cold: $(run) s"
for i in 1 2 3; do echo "warm: $(run) s"; done
