#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then runs every
# crate's tests, among them the differ's conformance corpus (read from
# ../shared/kpatch-unit-objs) and the VM tests on Debian's kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

SUTURE_TEST_RELEASE=$(bash scripts/setup.sh)
export SUTURE_TEST_RELEASE
echo "test.sh: kernel release under test: $SUTURE_TEST_RELEASE" >&2

corpus=../shared/kpatch-unit-objs/x86_64
if [ ! -f "$corpus/EXPECTED.tsv" ]; then
  echo "test.sh: the differ's conformance corpus is missing: expected $(realpath -m "$corpus")" >&2
  exit 1
fi

cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
