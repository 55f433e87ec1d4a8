#!/usr/bin/env bash
# The triage benchmark (issue 13): `suture triage` of a whole Debian update
# for one release, cold (an empty ccache, originals not cached for most
# units) and again warm (ccache and the cached originals), with wall time
# and peak memory from /usr/bin/time.
#
#   bash scripts/bench-triage.sh [DIR...]     (default: kernel mm fs net)
#
# SUTURE_BENCH_RELEASE (6.1.0-50-amd64) and SUTURE_BENCH_TO (6.1.187-1)
# choose the release and the update. The ccache used is a fresh one under
# $SUTURE_BENCH_DIR (default /var/cache/suture/bench-triage), removed first.
set -euo pipefail
cd "$(dirname "$0")/.."
release=${SUTURE_BENCH_RELEASE:-6.1.0-50-amd64}
to=${SUTURE_BENCH_TO:-6.1.187-1}
work=${SUTURE_BENCH_DIR:-/var/cache/suture/bench-triage}
dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || dirs=(kernel mm fs net)
command -v ccache >/dev/null || { echo "bench-triage: apt-get install ccache" >&2; exit 1; }
cargo build --release -q -p suture
rm -rf "$work"; mkdir -p "$work"
export CCACHE_DIR=$work/ccache
for run in cold warm; do
  echo "bench-triage: $run run: suture triage --to $to --kernel $release --only ${dirs[*]}" >&2
  /usr/bin/time -f "$run: %e s wall, %M kB peak" target/release/suture triage --to "$to" \
    --kernel "$release" --only "${dirs[@]}" -o "$work/$run" 2> "$work/$run.err" > "$work/$run.txt" || {
    tail -5 "$work/$run.err" >&2; exit 1; }
  tail -1 "$work/$run.err" >&2
  head -9 "$work/$run.txt" >&2
done
