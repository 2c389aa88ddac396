#!/usr/bin/env bash
# rawtrack - image locking against QEMU, both ways.  A read-write rawtrack
# handle takes QEMU's lock bytes (lib/io/io-file-lock.c), so while it has
# an image open QEMU's writers (qemu-io, qemu-img bitmap) and its locking
# readers (qemu-img info without -U) are refused, and while QEMU has it
# open (qemu-nbd, read-write or read-only) rawtrack's writers are refused,
# with a message that says why.  Read-only rawtrack commands work through
# all of it; kill -9 leaves no lock behind; a second rawtrack writer is
# refused, and so are attach --force and create --force over an image or
# data file in use; RAWTRACK_NO_LOCK=1 turns locking off.  Every step that must be
# refused must also leave the data untouched: checked at the end.
set -euo pipefail
source "${SRCDIR:-$(dirname "$0")/../..}/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version

cd "$tmpdir"
truncate -s 64M disk.raw
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null
"$RAWTRACK" bitmap add disk.qcow2 b0

# expect_refused WHAT-TO-FIND CMD...: CMD fails cleanly, saying WHAT.
expect_refused ()
{
  local want="$1" out st=0
  shift
  out="$("$@" 2>&1)" || st=$?
  echo "$out" >&2
  [ "$st" -ne 0 ] || die "expected a refusal, but it succeeded: $*"
  [ "$st" -lt 126 ] || die "exit $st (crash?): $*"
  grep -qF -- "$want" <<<"$out" || die "no '$want' in the refusal of: $*"
}

# The lock bytes held on FILE, from /proc/locks, as "100 101 ...".
lock_bytes ()
{
  local ino
  ino="$(stat -c %i "$1")"
  awk -v ino="$ino" '$2 == "OFDLCK" { split ($6, a, ":"); if (a[3] == ino)
                     for (b = $7; b <= $8; b++) print b }' /proc/locks |
    sort -n | tr '\n' ' ' | sed 's/ $//'
}

# --- rawtrack writes; QEMU must keep out ----------------------------------
mkfifo ctl
"$RAWTRACK" io disk.qcow2 <ctl >io.out 2>&1 &
iopid=$!
cleanup_fn kill -9 "$iopid"
exec 3>ctl
echo "write -P 0x11 0 64k" >&3
wait_until 120 "rawtrack io did not write" \
  grep -q "^wrote 65536/65536" io.out

# A VM's bytes for a writer of a qcow2 image with a data file: on the data
# file it denies write too (201; qemu-io/qemu-nbd, which share write at
# the top, would hold only 203) - see test-datafile-lock.sh.
[ "$(lock_bytes disk.qcow2)" = "100 101 103 201 203" ] ||
  die "image lock bytes: '$(lock_bytes disk.qcow2)'"
[ "$(lock_bytes disk.raw)" = "100 101 103 201 203" ] ||
  die "data file lock bytes: '$(lock_bytes disk.raw)'"

expect_refused 'Failed to get "write" lock' qemu-io -c 'write 0 4k' disk.qcow2
expect_refused 'Failed to get shared "write" lock' qemu-img info disk.qcow2
expect_refused 'lock' qemu-img bitmap --add disk.qcow2 q1
# (resize needs write first, and write on the data file is denied too)
expect_refused 'Failed to get "write" lock' qemu-img resize -f raw disk.raw 128M
expect_ok qemu-img info -U disk.qcow2
# A second rawtrack writer, and rawtrack's writing commands.
expect_refused "QEMU's image lock" "$RAWTRACK" io disk.qcow2 -c 'write 0 4k'
expect_refused "QEMU's image lock" "$RAWTRACK" bitmap add disk.qcow2 r1
# Replacing the image under a writer would leave it writing a deleted file.
expect_refused "not replaced" "$RAWTRACK" attach --force disk.raw disk.qcow2
# Readers take no lock.
expect_ok "$RAWTRACK" info disk.qcow2
expect_ok "$RAWTRACK" bitmap list disk.qcow2

# kill -9 leaves nothing behind: the locks go with the process.
kill -9 "$iopid"
wait "$iopid" 2>/dev/null || true
exec 3>&-
[ -z "$(lock_bytes disk.qcow2)$(lock_bytes disk.raw)" ] ||
  die "locks left after kill -9"
expect_ok qemu-io -c 'write -P 0x22 64k 64k' disk.qcow2

# --- QEMU has it open; rawtrack must keep out ------------------------------
for mode in rw ro; do
  args=()
  [ "$mode" = ro ] && args=(-r)
  qemu-nbd "${args[@]}" --fork --pid-file "qnbd.$mode.pid" -k "$tmpdir/nbd.sock" \
    -f qcow2 disk.qcow2
  qpid="$(cat "qnbd.$mode.pid")"
  cleanup_fn kill "$qpid"
  expect_refused "QEMU's image lock" "$RAWTRACK" io disk.qcow2 -c 'write 0 4k'
  expect_refused "QEMU's image lock" "$RAWTRACK" bitmap add disk.qcow2 r2
  expect_ok "$RAWTRACK" info disk.qcow2
  if [ "$mode" = rw ]; then
    # create --force would truncate the data file QEMU is using.
    expect_refused "data file" "$RAWTRACK" create --force \
      --data-file disk.raw other.qcow2 1M
    [ ! -e other.qcow2 ] || die "create went ahead"
    expect_refused "not replaced" "$RAWTRACK" attach --force disk.raw disk.qcow2
  fi
  if [ "$mode" = ro ]; then
    # Locking off: the writer goes ahead (harmless here: QEMU only reads).
    expect_ok env RAWTRACK_NO_LOCK=1 "$RAWTRACK" io disk.qcow2 \
      -c 'write -P 0x33 128k 64k'
  fi
  # Gone for certain before the next round and the checks below open the
  # image: its locks go with it.
  kill "$qpid"
  wait_gone "$qpid" "qemu-nbd did not exit after SIGTERM"
done

# --- nothing refused touched anything ---------------------------------------
expect_ok "$RAWTRACK" io disk.qcow2 -c 'read -P 0x11 0 64k' \
  -c 'read -P 0x22 64k 64k' -c 'read -P 0x33 128k 64k' -c 'read -P 0 192k 64k'
expect_ok qemu-io -c 'read -P 0x11 0 64k' -c 'read -P 0x33 128k 64k' disk.qcow2
[ "$(stat -c %s disk.raw)" = $((64 << 20)) ] || die "the data file was resized"
names="$("$RAWTRACK" bitmap list disk.qcow2)"
grep -qw b0 <<<"$names" || die "bitmap b0 lost"
! grep -qwE 'q1|r1|r2' <<<"$names" || die "a refused bitmap add happened: $names"
qcheck disk.qcow2
echo "$progname: OK"
