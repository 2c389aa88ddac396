#!/usr/bin/env bash
# test-backup-crash.sh: `backup create` and `backup prune` killed (SIGKILL)
# or failing with an injected I/O error at every step, then more writes and
# a new backup: nothing is lost.
#
# Steps (RAWTRACK_BACKUP_KILL_AT / RAWTRACK_BACKUP_FAIL_AT, see
# cli/backup-repo.c bk_step):
#   create: rotate (before the checkpoint rotation), rotated (after it),
#           read (reading the source), file-sync, file-rename,
#           manifest-sync, manifest-rename, dir-sync, committed (after the
#           manifest, before the frozen checkpoint is dropped), drop-frozen
#   prune:  prune-file, prune-journal, prune-committed, prune-apply-rename,
#           prune-apply-delete, prune-journal-drop
# After each interrupted run: the repository lists and its newest backups
# restore to the disk as it was at each; the next create (which
# recovers: partial files removed, an interrupted prune finished) gives a
# backup that restores byte for byte to the disk now, every file passes
# qemu-img check, no partial file is left, only one checkpoint bitmap of
# the repository remains, and verify is clean.  Also kill -9 from outside
# at random moments of a longer backup.
set -euo pipefail
# kill -9 does not depend on durability: work in memory where fsync is cheap.
if [ -z "${RAWTRACK_BACKUP_CRASH_DISK:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires python3 --version
requires jq --version

cd "$tmpdir"
export RAWTRACK_NO_PROGRESS=1
RT="$RAWTRACK"
MiB=$((1024 * 1024))
SIZE=$((24 * MiB))

truncate -s "$SIZE" disk.raw
"$RT" attach disk.raw disk.qcow2 --cluster-size 65536 >/dev/null
declare -A snap    # backup id -> snapshot file
seed=1

writes ()
{
  seed=$((seed + 1))
  "$PYTHON" "$SRCDIR/tests/interop/backup-writes.py" "$seed" "$SIZE" "${1:-12}" >cmds
  "$RT" io --track process disk.qcow2 -f cmds >/dev/null
}

good_backup ()
{
  "$RT" backup create disk.qcow2 repo --json >ok.json 2>ok.err ||
    { cat ok.err >&2; die "backup after $1 failed"; }
  local id
  id="$(jq -r .id ok.json)"
  cp --sparse=always disk.raw "snap.$id"
  snap[$id]="snap.$id"
  qcheck "repo/$id.qcow2"
  rm -f r.raw
  "$RT" backup restore repo r.raw
  assert_same_file r.raw "snap.$id"
  ls repo/*.partial >/dev/null 2>&1 && die "after $1: partial files left"
  [ -e repo/prune.journal ] && die "after $1: prune journal left"
  local n
  n="$("$RT" bitmap list disk.qcow2 | grep -c rawtrack-backup- || true)"
  assert_eq 1 "$n" "checkpoint bitmaps after $1"
}

# The repository lists, and the newest backups (the ones an interrupted
# run could have touched) restore to their snapshots.
all_restore ()
{
  local id
  "$RT" backup list repo --json >list.json || die "list after $1"
  for id in $(jq -r '.[-3:][].id' list.json); do
    rm -f r.raw
    "$RT" backup restore "repo:$id" r.raw || die "restore $id after $1"
    assert_same_file r.raw "${snap[$id]}"
  done
}

writes
good_backup start

create_steps="rotate rotated read file-sync file-rename manifest-sync manifest-rename dir-sync committed drop-frozen"
fail_steps="rotate read file-sync manifest-sync dir-sync drop-frozen"

for step in $create_steps; do
  writes
  st=0
  RAWTRACK_BACKUP_KILL_AT=$step "$RT" backup create disk.qcow2 repo >/dev/null 2>err || st=$?
  [ "$st" -eq 137 ] || { cat err >&2; die "kill at $step: exit $st, not killed"; }
  # A run killed after its manifest is a complete backup.
  if [ "$step" = committed ] || [ "$step" = drop-frozen ]; then
    id="$("$RT" backup list repo --json | jq -r '.[-1].id')"
    cp --sparse=always disk.raw "snap.$id"
    snap[$id]="snap.$id"
  fi
  all_restore "kill at $step"
  writes 6
  good_backup "kill at $step"
  echo "kill at $step: ok" >&2
done

for step in $fail_steps; do
  writes
  st=0
  RAWTRACK_BACKUP_FAIL_AT=$step "$RT" backup create disk.qcow2 repo >/dev/null 2>err || st=$?
  if [ "$step" = drop-frozen ]; then
    # The backup is complete; only the old checkpoint stays for next time.
    [ "$st" -eq 0 ] || { cat err >&2; die "fail at $step: exit $st"; }
    grep -q "could not remove the old checkpoint" err || die "no warning at $step"
    id="$("$RT" backup list repo --json | jq -r '.[-1].id')"
    cp --sparse=always disk.raw "snap.$id"
    snap[$id]="snap.$id"
  else
    [ "$st" -ne 0 ] && [ "$st" -lt 126 ] || { cat err >&2; die "fail at $step: exit $st"; }
    grep -q "injected I/O failure at step $step" err || { cat err >&2; die "fail at $step: no message"; }
    ls repo/*.partial >/dev/null 2>&1 && die "fail at $step: partial files left"
  fi
  all_restore "failure at $step"
  writes 6
  good_backup "failure at $step"
  echo "failure at $step: ok" >&2
done

# Two failed runs in a row, then a good one.
writes
RAWTRACK_BACKUP_FAIL_AT=read "$RT" backup create disk.qcow2 repo >/dev/null 2>&1 && die "no failure"
writes
RAWTRACK_BACKUP_KILL_AT=file-sync "$RT" backup create disk.qcow2 repo >/dev/null 2>&1 && die "no kill"
writes
good_backup "two failed runs"

# prune, interrupted at every step.
prune_steps="prune-file prune-journal prune-committed prune-apply-rename prune-apply-delete prune-journal-drop"
for step in $prune_steps; do
  for mode in KILL FAIL; do
    case "$mode:$step" in
      FAIL:prune-committed|FAIL:prune-apply-*|FAIL:prune-journal-drop) continue ;;
    esac
    writes
    good_backup "before prune"
    n="$("$RT" backup list repo --json | jq length)"
    st=0
    env "RAWTRACK_BACKUP_${mode}_AT=$step" "$RT" backup prune repo --keep $((n - 1)) >/dev/null 2>err || st=$?
    [ "$st" -ne 0 ] || { cat err >&2; die "prune $mode at $step succeeded"; }
    # Readable now, and every listed backup restores exactly.
    all_restore "prune $mode at $step"
    writes 6
    good_backup "prune $mode at $step"
    for f in repo/*.qcow2; do qcheck "$f"; done
    echo "prune $mode at $step: ok" >&2
  done
done
"$RT" backup prune repo --keep 2 >/dev/null
assert_eq 2 "$("$RT" backup list repo --json | jq length)" "after a clean prune"
all_restore "clean prune"

# kill -9 from outside at random moments of a longer backup.
for i in 1 2 3; do
  "$RT" io disk.qcow2 -c "write -P 0x$((i + 10)) 0 $SIZE" >/dev/null
  "$RT" backup create disk.qcow2 repo --compress >/dev/null 2>&1 &
  pid=$!
  sleep "0.0$((RANDOM % 9))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  writes 4
  good_backup "kill -9 from outside ($i)"
done

"$RT" backup verify repo >verify.out || { cat verify.out >&2; die "verify"; }
echo "test-backup-crash: ok"
