#!/usr/bin/env bash
# test-datafile-refuse.sh: a hostile image cannot point rawtrack at
# anything but a plain file (or a block device the user named).
#
#  - data file on procfs (/proc/self/mem, /proc/self/environ): refused by
#    cat, check, io (rw and read-only), serve (rw and read-only), nothing
#    of the process's memory or environment comes out (issue 14 item 1);
#  - character devices (/dev/zero, /dev/null): refused, also when the
#    user names them with --data-file;
#  - a FIFO: refused at once, never a hang in open(2) (item 2; every
#    command runs under `timeout`, and 124 is a failure);
#  - a block device named only by the header: refused unless
#    --allow-device (or --data-file names it).
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires timeout --version

cd "$tmpdir"
truncate -s 4M disk.raw
write_pattern disk.raw 0 65536 0x5a

# mkimg NAME TARGET: a container whose header names TARGET as data file.
mkimg ()
{
  # (create makes its data file anew: a scratch one, renamed by amend)
  qemu-img create -q -f qcow2 -o data_file=scratch.raw,data_file_raw=on "$1" 4M
  qemu-img amend -o data_file="$2" "$1" 2>/dev/null ||
    hard_error "qemu-img amend -o data_file=$2 failed"
}

# refused WHAT-IN-MESSAGE CMD...: CMD fails cleanly (a hang is killed after
# 60 s: generous, for sanitizer builds on a loaded machine) and says
# WHAT-IN-MESSAGE on stderr; its stdout must be empty.
refused ()
{
  local want="$1" st=0; shift
  timeout 60 "$@" >out.txt 2>err.txt </dev/null || st=$?
  cat err.txt >&2
  [ "$st" -ne 124 ] || die "hung (killed after 60 s): $*"
  [ "$st" -ne 0 ] || die "expected a refusal, but succeeded: $*"
  [ "$st" -lt 126 ] || die "exit status $st (crash?): $*"
  grep -q -- "$want" err.txt || die "message lacks '$want': $*"
  [ ! -s out.txt ] || die "printed data although refused: $*"
}

# every_command IMAGE WHAT-IN-MESSAGE [OPTIONS]: all commands that open
# the data file refuse it.
every_command ()
{
  local img="$1" want="$2"; shift 2
  refused "$want" "$RAWTRACK" cat "$img" "$@"
  refused "$want" "$RAWTRACK" check "$img" "$@"
  refused "$want" "$RAWTRACK" io "$img" -c 'read 0 4k' "$@"
  refused "$want" "$RAWTRACK" io --read-only "$img" -c 'read 0 4k' "$@"
  refused "$want" "$RAWTRACK" serve "$img" --socket "$tmpdir/s" "$@"
  refused "$want" "$RAWTRACK" serve -r "$img" --socket "$tmpdir/s" "$@"
  assert_absent "$tmpdir/s"
}

# 1. procfs.
for t in /proc/self/mem /proc/self/environ; do
  mkimg proc.qcow2 "$t"
  every_command proc.qcow2 "on the proc pseudo file system"
  # Named by the user, the answer is the same: no flag opens procfs.
  refused "pseudo file system" "$RAWTRACK" cat proc.qcow2 --data-file "$t"
  refused "pseudo file system" "$RAWTRACK" cat proc.qcow2 --allow-device
  rm -f proc.qcow2
done
# And sysfs, where it is there.
if [ -r /sys/kernel/mm/transparent_hugepage/enabled ]; then
  mkimg sys.qcow2 /sys/kernel/mm/transparent_hugepage/enabled
  refused "on the sysfs pseudo file system" "$RAWTRACK" cat sys.qcow2
fi

# 2. character devices, named by the header or by the user.
for t in /dev/zero /dev/null; do
  mkimg chr.qcow2 "$t"
  every_command chr.qcow2 "a character device: refusing it"
  refused "a character device" "$RAWTRACK" cat chr.qcow2 --allow-device
  refused "a character device" "$RAWTRACK" cat chr.qcow2 --data-file "$t"
  rm -f chr.qcow2
done

# 3. a FIFO, with and without a writer waiting at the other end.
mkfifo pipe
mkimg fifo.qcow2 "$tmpdir/pipe"
every_command fifo.qcow2 "a FIFO (named pipe): refusing it"
refused "a FIFO" "$RAWTRACK" cat fifo.qcow2 --data-file pipe

# 4. a block device named by the header needs --allow-device.
if mknod blk b 7 250 2>/dev/null; then
  mkimg blk.qcow2 "$tmpdir/blk"
  every_command blk.qcow2 "a block device named by the image, not by you"
  # Allowed: whatever happens next (the node may have no driver behind
  # it), it is not that refusal.
  for how in "--allow-device" "--data-file $tmpdir/blk"; do
    st=0
    # shellcheck disable=SC2086
    timeout 60 "$RAWTRACK" check blk.qcow2 $how >/dev/null 2>err.txt || st=$?
    cat err.txt >&2
    [ "$st" -ne 124 ] && [ "$st" -lt 126 ] || die "check $how: status $st"
    if grep -q "named by the image" err.txt; then
      die "check $how: still refused"
    fi
  done
else
  echo "$progname: cannot mknod a block device here; that part skipped" >&2
fi

# The plain file still works, through every command.
"$RAWTRACK" attach disk.raw good.qcow2 >/dev/null
"$RAWTRACK" cat good.qcow2 | cmp - disk.raw || die "cat of a plain file"
expect_ok "$RAWTRACK" check good.qcow2
expect_ok "$RAWTRACK" io good.qcow2 -c 'read -P 0x5a 0 64k'

echo "$progname: OK"
