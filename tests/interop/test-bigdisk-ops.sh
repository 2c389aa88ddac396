#!/usr/bin/env bash
# test-bigdisk-ops.sh: on a sparse 15 TiB disk (1 TiB where the file
# system allows no more) with bitmaps whose dense form is near QEMU's
# 512 MiB cap, every bitmap operation and a tracked write cost what the
# set bits need, not the disk size (issue 12).  Each command runs under
# `ulimit -v` (RAWTRACK_BIGDISK_VMEM_KIB, 300 MiB) below the size of ONE
# such bitmap held densely, and under a loose time bound: loading any of
# the bitmaps whole, or walking the disk granule by granule, fails.  The
# bound is checked to be tight enough: qemu-img, which loads a bitmap
# whole to merge it, must fail under it.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-img bitmap --help

cd "$tmpdir"
VMEM=${RAWTRACK_BIGDISK_VMEM_KIB:-307200}
TLIM=${RAWTRACK_BIGDISK_TIMEOUT:-60}

# 15 TiB at 4 KiB granularity: 480 MiB of bits per bitmap; 1 TiB at
# 512 bytes: 256 MiB.  Either is above the memory limit.
if truncate -s 15T disk.raw 2>/dev/null; then
  size=15T gran=4096
else
  rm -f disk.raw
  truncate -s 1T disk.raw || skip "no sparse 1 TiB file here"
  size=1T gran=512
fi
echo "disk $size, granularity $gran, limit ${VMEM} KiB, ${TLIM} s" >&2
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null
base=$(stat -c %s disk.qcow2)

# bounded CMD...: run under the memory and time limits.
bounded ()
{
  local st=0 t0=$SECONDS
  ( ulimit -v "$VMEM"; exec timeout "$TLIM" "$@" ) >out.txt 2>err.txt || st=$?
  echo "  $((SECONDS - t0)) s: ${*:2:3}" >&2
  if [ "$st" != 0 ]; then
    cat err.txt >&2
    die "'$*' failed (exit $st) under ${VMEM} KiB / ${TLIM} s"
  fi
}

# The bound catches a dense load: QEMU's merge loads both bitmaps.
qemu-img bitmap --add -g "$gran" disk.qcow2 q1
qemu-img bitmap --add -g "$gran" disk.qcow2 q2
if ( ulimit -v "$VMEM"; exec qemu-img bitmap --merge q1 disk.qcow2 q2 ) \
     >/dev/null 2>&1; then
  die "qemu-img merged under ${VMEM} KiB: the bound catches no dense load"
fi
bounded "$RAWTRACK" bitmap remove disk.qcow2 q1
bounded "$RAWTRACK" bitmap remove disk.qcow2 q2

for b in b0 b1 b2 b3; do
  bounded "$RAWTRACK" bitmap add disk.qcow2 "$b" --granularity "$gran"
done
bounded "$RAWTRACK" bitmap add disk.qcow2 frozen --granularity "$gran" \
  --disabled

# Tracked writes far apart (each bitmap cluster covers a stretch of the
# disk of its own), through the normal crash-safe tracking.
if [ "$size" = 15T ]; then
  offs="1099511627776 8246337208320 16492674412544"    # 1 TiB, 7.5 TiB, end - 4 KiB
else
  offs="1073741824 549755813888 1099511623680"         # 1 GiB, 512 GiB, end - 4 KiB
fi
cmds=()
for o in $offs; do cmds+=(-c "write -P 0x5a $o 4k"); done
bounded "$RAWTRACK" io disk.qcow2 "${cmds[@]}"

bounded "$RAWTRACK" info disk.qcow2
bounded "$RAWTRACK" bitmap list disk.qcow2 --json
grep -q '"name": *"b0"' out.txt || die "list: b0 missing"
# Each of the 4 enabled bitmaps: 3 granules of 4 KiB (512 B: 8 each).
bounded "$RAWTRACK" bitmap dump disk.qcow2 b2
want=$(for o in $offs; do echo "$o 4096"; done)
[ "$(cat out.txt)" = "$want" ] || { cat out.txt >&2; die "dump b2: wrong extents"; }
bounded "$RAWTRACK" bitmap dump disk.qcow2 frozen
[ ! -s out.txt ] || die "the disabled bitmap recorded writes"

bounded "$RAWTRACK" bitmap disable disk.qcow2 b3
bounded "$RAWTRACK" bitmap enable disk.qcow2 frozen
bounded "$RAWTRACK" bitmap merge disk.qcow2 b0 frozen
bounded "$RAWTRACK" bitmap dump disk.qcow2 frozen
[ "$(cat out.txt)" = "$want" ] || die "merge: frozen lacks b0's extents"
bounded "$RAWTRACK" bitmap clear disk.qcow2 b1
bounded "$RAWTRACK" bitmap dump disk.qcow2 b1
[ ! -s out.txt ] || die "clear: b1 still dirty"
bounded "$RAWTRACK" bitmap remove disk.qcow2 b2

# Growth: at most one cluster per bitmap per stretch written, plus a
# table and directory per change (a few clusters), never a dense bitmap.
qcheck disk.qcow2
cs=$(qemu-img info --output=json disk.qcow2 | $PYTHON -c \
       'import json,sys; print(json.load(sys.stdin)["cluster-size"])')
grown=$(( $(stat -c %s disk.qcow2) - base ))
limit=$(( (5 * 3 + 32) * cs ))
echo "grown $((grown >> 10)) KiB (cluster $cs, limit $((limit >> 10)) KiB)" >&2
[ "$grown" -le "$limit" ] || die "the container grew $grown bytes (> $limit)"
qcheck disk.qcow2
echo "PASS: bitmap operations on a sparse $size disk within ${VMEM} KiB" >&2
