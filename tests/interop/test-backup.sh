#!/usr/bin/env bash
# test-backup.sh: `rawtrack backup create | restore | verify | list | prune`
# from an image source, against QEMU.
#
#  1. A full backup and several incrementals of a changing disk (random
#     writes, write-zeroes and discards through `rawtrack io`, a disk whose
#     size is not a multiple of the cluster size), one --full and one
#     --compress among them: after each, `qemu-img check` is clean on the
#     new file, `qemu-img compare` of the chain top equals a copy of the
#     disk taken at that moment, and `qemu-img info --backing-chain` shows
#     the chain.  Every backup restores byte for byte (raw file, sparse),
#     into a new container, and onto an existing file with --force.
#  2. Rollback onto the source container rewrites only what differs and is
#     tracked: the next backup restores to the rolled-back disk.
#  3. verify: clean repository ok; a byte corrupted in a backup's data is
#     found (exit 4); a write made behind rawtrack's back (straight into the
#     raw file) is found by verify --source.
#  4. prune --keep N: the kept backups still restore exactly, the files
#     pass qemu-img check, verify is clean; the full folded from backups
#     one of which was compressed is compressed too.
#  5. list --json, and clear errors for bad input.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires python3 --version
requires jq --version

cd "$tmpdir"
export RAWTRACK_NO_PROGRESS=1
MiB=$((1024 * 1024))
SIZE=$((48 * MiB + 3 * 512))
RT="$RAWTRACK"

truncate -s "$SIZE" disk.raw
"$RT" attach disk.raw disk.qcow2 >/dev/null

ids=()
# backup ROUND [OPTIONS...]: writes, a backup, a copy of the disk.
backup ()
{
  local round="$1"; shift
  "$PYTHON" "$interop_dir/backup-writes.py" "$round" "$SIZE" 40 >cmds.$round
  "$RT" io disk.qcow2 -f cmds.$round >/dev/null || die "io round $round"
  "$RT" backup create disk.qcow2 repo --json "$@" >out.$round ||
    die "backup create round $round"
  cp --sparse=always disk.raw snap.$round
  local id file
  id="$(jq -r .id out.$round)"
  file="repo/$id.qcow2"
  [ -f "$file" ] || die "no backup file $file"
  qcheck "$file"
  qemu-img compare -q -f qcow2 -F raw "$file" snap.$round ||
    die "round $round: chain top $file differs from the disk"
  ids+=("$id")
  echo "round $round: $(jq -c '{type, "read-bytes", "data-bytes", "zero-bytes", "written-bytes"}' out.$round)" >&2
}

backup 0
assert_eq full "$(jq -r .type out.0)" "first backup type"
backup 1
assert_eq incremental "$(jq -r .type out.1)" "second backup type"
assert_eq "${ids[0]}" "$(jq -r .parent out.1)" "parent of the second"
# An incremental reads only what changed.
[ "$(jq '."read-bytes"' out.1)" -lt $((SIZE / 2)) ] ||
  die "the incremental read too much: $(cat out.1)"
backup 2 --compress
qemu-img info "repo/${ids[2]}.qcow2" | grep -q "compression type: zstd" ||
  die "--compress did not make a zstd image"
qemu-img check --output=json "repo/${ids[2]}.qcow2" >chk.2 || true
[ "$(jq '."compressed-clusters" // 0' chk.2)" -gt 0 ] ||
  die "--compress stored no compressed cluster: $(cat chk.2)"
backup 3
backup 4 --full
assert_eq full "$(jq -r .type out.4)" "--full"
backup 5 --compress
backup 6
# Nothing changed: an empty incremental.
"$RT" backup create disk.qcow2 repo --json >out.7
cp --sparse=always disk.raw snap.7
ids+=("$(jq -r .id out.7)")
assert_eq 0 "$(jq '."read-bytes"' out.7)" "read bytes of an unchanged disk"
qcheck "repo/${ids[7]}.qcow2"

qemu-img info --backing-chain "repo/${ids[3]}.qcow2" >chain.txt
[ "$(grep -c '^image:' chain.txt)" = 4 ] || { cat chain.txt >&2; die "chain of 4"; }
grep -q "backing file format: qcow2" chain.txt || die "backing_fmt"

# Every backup restores exactly, sparse.
for i in "${!ids[@]}"; do
  "$RT" backup restore "repo:${ids[$i]}" r.$i.raw
  assert_same_file r.$i.raw snap.$i
  qemu-img compare -q -f qcow2 -F raw "repo/${ids[$i]}.qcow2" snap.$i ||
    die "backup $i differs through qemu-img"
done
[ "$(du -k r.0.raw | cut -f1)" -lt $((SIZE / 1024)) ] || die "restore is not sparse"
# By sequence number, into a new container, and over a file with --force.
# (sequence numbers start at 1: 000002 is the second backup)
"$RT" backup restore repo:000002 r.c.qcow2 --json >rc.json
assert_eq container "$(jq -r .mode rc.json)" "container mode"
qemu-img compare -q r.c.qcow2 snap.1 || die "new container differs"
qcheck r.c.qcow2
"$RT" check r.c.qcow2 >/dev/null
expect_fail "$RT" backup restore repo r.0.raw
"$RT" backup restore repo r.0.raw --force
assert_same_file r.0.raw snap.7

# list.
"$RT" backup list repo --json >list.json
assert_eq "${#ids[@]}" "$(jq length list.json)" "list length"
assert_eq "${ids[1]}" "$(jq -r '.[2].parent' list.json)" "list parent"
"$RT" backup list repo | grep -q "${ids[5]}" || die "list text"

# verify: all good.
"$RT" backup verify repo >verify.out || { cat verify.out >&2; die "verify"; }
"$RT" backup verify repo --source disk.qcow2 >verify.out ||
  { cat verify.out >&2; die "verify --source"; }

# Rollback onto the source: to a backup of the current chain, only what
# changed since it is written.
"$PYTHON" "$interop_dir/backup-writes.py" 100 "$SIZE" 10 >cmds.rb
"$RT" io disk.qcow2 -f cmds.rb >/dev/null
"$RT" backup restore "repo:${ids[5]}" disk.qcow2 --force --json >rb.json
assert_eq rollback "$(jq -r .mode rb.json)" "rollback mode"
assert_same_file disk.raw snap.5
[ "$(jq '."untouched-bytes"' rb.json)" -gt $((SIZE / 4)) ] ||
  die "rollback rewrote too much: $(cat rb.json)"
# To a backup of an older chain (before the --full): what differs cannot
# be told, the whole disk is rewritten.
"$RT" backup restore "repo:${ids[3]}" disk.qcow2 --force --json >rb3.json
assert_same_file disk.raw snap.3
assert_eq 0 "$(jq '."untouched-bytes"' rb3.json)" "rollback across chains"
# The rollbacks were tracked: the next incremental captures them.
"$RT" backup create disk.qcow2 repo --json >out.8
"$RT" backup restore repo r.8.raw
assert_same_file r.8.raw snap.3
qcheck "repo/$(jq -r .id out.8).qcow2"

# A corrupted byte in a backup is found.
top="repo/${ids[6]}.qcow2"
cp "$top" top.saved
off="$(qemu-img map --output=json "$top" |
       jq '[.[] | select(.depth == 0 and .data == true and .offset != null)][0].offset')"
[ "$off" != null ] || die "no data extent in $top"
"$PYTHON" - "$top" "$off" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]) + 100)
    b = f.read(1)
    f.seek(int(sys.argv[2]) + 100)
    f.write(bytes([b[0] ^ 0x40]))
EOF
expect_exit 4 "$RT" backup verify repo
"$RT" backup verify repo --json >v.json || true
assert_eq false "$(jq .ok v.json)" "verify --json ok"
jq -r '.backups[].problems[]' v.json | grep -q "checksum mismatch" ||
  die "verify did not name the checksum mismatch: $(cat v.json)"
cp top.saved "$top"
"$RT" backup verify repo >/dev/null || die "verify after repair"

# A write behind rawtrack's back is found by verify --source.
"$PYTHON" - disk.raw <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(5 * 1024 * 1024 + 12345)
    f.write(b"behind-the-back")
EOF
"$RT" bitmap dump disk.qcow2 "$(jq -r .checkpoint out.8)" >dirty.txt
expect_exit 4 "$RT" backup verify repo --source disk.qcow2
"$RT" backup verify repo --source disk.qcow2 >vs.out || true
grep -q "offset 5242880 differs" vs.out || { cat vs.out >&2; die "verify --source did not name the cluster"; }

# prune: keep 3 of the newest chain (full 4, 5, 6, 7, 8).
n_before="$(jq length list.json)"
"$RT" backup prune repo --keep 3 --json >prune.json
"$RT" backup list repo --json >list2.json
assert_eq 3 "$(jq length list2.json)" "backups after prune"
assert_eq full "$(jq -r '.[0].type' list2.json)" "the oldest kept is full"
assert_eq "${ids[6]}" "$(jq -r '.[0].id' list2.json)" "the oldest kept"
for f in repo/*.qcow2; do qcheck "$f"; done
# 5 was compressed: the full folded from 4..6 is too.
assert_eq zstd "$(jq -r '.[0].compression' list2.json)" "folded compression"
qemu-img check --output=json "repo/${ids[6]}.qcow2" >chk.6 || true
[ "$(jq '."compressed-clusters" // 0' chk.6)" -gt 0 ] ||
  die "the folded full lost its compression: $(cat chk.6)"
"$RT" backup restore "repo:${ids[6]}" p.6.raw
assert_same_file p.6.raw snap.6
"$RT" backup restore "repo:${ids[7]}" p.7.raw
assert_same_file p.7.raw snap.7
"$RT" backup restore repo p.8.raw
assert_same_file p.8.raw snap.3
qemu-img compare -q -f qcow2 -F raw "repo/$(jq -r .id out.8).qcow2" snap.3 ||
  die "chain after prune differs through qemu-img"
"$RT" backup verify repo >/dev/null || die "verify after prune"
[ "$n_before" -gt 3 ]

# Bad input.
expect_fail "$RT" backup create missing.qcow2 repo
expect_exit 2 "$RT" backup create missing.qcow2 repo
expect_fail "$RT" backup restore repo:nosuch x.raw
expect_fail "$RT" backup list nosuchrepo
mkdir notarepo
expect_fail "$RT" backup list notarepo
expect_fail "$RT" backup prune repo
expect_fail "$RT" backup prune repo --keep 0
expect_fail "$RT" backup create disk.qcow2 repo --keep 2
expect_fail "$RT" backup create disk.qcow2 repo --bitmap x
echo '{"format": "rawtrack-backup-manifest", "version": 1' >repo/999999-x.json
expect_fail "$RT" backup list repo
err="$("$RT" backup list repo 2>&1 || true)"
echo "$err" | grep -q "999999-x.json" || die "bad manifest not named: $err"
rm repo/999999-x.json
ls repo/*.partial 2>/dev/null && die "partial files left"
echo "test-backup: ok"
