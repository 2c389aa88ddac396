#!/usr/bin/env bash
# test-bitmap-owner.sh: tracking never writes bitmap bits into clusters
# that are not the bitmap's own (issue 14 item 3).  On a corrupt image
# whose bitmap table points into an L2 table, or at another bitmap's data
# cluster, a tracked write is refused with a message naming the
# corruption, and the L2 table / the other bitmap, the raw disk and what
# `qemu-img check` and `qemu-img map` say stay exactly as they were.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-img bitmap --help
requires qemu-io --version

cd "$tmpdir"
patch="$PYTHON $interop_dir/qcow2-patch.py"
sock="$tmpdir/s.sock"
cs=65536

# fresh: a container with bitmaps a and b, both with dense tables (one
# tracked write makes them so), closed cleanly.
fresh ()
{
  rm -f disk.raw disk.qcow2
  truncate -s 16M disk.raw
  write_pattern disk.raw 0 1048576 0x5a
  "$RAWTRACK" attach disk.raw disk.qcow2 --cluster-size $cs >/dev/null
  qemu-img bitmap --add disk.qcow2 a
  qemu-img bitmap --add disk.qcow2 b
  expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x5a 0 64k"
  qcheck disk.qcow2
}

# snapshot TAG: what must not change.
snapshot ()
{
  qemu-img check -U --output=json disk.qcow2 >"check-$1.json" 2>&1 || true
  qemu-img map -U --output=json -f qcow2 disk.qcow2 >"map-$1.json"
  extract disk.qcow2 "$l2" $cs >"l2-$1.bin"
  extract disk.qcow2 "$adata" $cs >"adata-$1.bin"
  md5of disk.raw >"raw-$1.md5"
}

same_as_before ()
{
  local what
  for what in check map; do
    cmp -s "$what-before.json" "$what-after.json" || {
      diff "$what-before.json" "$what-after.json" >&2 || true
      die "qemu-img $what changed: $1"
    }
  done
  assert_same_file l2-before.bin l2-after.bin
  assert_same_file adata-before.bin adata-after.bin
  assert_same_file raw-before.md5 raw-after.md5
}

# every_writer WANT: io and serve refuse tracked writes with WANT.
every_writer ()
{
  local want="$1" st=0
  "$RAWTRACK" io disk.qcow2 -c "write -P 0x11 1M 64k" >out.txt 2>err.txt ||
    st=$?
  cat err.txt >&2
  [ "$st" = 1 ] || die "io: exit $st, expected a refusal"
  grep -q -- "$want" err.txt || die "io: message lacks '$want'"

  rm -f "$sock" serve.pid
  # -v: the refusal's message, which goes to the client in the error
  # chunk, is also logged (without -v the server logs no failed request).
  "$RAWTRACK" serve -v disk.qcow2 --socket "$sock" --pidfile serve.pid \
    2>serve.err &
  spid=$!
  cleanup_fn kill "$spid"
  # The pid file: the socket file exists between bind and listen.
  wait_until 120 "server did not start" test -s serve.pid
  st=0
  # (4k: below the size whose payload is spliced straight to the data
  # file, where the reply carries only the errno - see the report)
  qemu-io -f raw "nbd+unix:///?socket=$sock" -c "write -P 0x11 2M 4k" \
    >qio.txt 2>&1 || st=$?
  cat qio.txt >&2
  grep -q "write failed" qio.txt || die "serve: the NBD write was not refused"
  kill -TERM "$spid"
  wait "$spid" || true
  cat serve.err >&2
  grep -q -- "$want" serve.err || die "serve: the log lacks '$want'"
}

# 1. a's bitmap table points into the L2 table.
fresh
l2=$($PYTHON -c 'import json,sys; print(json.load(sys.stdin)["l2_tables"][0]["offset"])' < <($patch dump disk.qcow2))
adata=$($patch get-bitmap-entry disk.qcow2 a 0)
[ "$adata" -gt 0 ] || die "bitmap a has no data cluster"
$patch set-bitmap-entry disk.qcow2 a 0 "$l2"
snapshot before
every_writer "bitmap 'a': its data cluster at offset 0x$(printf %x "$l2") is also an L2 table"
snapshot after
same_as_before "table into the L2 table"

# 2. b's data cluster is a's.
fresh
l2=$($PYTHON -c 'import json,sys; print(json.load(sys.stdin)["l2_tables"][0]["offset"])' < <($patch dump disk.qcow2))
adata=$($patch get-bitmap-entry disk.qcow2 a 0)
$patch set-bitmap-entry disk.qcow2 b 0 "$adata"
snapshot before
every_writer "is also a data cluster of bitmap '"
snapshot after
same_as_before "two bitmaps sharing a cluster"

# 3. a data cluster with refcount 2 (shared with something unknown).
fresh
adata=$($patch get-bitmap-entry disk.qcow2 a 0)
$patch set-refcount disk.qcow2 $((adata / cs)) 2
l2=$($PYTHON -c 'import json,sys; print(json.load(sys.stdin)["l2_tables"][0]["offset"])' < <($patch dump disk.qcow2))
snapshot before
every_writer "has refcount 2, not 1"
snapshot after
same_as_before "refcount 2"

# 4. The clean image tracks as before (and its tables stay in place).
fresh
expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x11 1M 64k"
qcheck disk.qcow2
qemu-img bitmap --merge a -b disk.qcow2 b disk.qcow2 2>/dev/null || true
qemu-io -f raw -r -c "read -P 0x11 1M 64k" disk.raw >/dev/null ||
  die "the clean write did not reach the disk"

echo "$progname: OK"
