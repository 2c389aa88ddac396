#!/usr/bin/env bash
# test-backup-device.sh: `rawtrack backup` on a terminal and onto a block
# device.
#
#  1. On a terminal (script -qc gives the command a pty), create and
#     restore draw a progress bar on stderr: percent, bytes done of total,
#     rate and time left; without a terminal (and with
#     RAWTRACK_NO_PROGRESS) nothing of it is printed.
#     The chain top reads as the disk through qemu-img convert and
#     through qemu-nbd (nbdcopy), without rawtrack.
#  2. (root, losetup) restore --force onto a loop block device: the device
#     reads back the backup byte for byte; without --force it is refused.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires jq --version
requires script --version

cd "$tmpdir"
MiB=$((1024 * 1024))
RT="$RAWTRACK"

truncate -s $((24 * MiB)) disk.raw
"$RT" attach disk.raw disk.qcow2 >/dev/null
printf '%s\n' "write -P 0x5a 0 8M" "write -P 0x17 12M 3M" >cmds
"$RT" io disk.qcow2 -f cmds >/dev/null

# ---- 1. progress on a terminal ---------------------------------------------
unset RAWTRACK_NO_PROGRESS
script -qec "'$RT' backup create disk.qcow2 repo" /dev/null >tty.out </dev/null
grep -aq 'backup: \[#*' tty.out || die "no progress bar on a terminal: $(cat -v tty.out)"
grep -aqE '[0-9]+% [0-9.]+ [KMG]?i?B of 24(\.0)? MiB, [0-9.]+ [KMG]?i?B/s, [0-9]+:[0-9]{2} left' tty.out ||
  die "the bar lacks bytes, rate or time left: $(cat -v tty.out)"
script -qec "'$RT' backup restore repo r1.raw" /dev/null >tty2.out </dev/null
grep -aq 'restore: \[#*' tty2.out || die "no restore progress: $(cat -v tty2.out)"
cmp r1.raw disk.raw || die "restore on a terminal differs"
# Not a terminal: no bar.
"$RT" backup create disk.qcow2 repo 2>err.txt >/dev/null
grep -q '%' err.txt && die "a progress bar without a terminal: $(cat err.txt)"
RAWTRACK_NO_PROGRESS=1 script -qec "'$RT' backup create disk.qcow2 repo" /dev/null >tty3.out </dev/null
grep -aq 'left' tty3.out && die "RAWTRACK_NO_PROGRESS ignored: $(cat -v tty3.out)"
export RAWTRACK_NO_PROGRESS=1

# ---- 1b. QEMU reads the chain top without rawtrack ------------------------
# (an incremental over the full: qemu-img convert and qemu-nbd + nbdcopy)
printf '%s\n' "write -P 0x66 5M 100k" "write -z 13M 64k" >cmds
"$RT" io disk.qcow2 -f cmds >/dev/null
top="repo/$("$RT" backup create disk.qcow2 repo).qcow2"
qemu-img convert -O raw "$top" conv.raw
cmp conv.raw disk.raw || die "qemu-img convert of the chain top differs"
if command -v qemu-nbd >/dev/null && command -v nbdcopy >/dev/null; then
  qemu-nbd -r -t -f qcow2 -k "$tmpdir/top.sock" "$top" &
  npid=$!
  cleanup_fn kill "$npid"
  for _ in $(seq 100); do [ -S "$tmpdir/top.sock" ] && break; sleep 0.05; done
  nbdcopy "nbd+unix:///?socket=$tmpdir/top.sock" nbd.raw
  kill "$npid"; wait "$npid" 2>/dev/null || true
  cmp nbd.raw disk.raw || die "the chain top served by qemu-nbd differs"
fi

# ---- 2. restore onto a block device -----------------------------------------
[ "$(id -u)" = 0 ] && command -v losetup >/dev/null || skip "part 2 needs root and losetup"
truncate -s $((24 * MiB)) loop.img
dev="$(losetup -f --show loop.img 2>/dev/null)" || skip "no loop device (losetup failed)"
cleanup_fn losetup -d "$dev"
[ -b "$dev" ] || die "$dev is not a block device"
expect_fail "$RT" backup restore repo "$dev"
"$RT" backup restore repo "$dev" --force --json >dev.json || die "restore onto $dev"
cmp "$dev" disk.raw || die "the block device differs from the disk"
# An older backup onto the same device: what differs is rewritten.
printf '%s\n' "write -P 0x99 20M 64k" >cmds
"$RT" io disk.qcow2 -f cmds >/dev/null
cp disk.raw snap.raw
"$RT" backup create disk.qcow2 repo >/dev/null
"$RT" backup restore repo "$dev" --force >/dev/null
cmp "$dev" snap.raw || die "the block device differs from the newer disk"
echo "test-backup-device: ok"
