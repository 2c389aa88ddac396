#!/usr/bin/env bash
# rawtrack - benchmark: `rawtrack serve` against qemu-nbd and nbdkit.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Usage: bench/bench-nbd.sh [RAWTRACK]
#   RAWTRACK   the rawtrack binary ($1, else $RAWTRACK, else build/cli/rawtrack)
#
# Environment (all optional):
#   SIZE=1G        the disk (a raw file filled with random data)
#   RUNTIME=10     seconds per fio job (plus RAMP=2 seconds of ramp)
#   REPEAT=3       rounds over all servers; the median is reported
#   TRACK=safe     rawtrack's tracking mode (safe, process, lazy)
#   TMPDIR         work directory parent (default /tmp)
#
# The same raw file is attached once (rawtrack attach, 64 KiB clusters,
# one enabled bitmap "b") and served, one server at a time, by
#   rawtrack   rawtrack serve IMG --socket S      (writes tracked in "b")
#   qemu-nbd   qemu-nbd -f qcow2 -t -k S IMG      (qemu tracks "b" too)
#   nbdkit     nbdkit -U S file RAW               (the raw file, no tracking)
# Each gets the same four fio jobs with the nbd engine, one connection:
#   randwrite 4k qd16, randread 4k qd16, write 1M qd8, read 1M qd8.
# Writes run before reads, so reads hit written data.  The table gives
# IOPS and MiB/s per server and the ratios rawtrack/nbdkit and
# rawtrack/qemu-nbd (higher is better for rawtrack).
set -euo pipefail

RAWTRACK="${1:-${RAWTRACK:-$(cd "$(dirname "$0")/.." && pwd)/build/cli/rawtrack}}"
SIZE="${SIZE:-1G}"
RUNTIME="${RUNTIME:-10}"
RAMP="${RAMP:-2}"
REPEAT="${REPEAT:-3}"
TRACK="${TRACK:-safe}"

for t in fio qemu-img qemu-nbd nbdkit python3; do
  command -v "$t" >/dev/null || { echo "bench-nbd: $t is missing" >&2; exit 77; }
done
fio --enghelp=nbd >/dev/null 2>&1 ||
  { echo "bench-nbd: fio has no nbd engine" >&2; exit 77; }
[ -x "$RAWTRACK" ] || { echo "bench-nbd: $RAWTRACK is not executable" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/bench-nbd.XXXXXX")"
spid=""
cleanup ()
{
  [ -n "$spid" ] && kill "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
sock="$work/nbd.sock"

echo "bench-nbd: preparing a $SIZE disk in $work" >&2
qemu-img create -q -f raw disk.raw "$SIZE"
python3 - disk.raw <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
size = os.fstat(fd).st_size
chunk = os.urandom(1 << 20)
for off in range(0, size, 1 << 20):
    os.pwrite(fd, chunk, off)
os.fsync(fd)
os.close(fd)
EOF
"$RAWTRACK" attach disk.raw disk.qcow2 --cluster-size 65536 >/dev/null
qemu-img bitmap --add disk.qcow2 b

wait_socket ()
{
  for _ in $(seq 200); do
    [ -S "$sock" ] && return 0
    sleep 0.05
  done
  echo "bench-nbd: the server did not start" >&2
  exit 1
}

stop_server ()
{
  kill -TERM "$spid"
  wait "$spid" || true
  spid=""
  rm -f "$sock"
}

start_server ()
{
  rm -f "$sock"
  case "$1" in
    rawtrack)
      "$RAWTRACK" serve disk.qcow2 --socket "$sock" --track "$TRACK" &
      spid=$! ;;
    qemu-nbd)
      qemu-nbd -f qcow2 -t -k "$sock" disk.qcow2 &
      spid=$! ;;
    nbdkit)
      nbdkit -f -U "$sock" file disk.raw &
      spid=$! ;;
  esac
  wait_socket
}

# run_job SERVER NAME RW BS QD: one fio job; prints "iops MiB/s".
run_job ()
{
  local out="fio-$1-$2.json"
  fio --name="$2" --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
    --rw="$3" --bs="$4" --iodepth="$5" --size="$SIZE" \
    --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
    --randrepeat=0 --norandommap --output-format=json --output="$out" \
    >/dev/null 2>&1 || { echo "bench-nbd: fio $1 $2 failed" >&2; cat "$out" >&2; exit 1; }
  python3 - "$out" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
io = j["write"] if j["write"]["io_bytes"] else j["read"]
print("%.0f %.1f" % (io["iops"], io["bw_bytes"] / 1048576.0))
EOF
}

jobs=("randwrite-4k-qd16 randwrite 4k 16"
      "randread-4k-qd16 randread 4k 16"
      "write-1M-qd8 write 1M 8"
      "read-1M-qd8 read 1M 8")
servers=(rawtrack qemu-nbd nbdkit)
declare -A res

# Rounds alternate the servers so that noise from the machine spreads over
# all of them; each cell is the median of the rounds.
for ((round = 1; round <= REPEAT; round++)); do
  for s in "${servers[@]}"; do
    echo "bench-nbd: round $round: $s" >&2
    start_server "$s"
    for j in "${jobs[@]}"; do
      set -- $j
      r="$(run_job "$s" "$1" "$2" "$3" "$4")"
      res["$s,$1"]="${res[$s,$1]:-}${res[$s,$1]:+;}$r"
      echo "bench-nbd:   $1: $r" >&2
    done
    stop_server
  done
done
# median "i b;i b;..." -> "i b" (by IOPS)
median ()
{
  python3 -c '
import sys
v = sorted((tuple(map(float, x.split())) for x in sys.argv[1].split(";")))
print("%.0f %.1f" % v[len(v) // 2])' "$1"
}
for k in "${!res[@]}"; do
  res["$k"]="$(median "${res[$k]}")"
done
qemu-img check -q disk.qcow2 || echo "bench-nbd: WARNING: qemu-img check failed" >&2

printf '\n%-20s %22s %22s %22s %9s %9s\n' "job (IOPS, MiB/s)" \
  rawtrack qemu-nbd nbdkit "vs nbdkit" "vs qemu"
for j in "${jobs[@]}"; do
  set -- $j
  read -r ri rb <<<"${res[rawtrack,$1]}"
  read -r qi qb <<<"${res[qemu-nbd,$1]}"
  read -r ki kb <<<"${res[nbdkit,$1]}"
  python3 - "$1" "$ri" "$rb" "$qi" "$qb" "$ki" "$kb" <<'EOF'
import sys
n = sys.argv[1]
ri, rb, qi, qb, ki, kb = map(float, sys.argv[2:])
cell = lambda i, b: "%9.0f %8.1f MiB/s" % (i, b)
print("%-20s %22s %22s %22s %8.2fx %8.2fx" % (n, cell(ri, rb), cell(qi, qb),
      cell(ki, kb), ri / ki if ki else 0, ri / qi if qi else 0))
EOF
done
echo
echo "(tracking mode: $TRACK; $SIZE disk; ${RUNTIME}s per job, median of $REPEAT; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
