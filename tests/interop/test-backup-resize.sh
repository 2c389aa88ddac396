#!/usr/bin/env bash
# test-backup-resize.sh: `rawtrack backup create` of an image source whose
# disk grew, then shrank, between backups (qemu-img resize on the
# container, which resizes the raw data file and the checkpoint bitmaps).
# Each backup is an incremental (not a full one), passes qemu-img check,
# reads as the disk through qemu-img compare, and restores byte for byte;
# the earlier backups of the chain still restore to their own sizes.
# A disk shrunk and grown back between two backups (to the same or
# another size) gets the cut area backed up as zeros though no bitmap
# marks it, and a rollback onto such a disk rewrites it.
# (NBD sources: tests/interop/test-backup-nbd.sh part 3.)
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires jq --version

cd "$tmpdir"
export RAWTRACK_NO_PROGRESS=1
MiB=$((1024 * 1024))
RT="$RAWTRACK"

truncate -s $((16 * MiB)) disk.raw
"$RT" attach disk.raw disk.qcow2 >/dev/null
io () { printf '%s\n' "$@" >cmds; "$RT" io disk.qcow2 -f cmds >/dev/null; }

# step N: a backup, checked against a copy of the disk.
step ()
{
  local n="$1" id
  "$RT" backup create disk.qcow2 repo --json >out.$n 2>err.$n ||
    die "backup $n: $(cat err.$n)"
  cp --sparse=always disk.raw snap.$n
  id="$(jq -r .id out.$n)"
  qcheck "repo/$id.qcow2"
  assert_eq "$(stat -c %s disk.raw)" "$(jq '."virtual-size"' out.$n)" "size of backup $n"
  qemu-img compare -q -f qcow2 -F raw "repo/$id.qcow2" snap.$n ||
    die "backup $n differs from the disk through qemu-img"
  rm -f r.raw
  "$RT" backup restore repo r.raw
  assert_same_file r.raw snap.$n
}

io "write -P 0x11 0 16M"
step 0
assert_eq full "$(jq -r .type out.0)" "first"

# Grow to 40 MiB: old data changed, data past the old end.
qemu-img resize -q disk.qcow2 $((40 * MiB))
io "write -P 0x22 1M 64k" "write -P 0x33 20M 1M" "write -P 0x34 $((40 * MiB - 4096)) 4k"
step 1
assert_eq incremental "$(jq -r .type out.1)" "grown: an incremental"
grep -q "grew from $((16 * MiB)) to $((40 * MiB))" err.1 || die "grown: not said: $(cat err.1)"
# Read: the changed cluster and the 24 MiB past the old end, not the rest.
[ "$(jq '."read-bytes"' out.1)" -le $((24 * MiB + 64 * 1024)) ] ||
  die "grown: read too much: $(cat out.1)"

# Shrink to 8 MiB (a change inside the new size too).
qemu-img resize -q --shrink disk.qcow2 $((8 * MiB))
io "write -P 0x44 3M 64k"
step 2
assert_eq incremental "$(jq -r .type out.2)" "shrunk: an incremental"
grep -q "shrank" err.2 || die "shrunk: not said: $(cat err.2)"
[ "$(jq '."read-bytes"' out.2)" -le $((64 * 1024)) ] ||
  die "shrunk: read too much: $(cat out.2)"

# Grow again past the old sizes: zeros where the old data was cut off.
qemu-img resize -q disk.qcow2 $((24 * MiB))
io "write -P 0x55 12M 64k"
step 3
assert_eq incremental "$(jq -r .type out.3)" "regrown: an incremental"

# Shrunk and grown back to the same size between two backups: the cut
# area reads zeros, its bitmap bits are clean (cut, regrown clean) and the
# chain holds the old data there.  The backup must hold the zeros.
io "write -P 0x66 0 24M"
step 4
qemu-img resize -q --shrink disk.qcow2 $((6 * MiB))
qemu-img resize -q disk.qcow2 $((24 * MiB))
io "write -P 0x67 2M 64k"
step 5
assert_eq incremental "$(jq -r .type out.5)" "regrown to the same size: an incremental"
grep -q "$((18 * MiB)) bytes read as zeros where backup" err.5 ||
  die "regrown: the cut area was not noticed: $(cat err.5)"
[ "$(jq '."read-bytes"' out.5)" -le $((64 * 1024)) ] ||
  die "regrown: read too much: $(cat out.5)"

# Cut deeper, inside a cluster, and grown back to less than before.
io "write -P 0x68 0 24M"
step 6
qemu-img resize -q --shrink disk.qcow2 $((4 * MiB + 12800))
qemu-img resize -q disk.qcow2 $((20 * MiB))
step 7
assert_eq incremental "$(jq -r .type out.7)" "regrown smaller: an incremental"

# A rollback onto the disk after a cut and regrowth rewrites the cut area.
qemu-img resize -q --shrink disk.qcow2 $((1 * MiB))
qemu-img resize -q disk.qcow2 $((20 * MiB))
"$RT" backup restore repo disk.qcow2 --force --json >out.rb
assert_same_file disk.raw snap.7
assert_eq rollback "$(jq -r .mode out.rb)" "rollback mode"

# Every backup of the chain still restores at its own size.
for n in 0 1 2 3 4 5 6 7; do
  rm -f r.raw
  "$RT" backup restore "repo:$(jq -r .id out.$n)" r.raw
  assert_same_file r.raw snap.$n
done
"$RT" backup verify repo >/dev/null || die "verify"
qemu-img info --backing-chain "repo/$(jq -r .id out.7).qcow2" | grep -c '^image:' >n
assert_eq 8 "$(cat n)" "chain length"
echo "test-backup-resize: ok"
