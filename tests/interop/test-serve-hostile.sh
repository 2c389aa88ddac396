#!/usr/bin/env bash
# test-serve-hostile.sh: malformed handshakes and requests never crash
# `rawtrack serve`, never disturb another connection, and get the answer
# the protocol asks for (nbd-hostile.py has the list).  Run against a
# writable and a read-only export, with a short handshake timeout; both
# servers must then still shut down cleanly (SIGTERM, exit 0) and leave
# a clean image.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires python3 --version
requires qemu-img bitmap --help

cd "$tmpdir"
sock="$tmpdir/h.sock"

truncate -s 16M disk.raw
write_pattern disk.raw 0 1048576 0x5a
write_pattern disk.raw $((8 * 1048576)) 65536 0x5b
"$RAWTRACK" attach disk.raw disk.qcow2 --cluster-size 65536 >/dev/null
qemu-img bitmap --add disk.qcow2 bm

run_hostile ()
{
  local st=0
  rm -f "$sock" server.pid
  "$RAWTRACK" serve disk.qcow2 --socket "$sock" --handshake-timeout 2 \
    --pidfile "$tmpdir/server.pid" "$@" &
  spid=$!
  cleanup_fn kill "$spid"
  # The pid file, not the socket: it exists between bind and listen.
  wait_until 120 "server did not start" test -s server.pid
  ro=""
  for a in "$@"; do [ "$a" = -r ] && ro=--readonly; done
  python3 "$interop_dir/nbd-hostile.py" "$sock" --bitmap bm --timeout 2 $ro ||
    die "nbd-hostile.py failed ($*)"
  kill -0 "$spid" || die "the server died"
  kill -TERM "$spid"
  wait "$spid" || st=$?
  assert_eq 0 "$st" "server exit status after SIGTERM ($*)"
}

run_hostile
run_hostile -r
run_hostile --threads 1
qcheck disk.qcow2
qemu-img info -f qcow2 --output=json disk.qcow2 >info.json
assert_eq '["auto"]' "$(json_get info.json '[b["flags"] for b in j["format-specific"]["data"]["bitmaps"]][0]')" \
  "bitmap flags"

echo "$progname: OK"
