#!/usr/bin/env bash
# kill -9 during live backups (issue #15): of the backup client at every
# step of a live run (and at a random moment), and of the server while a
# view exists (and at a random moment); after each, more writes and
# another backup whose restore must equal the disk exactly - no change
# missed.  A server killed leaves a stale registry entry: the next backup
# then runs offline (and removes it).
# Rounds: RAWTRACK_LIVE_CRASH_ROUNDS (default 2; each is a few seconds).
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires nbdcopy --version
case "$("$RAWTRACK" serve --help)" in *--control*) ;; *)
  skip "this rawtrack serve has no --control (issue #15 server side)" ;; esac

cd "$tmpdir"
export RAWTRACK_NO_PROGRESS=1
mkdir -m 700 run
export XDG_RUNTIME_DIR=$tmpdir/run
rounds=${RAWTRACK_LIVE_CRASH_ROUNDS:-2}
MiB=$((1 << 20))
size=$((16 * MiB))
sock=$tmpdir/nbd.sock
ctl=$tmpdir/ctl.sock
uri="nbd+unix:///?socket=$sock"

truncate -s "$size" disk.raw
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null

srv=
start_server ()
{
  "$RAWTRACK" serve disk.qcow2 --socket "$sock" --control "$ctl" \
    --fleece-limit 100% 2>>serve.log &
  srv=$!
  wait_until 60 "the server answers on $sock" nbd_ready "$sock"
  wait_until 60 "the control socket answers" test -S "$ctl"
}
stop_server ()
{
  [ -n "$srv" ] || return 0
  kill "$srv" 2>/dev/null || true
  wait "$srv" 2>/dev/null || true
  srv=
}
kill9_server ()
{
  kill -9 "$srv"
  wait "$srv" 2>/dev/null || true
  srv=
}
cleanup_fn stop_server

# writes N: N random writes of random patterns (64 KiB .. 1 MiB) over NBD.
writes ()
{
  local i args=()
  for (( i = 0; i < $1; i++ )); do
    args+=(-c "write -P $((RANDOM % 255 + 1)) $(( (RANDOM % 240) * 65536 )) $(( (RANDOM % 16 + 1) * 65536 ))")
  done
  qemu-io -f raw "$uri" "${args[@]}" >/dev/null
}
stopped () { [ "$(ps -o stat= -p "$1" | cut -c1)" = T ]; }
# check WHAT: a backup now (live if the server runs), restore == the disk.
check ()
{
  local want=$tmpdir/want.raw
  if [ -n "$srv" ]; then nbdcopy "$uri" "$want"; else
    qemu-img convert -f qcow2 -O raw disk.qcow2 "$want"; fi
  "$RAWTRACK" backup create disk.qcow2 repo --json > last.json 2>>create.log ||
    die "$1: the backup after the crash failed (create.log)"
  rm -f restored.raw
  "$RAWTRACK" backup restore repo restored.raw 2>/dev/null
  cmp restored.raw "$want" || die "$1: the restore differs from the disk"
  echo "$progname: $1: $(json_get last.json 'j["mode"]') $(json_get last.json 'j["type"]'), restore exact"
}

start_server
writes 8
check "first"

for (( round = 1; round <= rounds; round++ )); do
  # The client killed at each step of a live run.
  for step in rotated published read file-sync committed drop-frozen; do
    writes 4
    expect_exit 137 env RAWTRACK_BACKUP_KILL_AT=$step \
      "$RAWTRACK" backup create disk.qcow2 repo
    writes 2
    check "round $round: client killed at $step"
  done
  # The client killed at a random moment.
  writes 6
  "$RAWTRACK" backup create disk.qcow2 repo >/dev/null 2>&1 &
  bk=$!
  sleep "0.$((RANDOM % 5))$((RANDOM % 10))"
  kill -9 "$bk" 2>/dev/null || true
  wait "$bk" 2>/dev/null || true
  writes 2
  check "round $round: client killed at random"

  # The server killed while a view exists: the client fails, nothing lost.
  writes 4
  RAWTRACK_BACKUP_STOP_AT=published \
    "$RAWTRACK" backup create disk.qcow2 repo >/dev/null 2>>create.log &
  bk=$!
  wait_until 120 "the backup stops after its checkpoint" stopped "$bk"
  writes 2                     # copy-before-write in the view
  kill9_server
  kill -CONT "$bk"
  if wait "$bk"; then die "a live backup whose server died succeeded"; fi
  # No server: the stale registry entry is ignored, the backup is offline.
  check "round $round: server killed during a view, then offline"
  json_expect last.json 'j["mode"]' offline
  [ -z "$(ls run/rawtrack/ 2>/dev/null)" ] || die "stale registry entry left"
  start_server
  writes 3
  check "round $round: server restarted"

  # The server killed at a random moment of a live backup.
  writes 6
  "$RAWTRACK" backup create disk.qcow2 repo >/dev/null 2>&1 &
  bk=$!
  sleep "0.$((RANDOM % 5))$((RANDOM % 10))"
  kill9_server
  wait "$bk" 2>/dev/null || true
  start_server
  writes 2
  check "round $round: server killed at random"
done
stop_server
# kill -9 of the server may leak a cluster (as in QEMU: harmless, what
# test-kill9 allows too); nothing worse.
st=0; qemu-img check -q disk.qcow2 || st=$?
[ "$st" = 0 ] || [ "$st" = 3 ] || die "qemu-img check of the image: exit $st"
for f in repo/*.qcow2; do qemu-img check -q "$f" || die "$f: qemu-img check"; done
"$RAWTRACK" backup verify repo >/dev/null || die "backup verify"
echo "$progname: ok ($rounds rounds)"
