#!/usr/bin/env bash
# test-serve-socket.sh: `serve --socket` and the socket path (issue #14
# item 6).
#
#  - a second serve on the path of a live server refuses (exit 1, "in
#    use"), and leaves the first server's socket and pid file alone;
#  - a stale socket (its server killed with SIGKILL) is replaced;
#  - a server exiting removes the socket path only while it is still its
#    own socket: not one that another server made after the first one's
#    was removed.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires nbdinfo --version
requires qemu-img --version

cd "$tmpdir"
truncate -s 8M disk.raw
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null
truncate -s 4M other.raw
"$RAWTRACK" attach other.raw other.qcow2 >/dev/null
sock="$tmpdir/nbd.sock"

# serve_bg NAME IMAGE: a read-only server on $sock, pid file NAME.pid;
# sets pid_NAME once it listens.
serve_bg ()
{
  rm -f "$1.pid"
  "$RAWTRACK" serve -r "$2" --socket "$sock" --pidfile "$tmpdir/$1.pid" \
    2>"$1.err" &
  eval "pid_$1=$!"
  cleanup_fn kill "$!"
  wait_until 120 "serve $1 did not start" test -s "$1.pid"
}

# size_on_sock: the export size a client sees on $sock.
size_on_sock ()
{
  nbdinfo --size "nbd+unix:///?socket=$sock"
}

# 1. A live server keeps its socket.
serve_bg a disk.qcow2
assert_eq $((8 << 20)) "$(size_on_sock)" "first server"
st=0
timeout 60 "$RAWTRACK" serve -r other.qcow2 --socket "$sock" \
  --pidfile "$tmpdir/a.pid" 2>b.err || st=$?
cat b.err >&2
assert_eq 1 "$st" "exit status of a second serve on a live socket"
grep -q "is in use" b.err || die "the refusal does not say the socket is in use"
assert_eq $((8 << 20)) "$(size_on_sock)" "the first server after the refusal"
assert_eq "$pid_a" "$(cat a.pid)" "the first server's pid file"

# 2. A stale socket is replaced.
kill -9 "$pid_a"
wait "$pid_a" 2>/dev/null || true
[ -S "$sock" ] || hard_error "SIGKILL removed the socket?"
serve_bg c other.qcow2
assert_eq $((4 << 20)) "$(size_on_sock)" "the server replacing a stale socket"

# 3. Exiting, a server leaves a socket that is no longer its own.
rm -f "$sock"
serve_bg d disk.qcow2
kill -TERM "$pid_c"
wait "$pid_c" || die "serve c: exit status after SIGTERM"
[ -S "$sock" ] || die "the first server, exiting, removed the second one's socket"
assert_eq $((8 << 20)) "$(size_on_sock)" "the second server after the first exited"
# ...and removes its own.
kill -TERM "$pid_d"
wait "$pid_d" || die "serve d: exit status after SIGTERM"
assert_absent "$sock"
assert_absent d.pid
echo "$progname: OK"
