#!/usr/bin/env bash
# rawtrack - benchmark: `rawtrack serve` over a remote (NBD) data file
# against the same disk exported directly by nbdkit's file plugin.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Usage: bench/bench-remote.sh [RAWTRACK]
#
# Environment (all optional):
#   SIZE=1G        the disk (a raw file filled with random data)
#   RUNTIME=10     seconds per fio job (plus RAMP=2 seconds of ramp)
#   REPEAT=3       rounds over all configurations; the median is reported
#   TLS=1          also the TLS pair (0: skip it)
#   TMPDIR         work directory parent (default /tmp)
#
# The raw file is exported by `nbdkit file` on a Unix socket (the storage
# server).  Configurations, one at a time, each measured with the same
# four fio jobs (nbd engine, one connection): randwrite 4k qd16, randread
# 4k qd16, write 1M qd8, read 1M qd8:
#   direct        fio -> nbdkit file RAW           (what a user would run
#                                                   without tracking)
#   rawtrack      fio -> rawtrack serve IMG --allow-remote
#                        -> (libnbd) nbdkit file RAW   (tracked, bitmap "b")
#   direct-tls    fio -> nbdkit --tls=require file RAW
#   rawtrack-tls  fio -> rawtrack serve --tls=require -> nbdkit file RAW
# (the hop to the storage server stays a plain Unix socket in both TLS
# configurations: TLS is on the client's hop, as in the fleet layout where
# the storage server is reached over a private link or locally).
# Ratios: rawtrack/direct (target >= 0.8) and rawtrack-tls/direct-tls
# (target >= 0.9), by IOPS; rounds alternate the configurations.
set -euo pipefail

RAWTRACK="${1:-${RAWTRACK:-$(cd "$(dirname "$0")/.." && pwd)/build/cli/rawtrack}}"
SIZE="${SIZE:-1G}"
RUNTIME="${RUNTIME:-10}"
RAMP="${RAMP:-2}"
REPEAT="${REPEAT:-3}"
TLS="${TLS:-1}"

for t in fio nbdkit python3 qemu-img; do
  command -v "$t" >/dev/null || { echo "bench-remote: $t is missing" >&2; exit 77; }
done
fio --enghelp=nbd >/dev/null 2>&1 ||
  { echo "bench-remote: fio has no nbd engine" >&2; exit 77; }
if [ "$TLS" = 1 ] && ! command -v certtool >/dev/null; then
  echo "bench-remote: certtool missing: TLS pair skipped" >&2
  TLS=0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/bench-remote.XXXXXX")"
spid="" dpid=""
cleanup ()
{
  [ -n "$spid" ] && kill "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
  [ -n "$dpid" ] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
sock="$work/nbd.sock"          # what fio connects to
dsock="$work/data.sock"        # the storage server behind rawtrack

echo "bench-remote: preparing a $SIZE disk in $work" >&2
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
if [ "$TLS" = 1 ]; then
  mkdir pki
  certtool --generate-privkey --key-type=ecdsa --outfile pki/ca-key.pem 2>/dev/null
  printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n' >pki/ca.info
  certtool --generate-self-signed --load-privkey pki/ca-key.pem \
    --template pki/ca.info --outfile pki/ca-cert.pem 2>/dev/null
  certtool --generate-privkey --key-type=ecdsa --outfile pki/server-key.pem 2>/dev/null
  printf 'cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' >pki/server.info
  certtool --generate-certificate --load-ca-certificate pki/ca-cert.pem \
    --load-ca-privkey pki/ca-key.pem --load-privkey pki/server-key.pem \
    --template pki/server.info --outfile pki/server-cert.pem 2>/dev/null
  # fio's libnbd refuses tls-certificates= in a URI (local file access):
  # the client finds the CA in its default directory instead.
  mkdir -p home/.pki
  cp -r pki home/.pki/libnbd
fi

wait_socket ()
{
  for _ in $(seq 200); do
    [ -S "$1" ] && return 0
    sleep 0.05
  done
  echo "bench-remote: a server did not start" >&2
  exit 1
}

# The storage server for the rawtrack configurations, for the whole run.
nbdkit -f -U "$dsock" file disk.raw &
dpid=$!
wait_socket "$dsock"
"$RAWTRACK" attach "nbd+unix:///?socket=$dsock" disk.qcow2 >/dev/null
"$RAWTRACK" bitmap add disk.qcow2 b

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
    direct)
      nbdkit -f -U "$sock" file disk.raw & spid=$! ;;
    rawtrack)
      "$RAWTRACK" serve disk.qcow2 --allow-remote --socket "$sock" & spid=$! ;;
    direct-tls)
      nbdkit -f -U "$sock" --tls=require --tls-certificates="$work/pki" \
        file disk.raw & spid=$! ;;
    rawtrack-tls)
      "$RAWTRACK" serve disk.qcow2 --allow-remote --socket "$sock" \
        --tls=require --tls-certificates "$work/pki" & spid=$! ;;
  esac
  wait_socket "$sock"
}

uri_of ()
{
  case "$1" in
    *-tls) echo "nbds+unix:///?socket=$sock" ;;   # CA from $HOME/.pki/libnbd
    *) echo "nbd+unix:///?socket=$sock" ;;
  esac
}

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks ()
{
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# run_job CONFIG NAME RW BS QD: one fio job; prints "iops MiB/s S D":
# S is the CPU the server fio talks to used per request (microseconds),
# D that of the storage server behind rawtrack (0 for the direct ones).
# The CPU counters cover the ramp too: requests = IOPS x (ramp + run).
run_job ()
{
  local out="fio-$1-$2.json" s0 d0 s1 d1
  s0="$(cpu_ticks "$spid")"
  d0="$(cpu_ticks "$dpid")"
  HOME="$work/home" fio --name="$2" --ioengine=nbd --uri="$(uri_of "$1")" \
    --rw="$3" --bs="$4" --iodepth="$5" --size="$SIZE" \
    --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
    --randrepeat=0 --norandommap --output-format=json --output="$out" \
    >/dev/null 2>&1 || { echo "bench-remote: fio $1 $2 failed" >&2; cat "$out" >&2; exit 1; }
  s1="$(cpu_ticks "$spid")"
  d1="$(cpu_ticks "$dpid")"
  case "$1" in direct*) d1="$d0" ;; esac
  python3 - "$out" "$((s1 - s0))" "$((d1 - d0))" "$(getconf CLK_TCK)" \
    "$((RUNTIME + RAMP))" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
io = j["write"] if j["write"]["io_bytes"] else j["read"]
s, d, hz, secs = map(int, sys.argv[2:6])
n = max(io["iops"] * secs, 1.0)
print("%.0f %.1f %.1f %.1f" % (io["iops"], io["bw_bytes"] / 1048576.0,
                               s * 1e6 / hz / n, d * 1e6 / hz / n))
EOF
}

jobs=("randwrite-4k-qd16 randwrite 4k 16"
      "randread-4k-qd16 randread 4k 16"
      "write-1M-qd8 write 1M 8"
      "read-1M-qd8 read 1M 8")
configs=(direct rawtrack)
[ "$TLS" = 1 ] && configs+=(direct-tls rawtrack-tls)
declare -A res

for ((round = 1; round <= REPEAT; round++)); do
  # Alternate the order of the pair from round to round.
  if (( round % 2 == 0 )); then
    order=()
    for ((i = ${#configs[@]} - 1; i >= 0; i--)); do order+=("${configs[i]}"); done
  else
    order=("${configs[@]}")
  fi
  for s in "${order[@]}"; do
    echo "bench-remote: round $round: $s" >&2
    start_server "$s"
    for j in "${jobs[@]}"; do
      set -- $j
      r="$(run_job "$s" "$1" "$2" "$3" "$4")"
      res["$s,$1"]="${res[$s,$1]:-}${res[$s,$1]:+;}$r"
      echo "bench-remote:   $1: $r" >&2
    done
    stop_server
  done
done
# pair A B: A against B by the median IOPS of the rounds, the spread of
# the per-round ratios (round i of A against round i of B), and the CPU
# per request: the server fio talks to + the storage server behind it.
pair ()
{
  local a="$1" b="$2"
  printf '\n%s against %s (IOPS, MiB/s; CPU us per request: server+storage)\n' "$a" "$b"
  for j in "${jobs[@]}"; do
    set -- $j
    python3 - "$1" "${res[$a,$1]}" "${res[$b,$1]}" <<'EOF'
import sys
name = sys.argv[1]
A = [tuple(map(float, x.split())) for x in sys.argv[2].split(";")]
B = [tuple(map(float, x.split())) for x in sys.argv[3].split(";")]
med = lambda v: sorted(v)[len(v) // 2]
a, b = med(A), med(B)
r = [x[0] / y[0] for x, y in zip(A, B) if y[0]]
cell = lambda v: "%7.0f %7.1f MiB/s %5.1f+%-5.1f" % (v[0], v[1], v[2], v[3])
print("%-18s %s | %s | %5.2fx (rounds %.2f-%.2f)"
      % (name, cell(a), cell(b), a[0] / b[0] if b[0] else 0,
         min(r) if r else 0, max(r) if r else 0))
EOF
  done
}
pair rawtrack direct
[ "$TLS" = 1 ] && pair rawtrack-tls direct-tls
echo
echo "($SIZE disk; ${RUNTIME}s per job, median of $REPEAT; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
