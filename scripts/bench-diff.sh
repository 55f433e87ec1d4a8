#!/usr/bin/env bash
# Benchmark of `suture diff` on the conformance corpus, run as a user runs it:
# one process per pair (release binary, entry sizes from EXPECTED.tsv, output to
# a scratch file). Prints the total wall clock of the 55 processes (best of
# ROUNDS rounds), the largest pair's time (best of 20), and the largest pair's
# peak RSS next to the size of its two inputs (GNU time's "Maximum resident set size").
# The machine is shared: wall clock moves with other work, so it also prints
# the load average and CPU time (user+system) and minor page faults of the
# whole corpus, which move much less.
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${CORPUS:-../shared/kpatch-unit-objs/x86_64}
rounds=${ROUNDS:-5}
cargo build --release -q -p suture
bin=target/release/suture
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# One command line per case, built once so the loop measures only the processes.
cmds=$out/cmds
tail -n +2 "$corpus/EXPECTED.tsv" | while IFS=$'\t' read -r name _ _ jump _; do
  p=$corpus/$name.PATCHED.o
  [ -e "$p" ] || p=$corpus/$name.PATCHED.FAIL.o
  echo "$corpus/$name.ORIG.o $p -o $out/$name.o --entry-size __jump_table=$jump --entry-size .parainstructions=16 --entry-size __ex_table=12 --entry-size __bug_table=12 --entry-size .altinstructions=13 --entry-size .orc_unwind=6 --entry-size .static_call_sites=8 --entry-size .printk_index=44"
done > "$cmds"
n=$(wc -l < "$cmds")
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

now() { date +%s%N; }
best=
for r in $(seq "$rounds"); do
  t0=$(now)
  while read -r args; do
    # shellcheck disable=SC2086
    "$bin" diff $args >/dev/null 2>&1 || true   # exit 2/3 are verdicts, not failures
  done < "$cmds"
  t=$(( ($(now) - t0) / 1000 ))
  [ -z "$best" ] || [ "$t" -lt "$best" ] && best=$t
done
# The floor on this machine: the same loop starting /bin/true.
t0=$(now); while read -r args; do /bin/true $args; done < "$cmds"; floor=$(( ($(now) - t0) / 1000 ))
echo "floor: $n x /bin/true in the same loop: $(echo "scale=3; $floor/1000000" | bc) s"
# The binary's own start-up (dynamic loading, argument parsing), best of ROUNDS.
sbest=
for r in $(seq "$rounds"); do
  t0=$(now); while read -r args; do "$bin" --version >/dev/null; done < "$cmds"; t=$(( ($(now) - t0) / 1000 ))
  [ -z "$sbest" ] || [ "$t" -lt "$sbest" ] && sbest=$t
done
echo "start-up: $n x suture --version: $(echo "scale=3; $sbest/1000000" | bc) s"
echo "corpus: $n pairs, one process each: best of $rounds rounds: $(echo "scale=3; $best/1000000" | bc) s"
# The same processes two at a time (the machine's 2 cores), best of ROUNDS.
pbest=
for r in $(seq "$rounds"); do
  t0=$(now)
  # Each line names its own output, so xargs starts suture directly.
  xargs -P2 -L1 "$bin" diff < "$cmds" >/dev/null 2>&1 || true
  t=$(( ($(now) - t0) / 1000 ))
  [ -z "$pbest" ] || [ "$t" -lt "$pbest" ] && pbest=$t
done
echo "corpus: $n pairs, one process each, 2 at a time: best of $rounds rounds: $(echo "scale=3; $pbest/1000000" | bc) s"
# CPU time (user + system) and minor page faults of the 55 processes, best of
# ROUNDS (xargs itself is a few milliseconds of it).
cbest=
for r in $(seq "$rounds"); do
  /usr/bin/time -o "$out/cpu" -f "%U %S %R" xargs -P1 -L1 "$bin" diff < "$cmds" >/dev/null 2>&1 || true
  read -r u s f < <(tail -1 "$out/cpu")
  c=$(echo "$u + $s" | bc)
  if [ -z "$cbest" ] || [ "$(echo "$c < $cbest" | bc)" = 1 ]; then cbest=$c; fbest=$f; fi
done
echo "corpus CPU time (user+system) of the $n processes: best of $rounds: $cbest s; $fbest minor page faults"

big=unique-id-pr-1314
args=$(grep "/$big.ORIG.o" "$cmds")
bestb=
for r in $(seq 20); do
  t0=$(now)
  # shellcheck disable=SC2086
  "$bin" diff $args >/dev/null 2>&1 || true
  t=$(( ($(now) - t0) / 1000 ))
  [ -z "$bestb" ] || [ "$t" -lt "$bestb" ] && bestb=$t
done
echo "largest pair ($big): best of 20: $(echo "scale=1; $bestb/1000" | bc) ms"
# Peak RSS moves by a page or two from run to run: the worst of 10 counts.
# `suture diff` execs `suture-diff`; GNU time reports the larger of the two.
rss=0
for r in $(seq 10); do
  # shellcheck disable=SC2086
  /usr/bin/time -o "$out/time" -f %M "$bin" diff $args >/dev/null 2>&1 || true
  m=$(tail -1 "$out/time")
  [ "$m" -gt "$rss" ] && rss=$m
done
set -- $args
inputs=$(( ($(stat -c %s "$1") + $(stat -c %s "$2")) / 1024 ))
echo "largest pair: peak RSS (worst of 10) ${rss} KiB; inputs ${inputs} KiB; ratio $(echo "scale=2; $rss/$inputs" | bc)"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
