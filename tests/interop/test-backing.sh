#!/usr/bin/env bash
# test-backing.sh: images with a backing file read as QEMU reads them
# (issue 14 item 7): `rawtrack cat` and an NBD client of `rawtrack serve`
# get the backing chain's data where the image has no cluster - raw and
# qcow2 layers, three deep, names relative to the naming image's
# directory, zero and compressed clusters in the chain, a backing file
# shorter than the image above it (zeros past its end) - byte for byte
# what `qemu-img convert` and `qemu-io read -P` see.  serve exports such
# images read-only (never writable with every write failing), and its
# block status keeps the backing data as data.  Hostile chains are
# refused with a message: json:/protocol: names, loops, more than 32
# layers, unsupported formats, FIFOs and procfs files, a missing file.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version

cd "$tmpdir"
sock="$tmpdir/b.sock"
MiB=1048576

# The chain: sub/base.raw (8 MiB) <- sub/mid.qcow2 (12 MiB) <- top.qcow2
# (16 MiB), each naming the next relative to its own directory.
mkdir sub
qemu-img create -q -f raw sub/base.raw 8M
qemu-io -f raw -c "write -P 0x11 0 8M" -c "write -P 0x12 5M 64k" \
  sub/base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw sub/mid.qcow2 12M
qemu-io -f qcow2 -c "write -P 0x22 1M 1M" -c "write -z 3M 1M" \
  -c "write -c -P 0x23 6M 64k" -c "write -P 0x24 9M 64k" \
  sub/mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 top.qcow2 16M
qemu-io -f qcow2 -c "write -P 0x33 2M 512k" -c "write -z 5M 64k" \
  top.qcow2 >/dev/null
# A compressed cluster in the middle layer really is one.
qemu-img check sub/mid.qcow2 >chk.txt
grep -q "[1-9][0-9.]*% compressed clusters" chk.txt ||
  hard_error "no compressed cluster in sub/mid.qcow2: $(cat chk.txt)"

for img in sub/mid.qcow2 top.qcow2; do
  qemu-img convert -O raw "$img" q.raw
  "$RAWTRACK" cat "$img" >r.raw
  assert_same_file q.raw r.raw
done
# From another directory, by absolute path: names stay relative to the
# images' directories.
(cd / && "$RAWTRACK" cat "$tmpdir/top.qcow2") >r.raw
assert_same_file q.raw r.raw

# Spot checks against qemu-io's expectations, layer by layer.
expect_pattern ()
{
  local off="$1" len="$2" pat="$3"
  "$RAWTRACK" cat top.qcow2 --offset "$off" --length "$len" >part.raw
  qemu-io -f raw -r -c "read -P $pat 0 $len" part.raw >/dev/null ||
    die "top.qcow2 at $off: expected $pat"
}
expect_pattern 0 $MiB 0x11                      # base.raw
expect_pattern $MiB $MiB 0x22                   # mid.qcow2
expect_pattern $((2 * MiB)) $((512 * 1024)) 0x33  # top.qcow2
expect_pattern $((3 * MiB)) $MiB 0              # zero cluster in mid
expect_pattern $((5 * MiB)) 65536 0             # zero cluster in top over base
expect_pattern $((6 * MiB)) 65536 0x23          # compressed, in mid
expect_pattern $((8 * MiB)) $MiB 0              # past base.raw's end
expect_pattern $((9 * MiB)) 65536 0x24          # mid, past base.raw's end
expect_pattern $((12 * MiB)) $((4 * MiB)) 0     # past mid.qcow2's end

# serve: read-only, and every byte (and block status) right.
rm -f serve.pid
"$RAWTRACK" serve top.qcow2 --socket "$sock" --pidfile serve.pid 2>serve.err &
spid=$!
cleanup_fn kill "$spid"
# The pid file: the socket file exists between bind and listen.
wait_until 120 "server did not start" test -s serve.pid
uri="nbd+unix:///?socket=$sock"
grep -q "exporting it read-only" serve.err || die "serve did not say read-only"
qemu-img convert -f raw -O raw "$uri" n.raw
assert_same_file q.raw n.raw
expect_ok qemu-io -f raw -r -c "read -P 0x11 0 1M" -c "read -P 0x22 1M 1M" \
  -c "read -P 0x23 6M 64k" -c "read -P 0 12M 4M" "$uri"
st=0
qemu-io -f raw -c "write -P 0x44 0 4k" "$uri" >w.txt 2>&1 || st=$?
cat w.txt >&2
grep -qi "read-only\|not permitted\|Permission denied" w.txt ||
  die "the export of an image with a backing file is not read-only"
if command -v nbdinfo >/dev/null 2>&1; then
  nbdinfo "$uri" >info.txt
  grep -q "is_read_only: true" info.txt || die "nbdinfo: not read-only"
  # base:allocation: nothing the backing chain supplies reads as a hole
  # that is zero (a copier would skip it).
  nbdinfo --map "$uri" >map.txt
  cat map.txt >&2
  "$PYTHON" - map.txt <<'EOF' || die "base:allocation hides backing data"
import sys
bad = 0
for line in open(sys.argv[1]):
    start, length, typ = line.split()[:3]
    start, length, typ = int(start), int(length), int(typ)
    # 0..2 MiB (base, mid) and 6 MiB (compressed in mid) are data.
    for off in (0, 1 << 20, 6 << 20, 9 << 20):
        if start <= off < start + length and typ & 2:
            print(f"offset {off} reported zero ({typ})", file=sys.stderr)
            bad = 1
sys.exit(bad)
EOF
  if command -v nbdcopy >/dev/null 2>&1; then
    nbdcopy "$uri" c.raw
    assert_same_file q.raw c.raw
  fi
fi
kill -TERM "$spid"
wait "$spid" || die "serve exit status"

# Writes to such an image are refused by the library, with the reason.
st=0
"$RAWTRACK" io top.qcow2 -c "write 0 4k" 2>err.txt || st=$?
cat err.txt >&2
[ "$st" = 1 ] && grep -q "backing file" err.txt || die "io write: $st"

# Hostile and broken chains.
refused ()
{
  local want="$1" st=0; shift
  timeout 10 "$RAWTRACK" cat "$@" >out.txt 2>err.txt || st=$?
  cat err.txt >&2
  [ "$st" -ne 124 ] || die "hung: cat $*"
  [ "$st" = 1 ] || die "cat $*: exit $st, expected a refusal"
  grep -q -- "$want" err.txt || die "cat $*: message lacks '$want'"
}
rebase () { qemu-img rebase -u -F "$1" -b "$2" h.qcow2; }
qemu-img create -q -f qcow2 h.qcow2 1M
rebase raw 'nbd://localhost/x'
refused "refusing backing file name 'nbd://localhost/x'" h.qcow2
rebase raw 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}'
refused "refusing backing file name 'json:" h.qcow2
rebase vmdk sub/base.raw
refused "format 'vmdk' is not supported" h.qcow2
mkfifo pipe
rebase raw pipe
refused "a FIFO" h.qcow2
rebase raw /proc/self/environ
refused "on the proc pseudo file system" h.qcow2
rebase raw missing.raw
refused "cannot open the backing file: missing.raw" h.qcow2
# A loop: a <- b <- a.
qemu-img create -q -f qcow2 a.qcow2 1M
qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2
qemu-img rebase -u -F qcow2 -b b.qcow2 a.qcow2
refused "the chain loops" b.qcow2
# And the image naming itself.
qemu-img rebase -u -F qcow2 -b h.qcow2 h.qcow2
refused "the chain loops" h.qcow2
# 40 layers: refused; 30 layers: read like QEMU.
qemu-img create -q -f raw l0.raw 1M
qemu-io -f raw -c "write -P 0x5c 0 64k" l0.raw >/dev/null
qemu-img create -q -f qcow2 -b l0.raw -F raw l1.qcow2 1M
for i in $(seq 2 40); do
  qemu-img create -q -f qcow2 -b "l$((i - 1)).qcow2" -F qcow2 "l$i.qcow2" 1M
done
refused "the chain is deeper than 32 images" l40.qcow2
qemu-img convert -O raw l30.qcow2 q30.raw
"$RAWTRACK" cat l30.qcow2 >r30.raw
assert_same_file q30.raw r30.raw

# info, check and bitmap commands never open the chain.
expect_ok "$RAWTRACK" info b.qcow2
expect_ok "$RAWTRACK" check top.qcow2

echo "$progname: OK"
