#!/usr/bin/env bash
# test-datafile-lock.sh: while rawtrack writes a container (serve, io),
# no other program writes its raw data file behind the tracking: the data
# file carries QEMU's lock bytes denying write and resize, as a VM's does,
# so `qemu-io -f raw` and `qemu-img convert -n` into it are refused
# (issue 14 item 4).  Readers are not refused (qemu-img convert from the
# raw file, qemu-io -r), read-only rawtrack takes no locks, and once
# rawtrack has exited the same writes work.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
# OFD locks (F_OFD_SETLK, 37 on Linux) on this file system.
requires python3 -c 'import fcntl, struct, tempfile; fcntl.fcntl(tempfile.TemporaryFile(dir="."), 37, struct.pack("hhqqi", 1, 0, 0, 1, 0))'

cd "$tmpdir"
sock="$tmpdir/s.sock"
truncate -s 16M disk.raw
write_pattern disk.raw 0 1048576 0x5a
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null
qemu-img create -q -f raw src.raw 1M
write_pattern src.raw 0 1048576 0x77
before="$(md5of disk.raw)"

# writers_refused WHO: both writers fail with QEMU's lock message and the
# raw disk is unchanged.
writers_refused ()
{
  local out st
  st=0
  out="$(qemu-io -f raw -c 'write -P 0x33 0 4k' disk.raw 2>&1)" || st=$?
  echo "$out" >&2
  grep -q 'Failed to get "write" lock' <<<"$out" ||
    die "qemu-io -f raw write was not refused while $1 runs"
  st=0
  out="$(qemu-img convert -n -f raw -O raw src.raw disk.raw 2>&1)" || st=$?
  echo "$out" >&2
  [ "$st" -ne 0 ] && grep -q 'lock' <<<"$out" ||
    die "qemu-img convert -n into the raw file was not refused while $1 runs"
  assert_eq "$before" "$(md5of disk.raw)" "raw disk after refused writers ($1)"
  # Readers that share write are welcome (a plain `qemu-img convert`
  # from the raw file wants it unchanged, and is refused as with a VM).
  expect_ok qemu-io -f raw -r -c 'read -P 0x5a 0 4k' disk.raw
  expect_ok qemu-img convert -U -f raw -O raw disk.raw copy.raw
  rm -f copy.raw
}

# 1. serve, read-write.
rm -f server.pid
"$RAWTRACK" serve disk.qcow2 --socket "$sock" --pidfile server.pid &
spid=$!
cleanup_fn kill "$spid"
wait_until 120 "server did not start" test -s server.pid
writers_refused "serve"
kill -TERM "$spid"
wait "$spid" || die "serve exit status"

# 2. io, read-write, held open while its command input is.
mkfifo cmds
"$RAWTRACK" io disk.qcow2 -f cmds >io.log 2>&1 &
iopid=$!
cleanup_fn kill "$iopid"
exec 7>cmds
echo "read 0 4k" >&7
wait_until 120 "rawtrack io did not start" grep -q "^read" io.log
writers_refused "io"
exec 7>&-
wait "$iopid" || die "rawtrack io failed: $(cat io.log)"

# 3. read-only serve takes no lock: the writer gets through (rawtrack's
#    readers never stop anyone, like qemu-img -U).
rm -f server.pid
"$RAWTRACK" serve -r disk.qcow2 --socket "$sock" --pidfile server.pid &
spid=$!
cleanup_fn kill "$spid"
wait_until 120 "read-only server did not start" test -s server.pid
expect_ok qemu-io -f raw -c 'write -P 0x5a 0 4k' disk.raw
kill -TERM "$spid"
wait "$spid" || die "read-only serve exit status"

# 4. Nothing running: the same writes work (the locks went with rawtrack).
expect_ok qemu-io -f raw -c 'write -P 0x33 0 4k' disk.raw
expect_ok qemu-img convert -n -f raw -O raw src.raw disk.raw
qcheck disk.qcow2

echo "$progname: OK"
