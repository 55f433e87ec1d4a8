#!/usr/bin/env bash
# Runs `suture diff` on every pair of the conformance corpus and keeps, per pair,
# the klp object, the human report and the exit status in DIR, so that two
# builds of the differ can be compared byte for byte:
#   scripts/diff-outputs.sh /tmp/before; (change the differ); scripts/diff-outputs.sh /tmp/after
#   diff -r /tmp/before /tmp/after && echo identical
# BIN overrides the binary (default: the release build, built first).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/diff-outputs.sh DIR}
corpus=${CORPUS:-../shared/kpatch-unit-objs/x86_64}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p suture
  BIN=target/release/suture
fi
mkdir -p "$dir"
tail -n +2 "$corpus/EXPECTED.tsv" | while IFS=$'\t' read -r name _ _ jump _; do
  p=$corpus/$name.PATCHED.o
  [ -e "$p" ] || p=$corpus/$name.PATCHED.FAIL.o
  rm -f "$dir/$name.o"
  rc=0
  "$BIN" diff "$corpus/$name.ORIG.o" "$p" -o "$dir/$name.o" --entry-size "__jump_table=$jump" \
    --entry-size .parainstructions=16 --entry-size __ex_table=12 --entry-size __bug_table=12 \
    --entry-size .altinstructions=13 --entry-size .orc_unwind=6 --entry-size .static_call_sites=8 \
    --entry-size .printk_index=44 > "$dir/$name.out" 2>&1 || rc=$?
  # The output path appears in the report; keep it comparable across DIRs.
  sed -i "s|$dir/||g" "$dir/$name.out"
  echo "$rc" > "$dir/$name.rc"
done
echo "$(ls "$dir"/*.rc | wc -l) pairs, $(ls "$dir"/*.o 2>/dev/null | wc -l) objects written to $dir"
