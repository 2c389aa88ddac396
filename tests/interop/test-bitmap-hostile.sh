#!/usr/bin/env bash
# test-bitmap-hostile.sh: work bounded by the file, not by what the header
# claims (issue #14 item 10).
#
#  - `bitmap list` of 200 bitmaps whose tables all point at one data
#    cluster of 0xff on a 32 TiB image (a 3 MB file): each cluster is
#    counted once, so it takes well under 3 CPU seconds (loading every
#    bitmap took ~7 s of CPU here, 65535 bitmaps hours); counts checked;
#  - `info`, `check` and `bitmap list` of a 2 EiB image (2 MiB clusters,
#    the largest L1 QEMU allows) under ulimit -v 1 GiB work, and `info`
#    reports the size qemu-img info reports.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires qemu-img --version
gen="$SRCDIR/tests/interop/qcow2-hostile.py"
cd "$tmpdir"

"$PYTHON" "$gen" shared-data shared.qcow2 $((32 << 40)) 200 16
st=0
(ulimit -t 3; ulimit -v $((1 << 20)); exec "$RAWTRACK" bitmap list \
   shared.qcow2) >list.out 2>list.err || st=$?
cat list.err >&2
assert_eq 0 "$st" "exit status of bitmap list (200 bitmaps, one shared cluster)"
assert_eq 200 "$(grep -c " 35184372088832  100.00%" list.out)" \
  "bitmaps listed all dirty"

"$PYTHON" "$gen" huge huge.qcow2 $((2 << 60)) 21
qsize=$(qemu-img info --output=json huge.qcow2 | json_get - virtual-size 2>/dev/null ||
        qemu-img info huge.qcow2 | sed -n 's/.*(\([0-9]*\) bytes).*/\1/p')
for cmd in info check "bitmap list"; do
  st=0
  (ulimit -t 20; ulimit -v $((1 << 20)); exec "$RAWTRACK" $cmd huge.qcow2) \
    >out 2>err || st=$?
  cat err >&2
  assert_eq 0 "$st" "exit status of $cmd on a 2 EiB image"
done
"$RAWTRACK" info huge.qcow2 | grep -q "($qsize bytes)" ||
  die "info does not report qemu-img's size $qsize"
