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

# run_job CONFIG NAME RW BS QD: one fio job; prints "iops MiB/s".
run_job ()
{
  local out="fio-$1-$2.json"
  HOME="$work/home" fio --name="$2" --ioengine=nbd --uri="$(uri_of "$1")" \
    --rw="$3" --bs="$4" --iodepth="$5" --size="$SIZE" \
    --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
    --randrepeat=0 --norandommap --output-format=json --output="$out" \
    >/dev/null 2>&1 || { echo "bench-remote: fio $1 $2 failed" >&2; cat "$out" >&2; exit 1; }
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

# pair A B: a table of A against B.
pair ()
{
  local a="$1" b="$2"
  printf '\n%-20s %22s %22s %8s\n' "job (IOPS, MiB/s)" "$a" "$b" ratio
  for j in "${jobs[@]}"; do
    set -- $j
    read -r ai ab <<<"${res[$b,$1]}"
    read -r bi bb <<<"${res[$a,$1]}"
    python3 - "$1" "$bi" "$bb" "$ai" "$ab" <<'EOF'
import sys
n = sys.argv[1]
bi, bb, ai, ab = map(float, sys.argv[2:])
cell = lambda i, b: "%9.0f %8.1f MiB/s" % (i, b)
print("%-20s %22s %22s %7.2fx" % (n, cell(bi, bb), cell(ai, ab), bi / ai if ai else 0))
EOF
  done
}
pair rawtrack direct
[ "$TLS" = 1 ] && pair rawtrack-tls direct-tls
echo
echo "($SIZE disk; ${RUNTIME}s per job, median of $REPEAT; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
