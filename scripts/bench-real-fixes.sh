#!/usr/bin/env bash
# The real-fix benchmark (issue 12): every .c file a Debian stable update
# changed, as its own patch, built for an older release and loaded in it.
#
#   bash scripts/bench-real-fixes.sh [--sample N] [--no-vm]
#
# Downloads linux-source-6.1 FROM and TO (apt-get download), makes one diff
# per changed .c file under the directories below, builds each with
# `suture build --kernel RELEASE --json` (RELEASE's own source is FROM), then
# boots RELEASE under QEMU and, for every module built, loads it, checks the
# transition ended and unloads it, and looks for an oops or warning in the
# kernel log after each. Prints a table of outcomes by category and writes
# everything under $SUTURE_BENCH_DIR (default /var/cache/suture/bench).
# All of it takes hours (a few hundred builds): run it in the background.
# --sample N builds N patches spread evenly over the list instead.
set -euo pipefail
cd "$(dirname "$0")/.."

release=${SUTURE_BENCH_RELEASE:-6.1.0-50-amd64}
from=${SUTURE_BENCH_FROM:-6.1.176-1}
to=${SUTURE_BENCH_TO:-6.1.187-1}
dirs=(kernel mm fs net block crypto security ipc drivers/net drivers/block drivers/md)
work=${SUTURE_BENCH_DIR:-/var/cache/suture/bench}
sample=0
vm=1
while [ $# -gt 0 ]; do
  case "$1" in
    --sample) sample=$2; shift 2 ;;
    --no-vm) vm=0; shift ;;
    *) echo "usage: $0 [--sample N] [--no-vm]" >&2; exit 2 ;;
  esac
done

say() { echo "bench: $*" >&2; }

# The release under test, as Debian ships it.
if ! dpkg-query -W -f='${Status}' "linux-headers-$release" 2>/dev/null | grep -q "ok installed"; then
  say "installing linux-image-$release and linux-headers-$release"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "linux-image-$release" "linux-headers-$release" >&2
fi
cargo build --release -q -p suture -p suture-lab
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

out=$work/run-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out/ko" "$out/log"
results=$out/results.tsv
printf 'file\texit\tstatus\tseconds\tdetail\n' > "$results"
n=0
for f in "${files[@]}"; do
  n=$((n + 1))
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
  detail=$( (grep -v '^\[' "$out/log/$name.err" || true) | (grep -v '^nothing was written' || true) | head -n 2 | tr '\t\n' '  ' | cut -c1-300)
  printf '%s\t%s\t%s\t%.1f\t%s\n' "$f" "$rc" "$status" "$secs" "$detail" >> "$results"
  say "[$n/${#files[@]}] $f: $status (${secs%.*} s)"
done

# Load, check and unload every module built, in one boot.
if [ "$vm" = 1 ] && ls "$out/ko"/*.ko > /dev/null 2>&1; then
  guest=$out/guest.sh
  {
    echo 'for ko in /root/ko/*.ko; do'
    echo '  n=$(basename $ko .ko); before=$(dmesg | wc -l)'
    echo '  if suture load --timeout 60 $ko > /tmp/out 2>&1; then'
    echo '    if suture unload --timeout 60 $n > /tmp/out2 2>&1; then r=live; else r=unload-failed; fi'
    echo '  else r=load-failed; fi'
    echo '  bad=$(dmesg | tail -n +$((before + 1)) | grep -cE "Oops|BUG:|WARNING:|general protection|Call Trace")'
    echo '  echo "RESULT $n $r $bad"'
    echo '  [ $r = live ] || head -n 3 /tmp/out | sed "s/^/  /"'
    echo 'done'
  } > "$guest"
  args=(--kernel "$release" --timeout 3600 --exec "$suture:/bin/suture")
  for ko in "$out/ko"/*.ko; do args+=(--file "$ko:/root/ko/$(basename "$ko")"); done
  say "booting $release and loading $(ls "$out/ko"/*.ko | wc -l) modules"
  "$lab" "${args[@]}" "$guest" > "$out/vm.txt" 2> "$out/vm.err" || true
fi

# The table.
python3 - "$results" "$out/vm.txt" <<'PY'
import collections, hashlib, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
vm = {}
try:
    for l in open(sys.argv[2]):
        if l.startswith("RESULT "):
            _, n, r, bad = l.split()
            vm[n] = (r, int(bad))
except FileNotFoundError:
    pass
cat = collections.Counter()
for f, rc, status, secs, detail in rows:
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
print(f"{total} patches")
for k, v in cat.most_common():
    print(f"  {v:4d}  {k}")
secs = sorted(float(r[3]) for r in rows if r[2] == "built")
if secs:
    print(f"build time of built patches: median {secs[len(secs)//2]:.1f} s, max {secs[-1]:.1f} s")
PY
say "results in $out"
