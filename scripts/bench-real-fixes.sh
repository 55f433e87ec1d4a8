#!/usr/bin/env bash
# The real-fix benchmark (issue 12): every .c file a Debian stable update
# changed, as its own patch, built for an older release and loaded in it.
#
#   bash scripts/bench-real-fixes.sh [--sample N] [--minutes M] [--no-vm | --load-only] [--redo STATUS]... [--fresh]
#
# Downloads linux-source-6.1 FROM and TO (apt-get download), makes one diff
# per changed .c file under the directories below, builds each with
# `suture build --kernel RELEASE --json` (RELEASE's own source is FROM), then
# boots RELEASE under QEMU and, for every module built, loads it, checks the
# transition ended and unloads it, and looks for an oops or warning in the
# kernel log after each. Prints a table of outcomes by category and writes
# everything under $SUTURE_BENCH_DIR (default /var/cache/suture/bench).
# All of it takes hours (a few hundred builds): run it in the background.
# It resumes: results go to one run directory per (release, from, to), a
# file already measured is not built again and a module already loaded is
# not loaded again, so runs in several sittings add up to one table. Each
# row names the suture commit that built it. --minutes M stops starting new
# builds after M minutes (the modules built so far are still loaded);
# --load-only builds nothing and loads what is built but not loaded yet;
# --redo STATUS measures again the files that ended in STATUS (error,
# refused, ...: after a fix to suture), dropping their modules' load results;
# --fresh starts the run over. --sample N builds N patches spread evenly over
# the list instead, in a run directory of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

release=${SUTURE_BENCH_RELEASE:-6.1.0-50-amd64}
from=${SUTURE_BENCH_FROM:-6.1.176-1}
to=${SUTURE_BENCH_TO:-6.1.187-1}
dirs=(kernel mm fs net block crypto security ipc drivers/net drivers/block drivers/md)
work=${SUTURE_BENCH_DIR:-/var/cache/suture/bench}
sample=0
vm=1
build=1
minutes=0
fresh=0
redo=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sample) sample=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --no-vm) vm=0; shift ;;
    --load-only) build=0; shift ;;
    --fresh) fresh=1; shift ;;
    --redo) redo+=("$2"); shift 2 ;;
    *) echo "usage: $0 [--sample N] [--minutes M] [--no-vm | --load-only] [--redo STATUS]... [--fresh]" >&2; exit 2 ;;
  esac
done
case "$sample$minutes" in *[!0-9]*) echo "$0: --sample and --minutes take whole numbers" >&2; exit 2 ;; esac
started=$(date +%s)

say() { echo "bench: $*" >&2; }

# The release under test, as Debian ships it.
if ! dpkg-query -W -f='${Status}' "linux-headers-$release" 2>/dev/null | grep -q "ok installed"; then
  say "installing linux-image-$release and linux-headers-$release"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "linux-image-$release" "linux-headers-$release" >&2
fi
cargo build --release -q -p suture -p suture-lab
rev=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo +dirty)
suture=$PWD/target/release/suture
lab=$PWD/target/release/suture-lab

mkdir -p "$work"
# The two source trees: only the directories measured.
for v in "$from" "$to"; do
  if [ ! -f "$work/src-$v/.done" ]; then
    say "downloading and extracting linux-source-6.1 $v"
    rm -rf "$work/src-$v" "$work/deb-$v"
    mkdir -p "$work/deb-$v" "$work/src-$v"
    (cd "$work/deb-$v" && apt-get download -q "linux-source-6.1=$v" >&2)
    dpkg-deb --fsys-tarfile "$work/deb-$v"/linux-source-6.1_*.deb \
      | tar -xO --wildcards '*/linux-source-6.1.tar.xz' \
      | tar -xJ -C "$work/src-$v" --strip-components=1 $(printf 'linux-source-6.1/%s ' "${dirs[@]}")
    rm -rf "$work/deb-$v"
    touch "$work/src-$v/.done"
  fi
done

# One patch per changed .c file.
patches=$work/patches-$from-$to
if [ ! -f "$patches/.done" ]; then
  rm -rf "$patches"; mkdir -p "$patches"
  (cd "$work" && diff -rq "src-$from" "src-$to" || true) \
    | awk '/^Files .* differ$/ {print $2}' | sed "s#^src-$from/##" | grep '\.c$' | sort > "$patches/files"
  while read -r f; do
    p="$patches/$(echo "$f" | tr / _).patch"
    (cd "$work" && diff -u --label "a/$f" --label "b/$f" "src-$from/$f" "src-$to/$f" > "$p" || true)
  done < "$patches/files"
  touch "$patches/.done"
fi
mapfile -t files < "$patches/files"
say "${#files[@]} changed .c files between $from and $to"
if [ "$sample" -gt 0 ] && [ "$sample" -lt "${#files[@]}" ]; then
  picked=()
  for ((i = 0; i < sample; i++)); do picked+=("${files[$(( i * ${#files[@]} / sample ))]}"); done
  files=("${picked[@]}")
fi

if [ "$sample" -gt 0 ]; then out=$work/sample-$sample-$release-$from-$to; else out=$work/run-$release-$from-$to; fi
[ "$fresh" = 0 ] || rm -rf "$out"
mkdir -p "$out/ko" "$out/log"
results=$out/results.tsv
[ -f "$results" ] || printf 'file\texit\tstatus\tseconds\trev\tdetail\n' > "$results"
if [ ${#redo[@]} -gt 0 ]; then
  # Rows to measure again go, with their logs, modules and load results.
  python3 - "$results" "$out" "${redo[@]}" <<'PY'
import hashlib, os, sys
results, out, statuses = sys.argv[1], sys.argv[2], set(sys.argv[3:])
rows = open(results, encoding="utf-8", errors="surrogateescape").read().splitlines()
keep, gone = [rows[0]], []
for r in rows[1:]:
    f = r.split("\t")
    if f[2] in statuses:
        gone.append(f[0])
    else:
        keep.append(r)
def name(f):
    return "bench_" + "".join(c if c.isalnum() else "_" for c in f)[:30] + "_" + hashlib.md5(f.encode()).hexdigest()[:6]
names = {name(f) for f in gone}
for n in names:
    for p in (f"{out}/ko/{n}.ko", f"{out}/log/{n}.json", f"{out}/log/{n}.err"):
        if os.path.exists(p):
            os.remove(p)
vm = f"{out}/vm.tsv"
if os.path.exists(vm):
    v = open(vm, encoding="utf-8", errors="surrogateescape").read().splitlines()
    open(vm + ".new", "w", encoding="utf-8", errors="surrogateescape").write("\n".join([v[0]] + [l for l in v[1:] if l.split("\t")[0] not in names]) + "\n")
    os.replace(vm + ".new", vm)
open(results + ".new", "w", encoding="utf-8", errors="surrogateescape").write("\n".join(keep) + "\n")
os.replace(results + ".new", results)
print(f"bench: measuring {len(gone)} files again ({', '.join(sorted(statuses))})", file=sys.stderr)
PY
fi
declare -A done_files=()
while IFS=$'\t' LC_ALL=C read -r f _; do done_files[$f]=1; done < <(tail -n +2 "$results")
say "${#done_files[@]} of ${#files[@]} measured before; results in $out"
n=0
for f in "${files[@]}"; do
  [ "$build" = 1 ] || break
  n=$((n + 1))
  [ -z "${done_files[$f]:-}" ] || continue
  if [ "$minutes" -gt 0 ] && [ $(( $(date +%s) - started )) -ge $(( minutes * 60 )) ]; then
    say "--minutes $minutes reached: stopping before $f (run again to go on)"
    break
  fi
  # Unique and a valid module name: a shortened path and a hash of it.
  name=bench_$(echo "$f" | tr -c 'A-Za-z0-9\n' _ | cut -c1-30)_$(printf %s "$f" | md5sum | cut -c1-6)
  p="$patches/$(echo "$f" | tr / _).patch"
  t0=$(date +%s.%N)
  set +e
  "$suture" build "$p" --kernel "$release" --name "$name" --json -o "$out/ko/$name.ko" \
    > "$out/log/$name.json" 2> "$out/log/$name.err"
  rc=$?
  set -e
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
  status=$(python3 - "$out/log/$name.json" "$rc" <<'PY'
import json, sys
rc = int(sys.argv[2])
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    d = {}
if rc == 0:
    print("built")
elif "status" in d:
    s = d["status"]
    if s == "not_applicable":
        s += ":" + d.get("kind", "")
    print(s)
else:
    print("failed")
PY
)
  detail=$( (grep -v '^\[' "$out/log/$name.err" || true) | (grep -v '^nothing was written' || true) | head -n 2 | tr '\t\n' '  ' | cut -c1-300 | (iconv -f utf-8 -t utf-8 -c || true))
  printf '%s\t%s\t%s\t%.1f\t%s\t%s\n' "$f" "$rc" "$status" "$secs" "$rev" "$detail" >> "$results"
  say "[$n/${#files[@]}] $f: $status (${secs%.*} s)"
done

# Load, check and unload every module built and not loaded before, in boots
# of up to 40 modules (a guest that dies takes only its batch's rest along,
# and the results so far are kept).
vmres=$out/vm.tsv
[ -f "$vmres" ] || printf 'module\tresult\tcomplaints\trev\n' > "$vmres"
if [ "$vm" = 1 ]; then
  guest=$out/guest.sh
  {
    echo 'for ko in /root/ko/*.ko; do'
    echo '  n=$(basename $ko .ko); before=$(dmesg | wc -l)'
    echo '  echo "START $n"'
    echo '  if suture load --timeout 60 $ko > /tmp/out 2>&1; then'
    echo '    if suture unload --timeout 60 $n > /tmp/out2 2>&1; then r=live; else r=unload-failed; fi'
    echo '  else r=load-failed; fi'
    echo '  bad=$(dmesg | tail -n +$((before + 1)) | grep -cE "Oops|BUG:|WARNING:|general protection|Call Trace")'
    echo '  echo "RESULT $n $r $bad"'
    echo '  [ $r = live ] || head -n 3 /tmp/out /tmp/out2 2>/dev/null | sed "s/^/  /"'
    echo 'done'
  } > "$guest"
  boot=0
  while :; do
    declare -A tested=()
    while IFS=$'\t' LC_ALL=C read -r m _; do tested[$m]=1; done < <(tail -n +2 "$vmres")
    todo=()
    for ko in "$out/ko"/*.ko; do
      [ -e "$ko" ] || continue
      m=$(basename "$ko" .ko)
      [ -n "${tested[$m]:-}" ] || todo+=("$ko")
    done
    [ ${#todo[@]} -gt 0 ] || break
    batch=("${todo[@]:0:40}")
    boot=$((boot + 1))
    args=(--kernel "$release" --timeout 3600 --exec "$suture:/bin/suture")
    for ko in "${batch[@]}"; do args+=(--file "$ko:/root/ko/$(basename "$ko")"); done
    say "boot $boot: loading ${#batch[@]} of ${#todo[@]} modules not loaded yet in $release"
    "$lab" "${args[@]}" "$guest" > "$out/vm-$boot.txt" 2> "$out/vm-$boot.err" || true
    got=0
    while read -r _ m r bad; do
      printf '%s\t%s\t%s\t%s\n' "$m" "$r" "$bad" "$rev" >> "$vmres"; got=$((got + 1))
    done < <(grep '^RESULT ' "$out/vm-$boot.txt" || true)
    if [ "$got" -lt ${#batch[@]} ]; then
      # The module that was loading when the guest stopped is charged with it.
      last=$(grep '^START ' "$out/vm-$boot.txt" | tail -1 | cut -d' ' -f2 || true)
      if [ -n "$last" ] && ! grep -q "^RESULT $last " "$out/vm-$boot.txt"; then
        printf '%s\t%s\t%s\t%s\n' "$last" guest-died 1 "$rev" >> "$vmres"
      elif [ "$got" = 0 ]; then
        say "boot $boot gave no result at all: see $out/vm-$boot.err"; break
      fi
    fi
  done
fi

# The table.
python3 - "$results" "$vmres" "${#files[@]}" <<'PY'
import collections, hashlib, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1], encoding="utf-8", errors="replace")][1:]
vm = {}
for l in list(open(sys.argv[2]))[1:]:
    n, r, bad, _ = l.rstrip("\n").split("\t")
    vm[n] = (r, int(bad))
cat = collections.Counter()
for f, rc, status, secs, rev, detail in rows:
    if status == "built":
        name = "bench_" + "".join(c if c.isalnum() else "_" for c in f)[:30] + "_" + hashlib.md5(f.encode()).hexdigest()[:6]
        r = vm.get(name)
        if r is None:
            status = "built (not loaded)"
        elif r[0] == "live" and r[1] == 0:
            status = "built and live"
        else:
            status = f"built, {r[0]}" + (f", {r[1]} kernel log complaints" if r[1] else "")
    cat[status] += 1
total = len(rows)
print(f"{total} of {sys.argv[3]} patches measured")
for k, v in cat.most_common():
    print(f"  {v:4d}  {k}")
secs = sorted(float(r[3]) for r in rows if r[2] == "built")
if secs:
    print(f"build time of built patches: median {secs[len(secs)//2]:.1f} s, max {secs[-1]:.1f} s")
PY
say "results in $out"
