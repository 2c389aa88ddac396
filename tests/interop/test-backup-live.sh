#!/usr/bin/env bash
# Live backups through `rawtrack serve --control` (issue #15), end to end
# through `rawtrack backup create IMAGE REPO`:
#
#  1. The registry: backup create finds the server from the image alone and
#     goes live (--json says so); --offline is refused by the image lock
#     with a hint; --control PATH works too.
#  2. Point in time: the disk full of pattern A, a live full backup stopped
#     right after its checkpoint (RAWTRACK_BACKUP_STOP_AT=published) while
#     the whole disk is overwritten with B over NBD by four qemu-io
#     processes at once; continued: the restore is exactly A, and the
#     copy-before-write saved the whole disk; the next incremental's
#     restore is exactly B.
#  3. Racing writes: fio random writes with verify race a live full and
#     incremental backup; each restore equals the disk at its checkpoint
#     (read through NBD while the backup was stopped at the checkpoint).
#  4. Real clients on the point-in-time export: nbdcopy, qemu-img convert
#     and nbdinfo --map read what rawtrack's own backup of it holds.
#  5. A failed live backup (injected read failure) gives its changes back:
#     the next backup restores exactly.
# kill -9 of the client and of the server: test-backup-live-crash.sh.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires nbdcopy --version
requires fio --version
case "$("$RAWTRACK" serve --help)" in *--control*) ;; *)
  skip "this rawtrack serve has no --control (issue #15 server side)" ;; esac

cd "$tmpdir"
export RAWTRACK_NO_PROGRESS=1
mkdir -m 700 run
export XDG_RUNTIME_DIR=$tmpdir/run
MiB=$((1 << 20))
size=$((32 * MiB))
sock=$tmpdir/nbd.sock
ctl=$tmpdir/ctl.sock
uri="nbd+unix:///?socket=$sock"

truncate -s "$size" disk.raw
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null

srv=
start_server ()
{
  "$RAWTRACK" serve disk.qcow2 --socket "$sock" --control "$ctl" \
    --fleece-limit 100% \
    2>>serve.log &
  srv=$!
  wait_until 60 "the server answers on $sock" nbd_ready "$sock"
  wait_until 60 "the control socket appears" test -S "$ctl"
}
stop_server ()
{
  [ -n "$srv" ] || return 0
  kill "$srv" 2>/dev/null || true
  wait "$srv" 2>/dev/null || true
  srv=
}
cleanup_fn stop_server
start_server

# fill BYTE: the whole disk written with BYTE through NBD, by four qemu-io
# processes (four connections) at once.
fill ()
{
  local q=$((size / 4)) i pids=()
  for i in 0 1 2 3; do
    qemu-io -f raw "$uri" -c "write -P $1 $((i * q)) $q" >/dev/null &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || die "qemu-io fill $1 failed"; done
}
# snapshot FILE: the disk as the server serves it now.
snapshot () { nbdcopy "$uri" "$1"; }
# stopped PID: the process is stopped (SIGSTOP at a step).
stopped () { [ "$(ps -o stat= -p "$1" | cut -c1)" = T ]; }
# restore_is REPO[:ID] FILE WHAT
restore_is ()
{
  rm -f restored.raw
  "$RAWTRACK" backup restore "$1" restored.raw >/dev/null
  cmp restored.raw "$2" || die "$3: the restore differs from the disk"
}

# ---- 0. a live full backup of a sparse disk reads only its data ----------------
qemu-io -f raw "$uri" -c "write -P 0x5e 3M 1M" >/dev/null
"$RAWTRACK" backup create disk.qcow2 repo-sparse --json > sparse.json
json_expect sparse.json 'j["mode"]' live 'j["read-bytes"]' $((1 << 20))
rm -rf repo-sparse

# ---- 1. the registry -----------------------------------------------------------
fill 0xaa
snapshot A.raw
ls run/rawtrack/*.json >/dev/null 2>&1 || die "serve wrote no registry entry"
"$RAWTRACK" backup create disk.qcow2 repo0 --json > r1.json
json_expect r1.json 'j["mode"]' live 'j["type"]' full
restore_is repo0 A.raw "registry full"
expect_fail "$RAWTRACK" backup create disk.qcow2 repo0 --offline 2> off.err
grep -q -- "--control" off.err || die "offline on a served image: no hint"
"$RAWTRACK" backup create disk.qcow2 repo0 --control "$ctl" --json > r2.json
json_expect r2.json 'j["mode"]' live 'j["type"]' incremental \
  'j["read-bytes"]' 0
expect_fail "$RAWTRACK" backup create disk.qcow2 repo0 --control \
  "$tmpdir/nothing.sock" 2> noctl.err
grep -q "nothing.sock" noctl.err || die "a missing control socket unnamed"

# ---- 2. point in time: A backed up while B overwrites everything ------------------
RAWTRACK_BACKUP_STOP_AT=published \
  "$RAWTRACK" backup create disk.qcow2 repo --json > pit.json &
bk=$!
wait_until 120 "the backup stops after its checkpoint" stopped "$bk"
fill 0xbb
snapshot B.raw
kill -CONT "$bk"
wait "$bk" || die "the live full backup failed"
json_expect pit.json 'j["mode"]' live 'j["type"]' full "j['cbw-bytes']" "$size"
restore_is repo A.raw "point in time: the full"
"$RAWTRACK" backup create disk.qcow2 repo --json > inc.json
json_expect inc.json 'j["mode"]' live 'j["type"]' incremental
restore_is repo B.raw "point in time: the incremental"
for f in repo/*.qcow2; do qemu-img check -q "$f" || die "$f: qemu-img check"; done

# ---- 3. random writes racing the copy (fio verify) -----------------------------------
race ()                        # race TAG: one live backup racing fio
{
  RAWTRACK_BACKUP_STOP_AT=published \
    "$RAWTRACK" backup create disk.qcow2 repo --json > "race-$1.json" &
  bk=$!
  wait_until 120 "the backup stops after its checkpoint" stopped "$bk"
  snapshot "at-$1.raw"
  kill -CONT "$bk"
  fio --name=race --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
    --iodepth=8 --numjobs=2 --size=$((size / 2)) \
    --offset_increment=$((size / 2)) --io_size=$((4 * MiB)) \
    --verify=crc32c --randseed="$RANDOM" --group_reporting \
    --output=fio-$1.txt || die "fio verify failed (race $1)"
  wait "$bk" || die "the live backup racing fio failed ($1)"
  restore_is repo "at-$1.raw" "racing writes ($1)"
}
race 1
race 2
snapshot now.raw
"$RAWTRACK" backup create disk.qcow2 repo >/dev/null
restore_is repo now.raw "after the races"

# ---- 4. real clients on the point-in-time export --------------------------------------
# stop_at_published ARGS...: a live backup, stopped once its PIT export is
# published; sets bk (its pid) and puri (the PIT export's URI).
stop_at_published ()
{
  RAWTRACK_BACKUP_STOP_AT=published \
    "$RAWTRACK" backup create disk.qcow2 repo "$@" &
  bk=$!
  wait_until 120 "the backup stops after its checkpoint" stopped "$bk"
  local pit
  pit=$(nbdinfo --list --json "$uri" | "$PYTHON" -c '
import json, sys
for e in json.load(sys.stdin)["exports"]:
    if "@" in e["export-name"]:
        print(e["export-name"])' | head -1)
  [ -n "$pit" ] || die "no point-in-time export listed"
  puri="nbd+unix:///$pit?socket=$sock"
}
# A full view: the whole disk as it was, whatever the guest writes since.
qemu-io -f raw "$uri" -c "write -P 0xcc 1M 3M" -c "write -z 8M 2M" >/dev/null
snapshot pit.raw
stop_at_published --full --json > peer.json
qemu-io -f raw "$uri" -c "write -P 0xdd 0 $size" >/dev/null     # after it
nbdcopy "$puri" peer-nbdcopy.raw
qemu-img convert -f raw -O raw "$puri" peer-convert.raw
kill -CONT "$bk"
wait "$bk" || die "the live backup read by peers failed"
json_expect peer.json 'j["type"]' full 'j["mode"]' live
cmp peer-nbdcopy.raw pit.raw || die "nbdcopy of the PIT export != the disk at the checkpoint"
cmp peer-convert.raw pit.raw || die "qemu-img convert of the PIT export differs"
restore_is repo pit.raw "the backup read beside nbdcopy and qemu-img"
# An incremental view: what its frozen bitmap marks (nbdinfo --map) is
# exactly what the backup copies, and the dirty extents read the same
# through nbdcopy as in the restored backup.
"$RAWTRACK" backup create disk.qcow2 repo >/dev/null     # takes in the 0xdd
prev=$("$RAWTRACK" backup list repo --json |
       "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)[-1]["checkpoint"])')
qemu-io -f raw "$uri" -c "write -P 0x11 2M 1M" -c "write -P 0x12 20M 192k" \
  -c "write -z 30M 64k" >/dev/null
snapshot pit2.raw
stop_at_published --json > peer2.json
qemu-io -f raw "$uri" -c "write -P 0x13 0 $size" >/dev/null     # after it
nbdinfo --map="qemu:dirty-bitmap:$prev" "$puri" > peer-map.txt
nbdcopy "$puri" peer2-nbdcopy.raw
kill -CONT "$bk"
wait "$bk" || die "the live incremental read by peers failed"
json_expect peer2.json 'j["type"]' incremental 'j["mode"]' live
restore_is repo pit2.raw "the incremental read beside nbdinfo"
"$PYTHON" - peer-map.txt peer2.json peer2-nbdcopy.raw pit2.raw <<'EOF' ||
import json, sys
dirty = []
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) >= 3 and f[2] == "1":
        dirty.append((int(f[0]), int(f[1])))
total = sum(n for _, n in dirty)
j = json.load(open(sys.argv[2]))
if total != 1024 * 1024 + 192 * 1024 + 64 * 1024 or \
   total != j["considered-bytes"]:
    sys.exit(f"map dirty {total} != considered {j['considered-bytes']}")
a, b = open(sys.argv[3], "rb"), open(sys.argv[4], "rb")
for off, n in dirty:
    a.seek(off); b.seek(off)
    if a.read(n) != b.read(n):
        sys.exit(f"nbdcopy differs in the dirty extent at {off}")
EOF
  die "nbdinfo --map / nbdcopy of the incremental view disagree with the backup"

# ---- 5. a failed live backup loses nothing -----------------------------------------------
snapshot before-fail.raw
qemu-io -f raw "$uri" -c "write -P 0xee 5M 1M" >/dev/null
snapshot after-fail.raw
expect_exit 2 env RAWTRACK_BACKUP_FAIL_AT=read \
  "$RAWTRACK" backup create disk.qcow2 repo
"$RAWTRACK" backup create disk.qcow2 repo > /dev/null
restore_is repo after-fail.raw "after a failed live backup"
"$RAWTRACK" backup verify repo >/dev/null || die "backup verify"
stop_server
qemu-img check -q disk.qcow2 || die "the image after the live backups"
echo "$progname: ok"
