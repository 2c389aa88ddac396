#!/usr/bin/env bash
# test-backup-nbd.sh: `rawtrack backup create` from NBD sources.
#
#  1. qemu-nbd -B: a full backup, then incrementals driven by the caller's
#     checkpoints (qemu-img bitmap --add before each backup, --bitmap the
#     previous one), over 1 and 4 connections (multi-conn); each restores
#     byte for byte to a copy of the disk taken at that moment and its
#     chain top equals that copy through qemu-img compare; qemu-img check
#     is clean on every file.
#  2. rawtrack serve: writes through the server (qemu-io over NBD), then a
#     full and an incremental with --bitmap from the live server.
#  3. A disk that grew (data written past the old end before the bitmap
#     existed is still copied) and one that shrank: full backups (only the
#     size is visible over NBD); one cut and grown back to the same size
#     between two incrementals: the cut area, holes now, backed up as zeros.
#     Then verify --source over the qemu-nbd -B export: clean, and a
#     write made behind the bitmaps' back is found.
#  4. Errors: a bitmap the server does not export, an unreachable server.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires python3 --version
requires jq --version

cd "$tmpdir"
export RAWTRACK_NO_PROGRESS=1
RT="$RAWTRACK"
MiB=$((1024 * 1024))
sock="$tmpdir/nbd.sock"
uri="nbd+unix:///?socket=$sock"
qpid=

start_qemu_nbd ()   # IMAGE BITMAP
{
  rm -f "$sock"
  qemu-nbd -r -t -e 8 -f qcow2 ${2:+-B "$2"} -k "$sock" "$1" &
  qpid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.05; done
  die "qemu-nbd did not start"
}
stop_qemu_nbd ()
{
  [ -n "$qpid" ] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null || true
  qpid=
}
cleanup_fn stop_qemu_nbd

# qio IMAGE SEED COUNT: random writes through qemu-io.
qio ()
{
  "$PYTHON" "$interop_dir/backup-writes.py" "$2" "$(qemu-img info --output=json "$1" | jq '."virtual-size"')" "$3" >q.cmds
  local args=()
  while read -r line; do args+=(-c "$line"); done <q.cmds
  qemu-io -f qcow2 "${args[@]}" "$1" >/dev/null
}

# check_backup ID SNAPSHOT
check_backup ()
{
  qcheck "repo/$1.qcow2"
  qemu-img compare -q -f qcow2 -F raw "repo/$1.qcow2" "$2" ||
    die "backup $1 differs from $2 through qemu-img"
  rm -f restored.raw
  "$RT" backup restore "repo:$1" restored.raw
  assert_same_file restored.raw "$2"
}

# ---- 1. qemu-nbd -B --------------------------------------------------------
qemu-img create -q -f qcow2 disk.qcow2 $((40 * MiB + 512))
qio disk.qcow2 1 30
qemu-img bitmap --add disk.qcow2 b0
start_qemu_nbd disk.qcow2 b0
"$RT" backup create "$uri" repo --json --bitmap b0 >o1.json
stop_qemu_nbd
assert_eq full "$(jq -r .type o1.json)" "first NBD backup"
qemu-img convert -O raw disk.qcow2 s1.raw
check_backup "$(jq -r .id o1.json)" s1.raw

prev=b0
for round in 2 3 4; do
  qio disk.qcow2 "$round" 25
  qemu-img bitmap --add disk.qcow2 "b$round"      # the next checkpoint
  start_qemu_nbd disk.qcow2 "$prev"
  conns=$(( round == 3 ? 4 : 1 ))
  "$RT" backup create "$uri" repo --json --bitmap "$prev" --connections $conns >o$round.json
  stop_qemu_nbd
  assert_eq incremental "$(jq -r .type o$round.json)" "round $round type"
  [ "$(jq '."read-bytes"' o$round.json)" -lt $((30 * MiB)) ] ||
    die "round $round read too much: $(cat o$round.json)"
  qemu-img convert -O raw disk.qcow2 s$round.raw
  check_backup "$(jq -r .id o$round.json)" s$round.raw
  prev="b$round"
done
# The earlier ones still restore.
check_backup "$(jq -r .id o2.json)" s2.raw
"$RT" backup verify repo >/dev/null || die "verify"

# verify --source over NBD: the clusters clean in the bitmap equal the
# chain (tracked writes since are skipped); a write behind the bitmaps'
# back is found.  41 MiB disk = 641 clusters: every clean one is compared.
qio disk.qcow2 9 10                               # tracked by b4
start_qemu_nbd disk.qcow2 b4
"$RT" backup verify repo --source "$uri" --bitmap b4 --json >v1.json ||
  die "verify --source NBD: $(cat v1.json)"
[ "$(jq '.source."sampled-clusters"' v1.json)" -gt 100 ] || die "verify sampled: $(cat v1.json)"
# Without --bitmap: the one the latest backup was read with (b3, a
# superset of b4's changes).
stop_qemu_nbd
start_qemu_nbd disk.qcow2 b3
"$RT" backup verify repo --source "$uri" >/dev/null || die "verify --source NBD, default bitmap"
stop_qemu_nbd
expect_fail "$RT" backup verify repo --bitmap b4            # --bitmap needs --source
expect_fail "$RT" backup verify repo --source disk.qcow2 --bitmap b4
qemu-img bitmap --disable disk.qcow2 b3
qemu-img bitmap --disable disk.qcow2 b4
bypass=()
for mib in $(seq 0 39); do bypass+=(-c "write -P 0x7e $((mib * MiB + 4096)) 512"); done
qemu-io -f qcow2 "${bypass[@]}" disk.qcow2 >/dev/null
start_qemu_nbd disk.qcow2 b4
expect_exit 4 "$RT" backup verify repo --source "$uri" --bitmap b4
"$RT" backup verify repo --source "$uri" --bitmap b4 --json >v2.json || true
jq -r '.source.problems[]' v2.json >v2.txt
grep -q "bypassed tracking" v2.txt || die "bypass not found: $(cat v2.json)"
stop_qemu_nbd

# A bitmap the server does not have, a server that is not there.
start_qemu_nbd disk.qcow2 b4
expect_fail "$RT" backup create "$uri" repo --bitmap nosuch
stop_qemu_nbd
expect_exit 2 "$RT" backup create "nbd+unix:///?socket=$tmpdir/none.sock" repo

# ---- 2. rawtrack serve --------------------------------------------------------
truncate -s $((32 * MiB)) live.raw
"$RT" attach live.raw live.qcow2 --cluster-size 65536 >/dev/null
"$RT" bitmap add live.qcow2 since-full
# shellcheck disable=SC2016
"$RT" serve live.qcow2 --run '
  set -e
  qemu-io -f raw -c "write -P 0x31 1M 3M" -c "write -P 0x32 20M 64k" "$uri" >/dev/null
  "$RAWTRACK" backup create "$uri" repo2 --json >p1.json
  nbdcopy "$uri" t1.raw
  qemu-io -f raw -c "write -P 0x33 2M 100k" -c "write -z 20M 64k" -c "write -P 0x34 31M 1M" "$uri" >/dev/null
  "$RAWTRACK" backup create "$uri" repo2 --json --bitmap since-full --connections 2 >p2.json
  nbdcopy "$uri" t2.raw
'
assert_eq full "$(jq -r .type p1.json)" "serve: first"
assert_eq incremental "$(jq -r .type p2.json)" "serve: second"
[ "$(jq '."read-bytes"' p2.json)" -lt $((8 * MiB)) ] || die "serve incremental read too much"
for n in 1 2; do
  id="$(jq -r .id p$n.json)"
  qcheck "repo2/$id.qcow2"
  qemu-img compare -q -f qcow2 -F raw "repo2/$id.qcow2" t$n.raw || die "serve backup $n"
  rm -f restored.raw
  "$RT" backup restore "repo2:$id" restored.raw
  assert_same_file restored.raw t$n.raw
done

# ---- 3. a disk that grows and shrinks -------------------------------------------
qemu-img create -q -f qcow2 g.qcow2 $((16 * MiB))
qemu-io -f qcow2 -c "write -P 0x41 0 16M" g.qcow2 >/dev/null
start_qemu_nbd g.qcow2
"$RT" backup create "$uri" repo3 --json >g1.json
stop_qemu_nbd
qemu-img convert -O raw g.qcow2 g1.raw
# Grow to 24 MiB; data past the old end written before the bitmap exists.
qemu-img resize -q g.qcow2 $((24 * MiB))
qemu-io -f qcow2 -c "write -P 0x42 18M 1M" g.qcow2 >/dev/null
qemu-img bitmap --add g.qcow2 g
qemu-io -f qcow2 -c "write -P 0x43 1M 64k" -c "write -P 0x44 22M 64k" g.qcow2 >/dev/null
start_qemu_nbd g.qcow2 g
"$RT" backup create "$uri" repo3 --json --bitmap g >g2.json
stop_qemu_nbd
# Only the size is visible over NBD: where the disk may have been cut in
# between cannot be, so a size change gives a full backup.
assert_eq full "$(jq -r .type g2.json)" "grown: full"
qemu-img convert -O raw g.qcow2 g2.raw
(cd repo3 && qemu-img check -q "$(jq -r .id ../g2.json).qcow2")
qemu-img compare -q -f qcow2 -F raw "repo3/$(jq -r .id g2.json).qcow2" g2.raw || die "grown"
rm -f restored.raw
"$RT" backup restore repo3 restored.raw
assert_same_file restored.raw g2.raw
# Shrink to 8 MiB.
qemu-img bitmap --remove g.qcow2 g
qemu-img resize -q --shrink g.qcow2 $((8 * MiB))
qemu-img bitmap --add g.qcow2 h
qemu-io -f qcow2 -c "write -P 0x45 3M 64k" g.qcow2 >/dev/null
start_qemu_nbd g.qcow2 h
"$RT" backup create "$uri" repo3 --json --bitmap h >g3.json
stop_qemu_nbd
qemu-img convert -O raw g.qcow2 g3.raw
assert_eq $((8 * MiB)) "$(jq '."virtual-size"' g3.json)" "shrunk size"
assert_eq full "$(jq -r .type g3.json)" "shrunk: full"
qcheck "repo3/$(jq -r .id g3.json).qcow2"
qemu-img compare -q -f qcow2 -F raw "repo3/$(jq -r .id g3.json).qcow2" g3.raw || die "shrunk"
rm -f restored.raw
"$RT" backup restore repo3 restored.raw
assert_same_file restored.raw g3.raw
# Cut to 2 MiB and grown back to 8 between two backups: the same size,
# the caller's bitmap marks nothing past 2 MiB, qemu-nbd reports the
# regrown area as holes while the chain holds data there: backed up as
# zeros in an incremental.
qemu-img bitmap --remove g.qcow2 h
qemu-img bitmap --add g.qcow2 i
qemu-io -f qcow2 -c "write -P 0x46 0 8M" g.qcow2 >/dev/null
start_qemu_nbd g.qcow2 i
"$RT" backup create "$uri" repo3 --json --bitmap i >g4.json
stop_qemu_nbd
qemu-img bitmap --remove g.qcow2 i
qemu-img resize -q --shrink g.qcow2 $((2 * MiB))
qemu-img resize -q g.qcow2 $((8 * MiB))
qemu-img bitmap --add g.qcow2 j
qemu-io -f qcow2 -c "write -P 0x47 1M 64k" g.qcow2 >/dev/null
start_qemu_nbd g.qcow2 j
"$RT" backup create "$uri" repo3 --json --bitmap j >g5.json 2>g5.err
stop_qemu_nbd
assert_eq incremental "$(jq -r .type g5.json)" "regrown: incremental"
grep -q "$((6 * MiB)) bytes read as zeros" g5.err || die "regrown: $(cat g5.err)"
qemu-img convert -O raw g.qcow2 g5.raw
qcheck "repo3/$(jq -r .id g5.json).qcow2"
rm -f restored.raw
"$RT" backup restore repo3 restored.raw
assert_same_file restored.raw g5.raw
# And the grown one still restores from the same chain.
rm -f restored.raw
"$RT" backup restore "repo3:$(jq -r .id g2.json)" restored.raw
assert_same_file restored.raw g2.raw
"$RT" backup verify repo3 >/dev/null || die "verify repo3"
echo "test-backup-nbd: ok"
