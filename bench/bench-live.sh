#!/usr/bin/env bash
# rawtrack - benchmark: live backups of a served disk (issue #15).
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Usage: bench/bench-live.sh [RAWTRACK]
#
# Environment (all optional):
#   SIZE_MIB=1024   the disk (a raw file full of random data)
#   RUNTIME=4       seconds of each fio run
#   REPEAT=3        rounds, interleaved; the median of each figure is reported
#   TMPDIR          work directory parent (default /tmp)
#
# In one run, rounds interleaved (a round measures everything once):
#   guest writes through `rawtrack serve` (fio, nbd engine): randwrite 4k
#     qd16 and write 1M qd8, with no backup running vs during a live full
#     backup (`backup create --full` through the server's control socket,
#     started just before fio; its view saves every overwritten chunk):
#     throughput ratio (target >= 0.7) and p99 latency ratio (<= 2);
#   the live full backup (nothing writing) vs the offline one of the same
#     image (server stopped, `backup create --full --offline`): speed ratio
#     (target >= 0.8).
# The fleecing store is a file beside the image (the default), limit 100%.
# The machine's load average is printed before and after: the numbers are
# only comparable within one run.
set -euo pipefail

RAWTRACK="${1:-${RAWTRACK:-$(cd "$(dirname "$0")/.." && pwd)/build/cli/rawtrack}}"
SIZE_MIB="${SIZE_MIB:-1024}"
RUNTIME="${RUNTIME:-4}"
REPEAT="${REPEAT:-3}"
PY=/usr/bin/python3

for t in fio nbdinfo; do
  command -v "$t" >/dev/null || { echo "bench-live: $t is missing" >&2; exit 77; }
done
case "$("$RAWTRACK" serve --help)" in *--control*) ;; *)
  echo "bench-live: rawtrack serve has no --control" >&2; exit 77 ;; esac

work="$(mktemp -d "${TMPDIR:-/tmp}/bench-live.XXXXXX")"
srv=""
cleanup ()
{
  [ -n "$srv" ] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
export RAWTRACK_NO_PROGRESS=1
mkdir -m 700 run
export XDG_RUNTIME_DIR=$work/run
sock=$work/nbd.sock
ctl=$work/ctl.sock
uri="nbd+unix:///?socket=$sock"

start_server ()
{
  "$RAWTRACK" serve disk.qcow2 --socket "$sock" --control "$ctl" \
    --fleece-limit 100% 2>>serve.log &
  srv=$!
  for _ in $(seq 1 300); do
    [ -S "$ctl" ] && nbdinfo --size "$uri" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench-live: the server did not start" >&2
  exit 1
}
stop_server ()
{
  kill "$srv"
  wait "$srv" || true
  srv=""
}

echo "bench-live: ${SIZE_MIB} MiB disk, fio ${RUNTIME} s per run, $REPEAT rounds"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
head -c $((SIZE_MIB << 20)) /dev/urandom > disk.raw
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null
cat disk.raw > /dev/null                   # warm for everyone

# fio_run NAME RW BS QD: a fio run on the served disk; prints
# "bytes_per_s p99_us".
fio_run ()
{
  fio --name="$1" --ioengine=nbd --uri="$uri" --rw="$2" --bs="$3" \
    --iodepth="$4" --numjobs=1 --size=$((SIZE_MIB << 20)) --time_based \
    --runtime="$RUNTIME" --randrepeat=0 --output-format=json \
    --output="$1.json" >/dev/null
  $PY - "$1.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["write"]
p = j["clat_ns"]["percentile"]
p99 = next(v for k, v in p.items() if k.startswith("99.000"))
print(j["bw_bytes"], p99 / 1000)
EOF
}

# backup_secs ARGS...: a full backup into a repository of its own (pruned
# to the one backup each time, so the image keeps one checkpoint); prints
# its seconds and mode.
backup_secs ()
{
  "$RAWTRACK" backup create disk.qcow2 repo --full --json "$@" > b.json 2>/dev/null
  "$RAWTRACK" backup prune repo --keep 1 >/dev/null 2>&1
  $PY -c 'import json; j = json.load(open("b.json")); print(j["seconds"], j["mode"], j.get("cbw-bytes", 0))'
}

# during NAME RW BS QD: fio while a live full backup runs; prints
# "bytes_per_s p99_us backup_secs cbw_bytes".
during ()
{
  "$RAWTRACK" backup create disk.qcow2 repo --full --json > d.json 2>/dev/null &
  local bk=$! r
  r=$(fio_run "$@")
  wait "$bk"
  "$RAWTRACK" backup prune repo --keep 1 >/dev/null 2>&1
  echo "$r $($PY -c 'import json; j = json.load(open("d.json")); print(j["seconds"], j["cbw-bytes"])')"
}

: > results.txt
start_server
backup_secs >/dev/null                     # the first checkpoint
for (( i = 1; i <= REPEAT; i++ )); do
  echo "round $i: load $(cut -d' ' -f1 /proc/loadavg)" >&2
  echo "rand_idle $(fio_run rand-idle randwrite 4k 16)" >> results.txt
  echo "rand_busy $(during rand-busy randwrite 4k 16)" >> results.txt
  echo "seq_idle $(fio_run seq-idle write 1M 8)" >> results.txt
  echo "seq_busy $(during seq-busy write 1M 8)" >> results.txt
  echo "live $(backup_secs)" >> results.txt
  stop_server
  echo "offline $(backup_secs --offline)" >> results.txt
  start_server
done
stop_server
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

$PY - results.txt "$SIZE_MIB" "$RUNTIME" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append(f[1:])
size = int(sys.argv[2]) << 20
runtime = float(sys.argv[3])
med = lambda k, i: statistics.median(float(r[i]) for r in rows[k])
MB = 1 << 20
print()
print("| guest writes (fio via serve) | no backup | during a live full backup | ratio | target |")
print("|---|---|---|---|---|")
for name, label in (("rand", "randwrite 4k qd16"), ("seq", "write 1M qd8")):
    bi, bb = med(name + "_idle", 0), med(name + "_busy", 0)
    li, lb = med(name + "_idle", 1), med(name + "_busy", 1)
    print(f"| {label}: throughput | {bi / MB:.1f} MiB/s | {bb / MB:.1f} MiB/s "
          f"| {bb / bi:.2f}x | >= 0.7x |")
    print(f"| {label}: p99 latency | {li / 1000:.2f} ms | {lb / 1000:.2f} ms "
          f"| {lb / li:.2f}x | <= 2x |")
    secs = med(name + "_busy", 2)
    cbw = med(name + "_busy", 3)
    print(f"| {label}: the backup meanwhile | | {secs:.1f} s, "
          f"{cbw / MB:.0f} MiB saved by CBW | | |"
          + (" (the backup ended before fio: part of the run had no backup)"
             if secs < runtime else ""))
lv, of = med("live", 0), med("offline", 0)
print(f"| full backup, nothing writing | offline {size / of / MB:.0f} MiB/s "
      f"({of:.2f} s) | live {size / lv / MB:.0f} MiB/s ({lv:.2f} s) "
      f"| {of / lv:.2f}x | >= 0.8x |")
print()
print("medians of", len(rows["live"]), "interleaved rounds; raw rows:",
      sys.argv[1])
for k, v in rows.items():
    print(k, v)
EOF
