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
#  1c. verify and prune: the same bar on a terminal (verify also for its
#     --source sample), none without one; their --json summaries; every
#     documented exit status (0, 1, 2, 3, 4) produced for real.
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

# ---- 1c. verify and prune: progress, --json, exit codes ---------------------
# (a repository of its own: three backups of a small disk)
truncate -s $((8 * MiB)) e.raw
"$RT" attach e.raw e.qcow2 >/dev/null
for p in 0x31 0x32 0x33; do
  printf '%s\n' "write -P $p 1M 2M" >cmds
  "$RT" io e.qcow2 -f cmds >/dev/null
  "$RT" backup create e.qcow2 erepo >/dev/null 2>&1
done
unset RAWTRACK_NO_PROGRESS
script -qec "'$RT' backup verify erepo" /dev/null >tty4.out </dev/null
grep -aqE 'verify: \[#*.*% .* of .*/s, [0-9]+:[0-9]{2} left' tty4.out ||
  die "no verify progress on a terminal: $(cat -v tty4.out)"
grep -aq ': ok (' tty4.out || die "verify on a terminal: $(cat -v tty4.out)"
script -qec "'$RT' backup verify erepo --source e.qcow2" /dev/null >tty5.out </dev/null
grep -aq 'verify source: \[#*' tty5.out ||
  die "no verify --source progress on a terminal: $(cat -v tty5.out)"
"$RT" backup verify erepo --source e.qcow2 >v.out 2>v.err || die "verify: $(cat v.err)"
grep -q '%' v.err && die "verify: a progress bar without a terminal: $(cat v.err)"
"$RT" backup verify erepo --json >v.json
assert_eq true "$(jq .ok v.json)" "verify --json ok"
assert_eq $((3 * 2 * MiB)) "$(jq '."checked-bytes"' v.json)" "verify --json checked-bytes"
jq -e '.seconds >= 0' v.json >/dev/null || die "verify --json: no seconds: $(cat v.json)"
cp -a erepo erepo2
script -qec "'$RT' backup prune erepo2 --keep 2" /dev/null >tty6.out </dev/null
grep -aqE 'prune: \[#*.*% .* of 8(\.0)? MiB' tty6.out ||
  die "no prune progress on a terminal: $(cat -v tty6.out)"
"$RT" backup prune erepo --keep 2 --json >p.json 2>p.err
grep -q '%' p.err && die "prune: a progress bar without a terminal: $(cat p.err)"
assert_eq 1 "$(jq .removed p.json)" "prune --json removed"
assert_eq 2 "$(jq .kept p.json)" "prune --json kept"
assert_eq $((2 * MiB)) "$(jq '."data-bytes"' p.json)" "prune --json data-bytes"
jq -e '."written-bytes" > 0 and .seconds >= 0' p.json >/dev/null ||
  die "prune --json: $(cat p.json)"
export RAWTRACK_NO_PROGRESS=1

# Every documented exit status, each produced for real.
expect_exit 0 "$RT" backup verify erepo
expect_exit 0 "$RT" backup prune erepo --keep 5
expect_exit 1 "$RT" backup prune erepo               # no --keep
expect_exit 1 "$RT" backup restore erepo:999999 x.raw  # no such backup
expect_exit 1 "$RT" backup restore erepo disk.raw     # exists, no --force
expect_exit 1 "$RT" backup verify erepo --source missing.qcow2
expect_exit 2 "$RT" backup create missing.qcow2 erepo
expect_exit 2 "$RT" backup create "nbd+unix:///?socket=$tmpdir/none.sock" erepo
# 3: the repository fails - a backup file of the chain is gone, a
# repository that is a file, a backup file that cannot be written.
full="$(jq -r '.[0].file' <("$RT" backup list erepo --json))"
mv "erepo/$full" full.keep
expect_exit 3 "$RT" backup restore erepo r3.raw
[ -e r3.raw ] && die "a failed restore left its target behind"
mv full.keep "erepo/$full"
expect_exit 3 env RAWTRACK_BACKUP_FAIL_AT=file-sync "$RT" backup create e.qcow2 erepo
expect_exit 3 env RAWTRACK_BACKUP_FAIL_AT=prune-file "$RT" backup prune erepo --keep 1
# 4: damage.
last="$(jq -r '.[-1].file' <("$RT" backup list erepo --json))"
printf 'X' | dd of="erepo/$last" bs=1 seek=$((1024 * 1024)) conv=notrunc status=none
expect_exit 4 "$RT" backup verify erepo
expect_exit 0 "$RT" backup verify erepo2

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
