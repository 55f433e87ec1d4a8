#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then runs every
# crate's tests, among them the differ's conformance corpus (read from
# ../shared/kpatch-unit-objs) and the VM tests on Debian's kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

SUTURE_TEST_RELEASE=$(bash scripts/setup.sh --with-old --with-612)
export SUTURE_TEST_RELEASE
# The older release installed side by side (see setup.sh).
SUTURE_TEST_RELEASE_OLD=6.1.0-47-amd64
export SUTURE_TEST_RELEASE_OLD
# The second older release, for the triage of a later Debian update.
SUTURE_TEST_RELEASE_TRIAGE=6.1.0-50-amd64
export SUTURE_TEST_RELEASE_TRIAGE
# The 6.12 release setup.sh installed: the newest one with its headers installed.
SUTURE_TEST_RELEASE_612=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 'linux-headers-6.12.*+deb12-amd64' 2>/dev/null \
  | awk '$1 == "ii" {sub(/^linux-headers-/, "", $2); print $2}' | sort -V | tail -n1)
if [ -z "$SUTURE_TEST_RELEASE_612" ]; then
  echo "test.sh: setup.sh --with-612 left no 6.12 release installed" >&2
  exit 1
fi
export SUTURE_TEST_RELEASE_612
echo "test.sh: kernel releases under test: $SUTURE_TEST_RELEASE, $SUTURE_TEST_RELEASE_OLD, $SUTURE_TEST_RELEASE_TRIAGE, $SUTURE_TEST_RELEASE_612" >&2

corpus=../shared/kpatch-unit-objs/x86_64
if [ ! -f "$corpus/EXPECTED.tsv" ]; then
  echo "test.sh: the differ's conformance corpus is missing: expected $(realpath -m "$corpus")" >&2
  exit 1
fi

# Lints first: they take a minute and say what to fix.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >&2
  else
    echo "test.sh: cargo fmt and cargo clippy are needed (rustup component add rustfmt clippy)" >&2
    exit 1
  fi
fi
cargo fmt --all --check || { echo "test.sh: run cargo fmt --all" >&2; exit 1; }
(cd fuzz && cargo fmt --check) || { echo "test.sh: run (cd fuzz && cargo fmt)" >&2; exit 1; }
cargo clippy --workspace --all-targets -- -D warnings
if ! command -v cargo-machete >/dev/null 2>&1; then
  cargo install --locked cargo-machete >&2
fi
cargo machete
(cd fuzz && cargo machete)

cargo build --workspace --all-targets
# Every failing test is reported, not only the first binary's.
cargo test --workspace --no-fail-fast -- --test-threads=2
