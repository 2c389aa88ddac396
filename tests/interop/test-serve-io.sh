#!/usr/bin/env bash
# test-serve-io.sh: data through `rawtrack serve` with real clients.
#
#  - nbdcopy out (1 and 4 connections) equals qemu-img convert -O raw,
#    also with --sendfile;
#  - nbdcopy in to a writable export (sparse source, multi-conn, --flush):
#    the data file then equals the source, qemu-img check and compare pass;
#  - qemu-io over NBD: write patterns (plain, FUA, zero with and without
#    unmap, discard, flush) and read them back, also after a restart;
#  - qemu-img convert into the server;
#  - fio's nbd engine with verify (random 4k writes at depth 16);
#  - SIGTERM with an idle client and under load: exit 0, image clean,
#    bitmaps consistent, acknowledged data present.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdcopy --version
requires nbdinfo --version
requires python3 --version
requires qemu-img bitmap --help

cd "$tmpdir"
MiB=$((1024 * 1024))

# fresh_image NAME SIZE: an attached empty sparse raw disk with an enabled
# bitmap "b".
fresh_image ()
{
  rm -f "$1.raw" "$1.qcow2"
  truncate -s "$2" "$1.raw"
  "$RAWTRACK" attach "$1.raw" "$1.qcow2" --cluster-size 65536 >/dev/null ||
    die "attach $1 failed"
  qemu-img bitmap --add "$1.qcow2" b
}

# ---------------------------------------------------------------------------
# 1. nbdcopy out of a read-only export.
truncate -s 96M src.raw
python3 - src.raw <<'EOF'
import os, random, sys
random.seed(5)
fd = os.open(sys.argv[1], os.O_WRONLY)
MiB = 1 << 20
for i in range(40):
    off = random.randrange(0, 95) * MiB + random.randrange(0, 16) * 4096
    os.pwrite(fd, os.urandom(random.choice([4096, 65536, 300000, MiB])), off)
os.close(fd)
EOF
expect_ok "$RAWTRACK" attach src.raw src.qcow2 --cluster-size 65536
qemu-img convert -f qcow2 -O raw src.qcow2 conv.raw
# shellcheck disable=SC2016
expect_ok "$RAWTRACK" serve -r src.qcow2 --run '
  set -e
  nbdcopy "$uri" out1.raw
  nbdcopy --connections=4 --requests=16 "$uri" out4.raw
  qemu-img convert -f raw -O raw "$uri" out-q.raw
'
assert_same_file out1.raw conv.raw
assert_same_file out4.raw conv.raw
assert_same_file out-q.raw conv.raw
assert_same_file out1.raw src.raw
rm -f out1.raw out4.raw out-q.raw

# The same with read data sent by sendfile(2), in large and small reads.
# shellcheck disable=SC2016
expect_ok "$RAWTRACK" serve -r --sendfile src.qcow2 --run '
  set -e
  nbdcopy --connections=4 --request-size=1048576 "$uri" out1.raw
  nbdcopy --request-size=4096 --requests=4 "$uri" out4.raw
'
assert_same_file out1.raw src.raw
assert_same_file out4.raw src.raw
rm -f out1.raw out4.raw

# ---------------------------------------------------------------------------
# 2. nbdcopy into a writable export.
fresh_image dst 96M
# shellcheck disable=SC2016
expect_ok "$RAWTRACK" serve dst.qcow2 --run '
  set -e
  nbdcopy --flush --connections=4 src.raw "$uri"
  nbdcopy "$uri" back.raw
'
assert_same_file back.raw src.raw
assert_same_file dst.raw src.raw
qcheck dst.qcow2
expect_ok qemu-img compare -f raw -F qcow2 src.raw dst.qcow2
qemu-img info -f qcow2 --output=json dst.qcow2 >info.json
assert_eq '["auto"]' "$(json_get info.json '[b["flags"] for b in j["format-specific"]["data"]["bitmaps"]][0]')" \
  "bitmap flags after serve"
rm -f back.raw

# qemu-img convert into the server (-n: the target exists).
fresh_image conv 96M
# shellcheck disable=SC2016
expect_ok "$RAWTRACK" serve conv.qcow2 --run '
  qemu-img convert -n -f raw -O raw src.raw "$uri"'
assert_same_file conv.raw src.raw
qcheck conv.qcow2

# ---------------------------------------------------------------------------
# 3. qemu-io over NBD.
fresh_image io 32M
# shellcheck disable=SC2016
expect_ok "$RAWTRACK" serve io.qcow2 --run '
  set -e
  qemu-io -f raw "$uri" \
    -c "write -P 0x11 0 64k" -c "write -P 0x12 100k 3000" \
    -c "write -f -P 0x13 1M 1M" -c "write -P 0x14 3M 1M" \
    -c "write -P 0x15 5M 2M" -c "write -z 5M 512k" -c "write -z -u 6M 512k" \
    -c "discard 8M 1M" -c "flush" -c "write -P 0x16 32767k 1k" \
    -c "aio_write -P 0x17 10M 64k" -c "aio_write -P 0x18 11M 64k" -c "aio_flush" \
    >/dev/null
  qemu-io -f raw -r "$uri" \
    -c "read -P 0x11 0 64k" -c "read -P 0x12 100k 3000" \
    -c "read -P 0 64k 36k" -c "read -P 0x13 1M 1M" \
    -c "read -P 0x15 5632k 512k" -c "read -P 0 5M 512k" -c "read -P 0 6M 512k" \
    -c "read -P 0x15 6656k 512k" -c "read -P 0x16 32767k 1k" \
    -c "read -P 0x17 10M 64k" -c "read -P 0x18 11M 64k" >/dev/null
'
# A write past the end fails cleanly (qemu-io reports the error).
expect_fail "$RAWTRACK" serve io.qcow2 --run 'qemu-io -f raw -c "write 32M 512" "$uri" | grep -q wrote'
qcheck io.qcow2
# The data is on the disk, as QEMU reads it without the server.
expect_ok qemu-io -f qcow2 -r -c 'read -P 0x11 0 64k' -c 'read -P 0x13 1M 1M' \
  -c 'read -P 0 5M 512k' -c 'read -P 0x16 32767k 1k' io.qcow2
# A read-only export refuses writes.
# shellcheck disable=SC2016
expect_ok "$RAWTRACK" serve -r io.qcow2 --run '
  if qemu-io -f raw -c "write 0 512" "$uri" 2>&1 | grep -q "^wrote"; then exit 1; fi'

# ---------------------------------------------------------------------------
# 4. fio with the nbd engine, verify on.
if fio --enghelp=nbd >/dev/null 2>&1; then
  fresh_image fio 64M
  # shellcheck disable=SC2016
  expect_ok "$RAWTRACK" serve fio.qcow2 --run '
    fio --name=verify --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
      --size=32M --iodepth=16 --verify=crc32c --do_verify=1 \
      --verify_fatal=1 --output=fio.out
    fio --name=seq --ioengine=nbd --uri="$uri" --rw=write --bs=1M \
      --offset=32M --size=32M --iodepth=8 --verify=md5 --do_verify=1 \
      --verify_fatal=1 --output=fio2.out'
  grep -q "err= 0" fio.out || { cat fio.out >&2; die "fio verify failed"; }
  qcheck fio.qcow2
else
  echo "$progname: fio has no nbd engine: part 4 skipped" >&2
fi

# ---------------------------------------------------------------------------
# 5. SIGTERM.
fresh_image term 64M
sock="$tmpdir/term.sock"
# start_server IMAGE: in the background, waiting for the socket.
start_server ()
{
  rm -f "$sock" server.pid
  "$RAWTRACK" serve "$1" --socket "$sock" --pidfile "$tmpdir/server.pid" &
  spid=$!
  cleanup_fn kill "$spid"
  # The pid file is written once the socket listens.
  wait_until 120 "server did not start" test -s server.pid
}
# stop_server: SIGTERM, which must give exit 0 (within 2 minutes: 10 s is
# the design, but sanitizer builds on a loaded machine are slow).
stop_server ()
{
  local st=0
  kill -TERM "$spid"
  wait_until 120 "server still running after SIGTERM" eval "! kill -0 $spid"
  wait "$spid" || st=$?
  assert_eq 0 "$st" "exit status after SIGTERM"
  assert_absent "$sock"
  assert_absent server.pid
}

# Idle client holding a connection.
start_server term.qcow2
qemu-io -f raw -c "write -P 0x61 0 1M" "nbd+unix:///?socket=$sock" >/dev/null
rm -f idle.ready
"$PYTHON" - "$sock" <<'EOF' &
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.recv(18)
s.sendall(struct.pack(">I", 3))
open("idle.ready", "w").close()
time.sleep(600)
EOF
idle=$!
cleanup_fn kill "$idle"
# SIGTERM once the client is in the handshake, not after a guessed delay.
wait_until 120 "the idle client did not connect" test -e idle.ready
stop_server
kill "$idle" 2>/dev/null || true
wait "$idle" 2>/dev/null || true
qcheck term.qcow2
expect_ok qemu-io -f qcow2 -r -c 'read -P 0x61 0 1M' term.qcow2

# Under load: writes in flight when SIGTERM arrives.  The source fills the
# whole export (a larger one makes nbdcopy refuse before writing anything);
# SIGTERM once nbdcopy reports progress, not after a guessed delay.
head -c $((64 * MiB)) /dev/urandom >load.raw
start_server term.qcow2
rm -f progress.txt
nbdcopy --connections=2 --progress=3 load.raw "nbd+unix:///?socket=$sock" \
  2>/dev/null 3>progress.txt &
copy=$!
cleanup_fn kill "$copy"
wait_until 120 "nbdcopy made no progress" grep -qE '^[1-9][0-9]*/' progress.txt
stop_server
wait "$copy" 2>/dev/null || true
qcheck term.qcow2
qemu-img info -f qcow2 --output=json term.qcow2 >info.json
assert_eq '["auto"]' "$(json_get info.json '[b["flags"] for b in j["format-specific"]["data"]["bitmaps"]][0]')" \
  "bitmap flags after SIGTERM"

echo "$progname: OK"
