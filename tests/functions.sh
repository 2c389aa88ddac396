# shellcheck shell=bash
# rawtrack test helpers, sourced by the shell tests in tests/interop/.
#
# Modelled on nbdkit's tests/functions.sh.in.  A test does:
#
#   #!/usr/bin/env bash
#   set -euo pipefail
#   source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
#   requires qemu-img --version
#
# and then works only inside "$tmpdir", which is created here and removed
# when the test exits (set RAWTRACK_KEEP_TMPDIR=1 to keep it for debugging).
#
# Exit codes follow the meson/automake convention: 0 pass, 77 skip,
# 99 hard error (the harness itself is broken), anything else is a failure.
#
# Environment (meson sets these in tests/meson.build):
#   RAWTRACK   the rawtrack command under test (default <srcdir>/build/cli/rawtrack)
#   SRCDIR     the source root
#   BUILDDIR   the build root
#   TMPDIR     where the per-test temporary directory is made (default /tmp)

# The name of the running test, used in messages.
progname="${0##*/}"

: "${SRCDIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${BUILDDIR:=$SRCDIR/build}"
: "${RAWTRACK:=$BUILDDIR/cli/rawtrack}"
# Absolute, so that tests may cd around.
case "$RAWTRACK" in
  /*) ;;
  *) RAWTRACK="$PWD/$RAWTRACK" ;;
esac
export SRCDIR BUILDDIR RAWTRACK

# Python for the helpers.  Debian's own interpreter is preferred: version
# manager shims (pyenv) cost ~0.1 s per start, and tests start it often.
if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
export PYTHON
# A bare `python3` in a test means the same interpreter.  (A job put in
# the background must run "$PYTHON" itself: the $! of a function is the
# subshell running it, and killing that leaves python running.)
python3 ()
{
  "$PYTHON" "$@"
}

# The helper scripts of the interop tests (python comparators, patchers).
interop_dir="$SRCDIR/tests/interop"

# Tell the user about the environment (helps when reading test logs).
echo "$progname: RAWTRACK=$RAWTRACK" >&2

# The command under test must exist: a missing binary is a broken build,
# not a reason to skip.
if [ ! -x "$RAWTRACK" ]; then
  echo "$progname: ERROR: $RAWTRACK is not an executable (build it first)" >&2
  exit 99
fi

# ---------------------------------------------------------------------------
# Failure and skip.

# die MSG...: report a test failure and exit 1.
die ()
{
  echo "$progname: FAIL: $*" >&2
  exit 1
}

# hard_error MSG...: the test harness itself is broken (exit 99).
hard_error ()
{
  echo "$progname: ERROR: $*" >&2
  exit 99
}

# skip MSG...: skip the whole test (exit 77).
skip ()
{
  echo "SKIP: $progname: $*"
  exit 77
}

# requires CMD [ARGS...]: run the command (output discarded); if it fails
# the test is skipped.  Use for peer tools and feature probes, e.g.
#   requires qemu-img --version
#   requires qemu-img bitmap --help
requires ()
{
  if ! "$@" >/dev/null 2>&1 </dev/null; then
    skip "requires $*"
  fi
}

# requires_not CMD [ARGS...]: skip if the command succeeds.
requires_not ()
{
  if "$@" >/dev/null 2>&1 </dev/null; then
    skip "requires_not $*"
  fi
}

# requires_root: skip unless running as root.
requires_root ()
{
  if [ "$(id -u)" != 0 ]; then
    skip "requires root"
  fi
}

# ---------------------------------------------------------------------------
# Cleanup.  cleanup_fn registers a command to run when the test exits for
# any reason (normal exit, failure, INT, TERM).  Hooks run in reverse order
# of registration, with errors ignored, and the test's exit status kept.

_cleanup_hooks=()

cleanup_fn ()
{
  local quoted
  quoted="$(printf '%q ' "$@")"
  _cleanup_hooks+=("$quoted")
}

_run_cleanup_hooks ()
{
  local status=$? i
  set +e
  trap '' INT TERM
  for (( i = ${#_cleanup_hooks[@]} - 1; i >= 0; i-- )); do
    eval "${_cleanup_hooks[i]}" >/dev/null 2>&1
  done
  _cleanup_hooks=()
  exit "$status"
}
trap _run_cleanup_hooks EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# The per-test temporary directory.  Everything a test writes goes here.

tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/rawtrack-${progname%.sh}.XXXXXX")" ||
  hard_error "cannot create a temporary directory"
if [ "${RAWTRACK_KEEP_TMPDIR:-0}" = 1 ]; then
  echo "$progname: keeping $tmpdir" >&2
else
  cleanup_fn rm -rf "$tmpdir"
fi

# ---------------------------------------------------------------------------
# Assertions.

# _run_status CMD...: run CMD with errexit off and print its exit status.
# Output of CMD goes to the test log (stderr), so failures are diagnosable.
_status=0
_run ()
{
  _status=0
  "$@" >&2 || _status=$?
}

# A status of 126 or more means the command could not be run, or died from
# a signal (ASan aborts, segfaults): never acceptable as an "expected failure".
_crashed ()
{
  [ "$1" -ge 126 ]
}

# expect_fail CMD...: CMD must exit with a non-zero status below 126.
expect_fail ()
{
  _run "$@"
  if [ "$_status" -eq 0 ]; then
    die "expected failure, but succeeded: $*"
  fi
  if _crashed "$_status"; then
    die "expected a clean failure, but exit status $_status (crash?): $*"
  fi
}

# expect_exit N CMD...: CMD must exit with status exactly N.
expect_exit ()
{
  local want="$1"; shift
  _run "$@"
  if [ "$_status" -ne "$want" ]; then
    die "expected exit $want, got $_status: $*"
  fi
}

# expect_ok CMD...: CMD must succeed (like running it under set -e, but the
# failure message names the command).
expect_ok ()
{
  _run "$@"
  if [ "$_status" -ne 0 ]; then
    die "expected success, got exit $_status: $*"
  fi
}

# qcheck IMAGE [QEMU-IMG-CHECK-ARGS...]: qemu-img check must report no
# errors and no leaks (exit 0).
qcheck ()
{
  local img="$1"; shift
  local out st=0
  out="$(qemu-img check "$@" "$img" 2>&1)" || st=$?
  if [ "$st" -ne 0 ]; then
    echo "$out" >&2
    die "qemu-img check $* $img: exit $st (expected 0)"
  fi
}

# md5of FILE: print the md5 of FILE's contents (hex only).
md5of ()
{
  local sum
  sum="$(md5sum < "$1")" || die "md5sum $1 failed"
  echo "${sum%% *}"
}

# assert_same_file A B: the two files have identical contents.
assert_same_file ()
{
  if ! cmp -s "$1" "$2"; then
    cmp "$1" "$2" >&2 || true
    die "files differ: $1 $2"
  fi
}

# assert_absent PATH: PATH must not exist.
assert_absent ()
{
  if [ -e "$1" ] || [ -L "$1" ]; then
    die "$1 exists but should not"
  fi
}

# assert_eq WANT GOT WHAT
assert_eq ()
{
  if [ "$1" != "$2" ]; then
    die "$3: expected '$1', got '$2'"
  fi
}

# json_get FILE EXPR: print a value from a JSON file.  EXPR is a python
# expression over `j`, e.g. 'j["format-specific"]["data"]["compat"]'.
# Booleans print as true/false, strings without quotes.
json_get ()
{
  "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
with open(sys.argv[1]) as f:
    j = json.load(f)
v = eval(sys.argv[2], {"j": j})
print(json.dumps(v) if not isinstance(v, str) else v)
EOF
}

# extract FILE OFFSET LENGTH: print LENGTH bytes of FILE from OFFSET.
# (Not `tail | head`: under pipefail the SIGPIPE of tail fails the test.)
extract ()
{
  dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M \
    status=none
}

# json_expect FILE EXPR WANT [EXPR WANT]...: several json_get-style
# assertions on one file, in a single python run.
json_expect ()
{
  local f="$1"; shift
  "$PYTHON" - "$f" "$@" <<'EOF' || die "unexpected values in $f"
import json, sys
with open(sys.argv[1]) as f:
    j = json.load(f)
args = sys.argv[2:]
bad = 0
for expr, want in zip(args[0::2], args[1::2]):
    try:
        v = eval(expr, {"j": j})
        got = json.dumps(v) if not isinstance(v, str) else v
    except Exception as e:
        got = f"<{type(e).__name__}: {e}>"
    if got != want:
        print(f"json_expect: {sys.argv[1]}: {expr}: expected {want!r}, got {got!r}",
              file=sys.stderr)
        bad = 1
sys.exit(bad)
EOF
}

# write_pattern FILE OFFSET LENGTH BYTE: overwrite LENGTH bytes of FILE at
# OFFSET with BYTE (0..255), without truncating the file.
write_pattern ()
{
  "$PYTHON" - "$@" <<'EOF'
import os, sys
path, off, length, byte = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0), int(sys.argv[4], 0)
chunk = bytes([byte]) * min(length, 1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
try:
    done = 0
    while done < length:
        n = min(len(chunk), length - done)
        done += os.pwrite(fd, chunk[:n], off + done)
finally:
    os.close(fd)
EOF
}

# ---------------------------------------------------------------------------
# rawtrack versus QEMU.  Each runs both tools on the same image, with the
# same file name argument, and fails the test on any disagreement.  Scratch
# files go to $tmpdir and are removed afterwards.

# info_agrees IMAGE [EXTRA-RAWTRACK-INFO-ARGS...]: `rawtrack info --json`
# agrees with `qemu-img info --output=json` on every shared field.
info_agrees ()
{
  local img="$1"; shift
  local r="$tmpdir/.info-r.json" q="$tmpdir/.info-q.json" st=0
  qemu-img info -f qcow2 --output=json "$img" >"$q" ||
    die "qemu-img info $img failed"
  "$RAWTRACK" info "$img" --json "$@" >"$r" || st=$?
  if [ "$st" -ne 0 ]; then
    die "rawtrack info $img --json $*: exit $st"
  fi
  if ! "$PYTHON" "$interop_dir/compare-info.py" "$r" "$q"; then
    echo "--- rawtrack info --json $img:" >&2; cat "$r" >&2
    echo "--- qemu-img info --output=json $img:" >&2; cat "$q" >&2
    die "rawtrack info disagrees with qemu-img info on $img"
  fi
  rm -f "$r" "$q"
}

# check_agrees IMAGE [--ignore KEY]...: `rawtrack check` exits like
# `qemu-img check` and the --json outputs agree (compare-check.py).
# Sets $check_status to the common exit status.
check_agrees ()
{
  local img="$1"; shift
  local r="$tmpdir/.check-r.json" q="$tmpdir/.check-q.json"
  local rst=0 qst=0
  qemu-img check -f qcow2 --output=json "$img" >"$q" 2>/dev/null || qst=$?
  "$RAWTRACK" check "$img" --json >"$r" || rst=$?
  if [ "$rst" -ne "$qst" ]; then
    echo "--- qemu-img check --output=json $img:" >&2; cat "$q" >&2
    echo "--- rawtrack check --json $img:" >&2; cat "$r" >&2
    die "check $img: rawtrack exit $rst, qemu-img exit $qst"
  fi
  if [ "$qst" -ne 1 ] && ! "$PYTHON" "$interop_dir/compare-check.py" "$@" "$r" "$q"; then
    echo "--- qemu-img check --output=json $img:" >&2; cat "$q" >&2
    echo "--- rawtrack check --json $img:" >&2; cat "$r" >&2
    die "rawtrack check --json disagrees with qemu-img check on $img"
  fi
  rm -f "$r" "$q"
  # shellcheck disable=SC2034  # read by the tests
  check_status="$qst"
}

# cat_agrees IMAGE: `rawtrack cat IMAGE` equals `qemu-img convert -O raw`
# (both read through the backing chain).
cat_agrees ()
{
  local img="$1"
  local q="$tmpdir/.cat-q.raw" st=0
  qemu-img convert -f qcow2 -O raw "$img" "$q" ||
    die "qemu-img convert $img failed"
  # Streamed: rawtrack's own failure, or a difference, fails the pipeline.
  local -
  set -o pipefail
  "$RAWTRACK" cat "$img" | cmp - "$q" >&2 || st=$?
  if [ "$st" -ne 0 ]; then
    die "rawtrack cat $img differs from qemu-img convert -O raw (or failed)"
  fi
  rm -f "$q"
}

# ---------------------------------------------------------------------------
# Waiting.  A test must never depend on something happening within a short
# time, only on it happening at all: the machine may be loaded (2 cores
# shared by sanitizer builds).  Bounds are generous and exist only so that a
# broken build fails instead of hanging.

# wait_until SECONDS WHAT CMD...: run CMD every 0.1 s until it succeeds;
# fail the test, naming WHAT, if it has not after SECONDS seconds.
wait_until ()
{
  local secs="$1" what="$2" i
  shift 2
  for (( i = 0; i < secs * 10; i++ )); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what (not within $secs s)"
}

# wait_gone PID WHAT: wait until process PID is gone (also one that is not
# our child, such as qemu-nbd --fork); a child is reaped.
wait_gone ()
{
  wait_until 120 "$2" eval "! kill -0 $1"
  wait "$1" 2>/dev/null || true
}

# nbd_ready SOCKET: a server answers on the Unix socket (the socket file
# alone is not enough: it exists between bind(2) and listen(2)).
nbd_ready ()
{
  [ -S "$1" ] &&
    "$PYTHON" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
sys.exit(0 if s.recv(8) == b"NBDMAGIC" else 1)' "$1" 2>/dev/null
}

# ---------------------------------------------------------------------------
# An interactive qemu-io driven through a pair of FIFOs, so that a test can
# act (kill -9 it, inspect the image) at a moment QEMU itself vouches for
# instead of a moment guessed by polling the image.
#
#   qemu_io_start IMAGE [QEMU-IO-ARGS...]   start it; 0 once it has answered
#                                           a first command, that is once
#                                           QEMU has finished opening IMAGE
#                                           (for a read-write qcow2 image:
#                                           bitmaps marked in-use and the
#                                           header's autoclear bits written
#                                           back); 1 if it died before
#   qemu_io_cmd CMD PATTERN                 send CMD, read its answer until
#                                           a line matches PATTERN (an ERE);
#                                           1 if qemu-io died first
#   qemu_io_kill9                           SIGKILL it and reap it
#
# One at a time; qemu_io_pid holds its process id.
qemu_io_pid=
_qio_w=
_qio_r=

qemu_io_start ()
{
  local img="$1"; shift
  [ -z "$qemu_io_pid" ] || hard_error "qemu_io_start: one is running"
  rm -f "$tmpdir/.qio-in" "$tmpdir/.qio-out"
  mkfifo "$tmpdir/.qio-in" "$tmpdir/.qio-out" || hard_error "mkfifo failed"
  qemu-io "$@" "$img" <"$tmpdir/.qio-in" >"$tmpdir/.qio-out" 2>&1 &
  qemu_io_pid=$!
  # The child opens the FIFOs in this order too: no deadlock.
  exec {_qio_w}>"$tmpdir/.qio-in" {_qio_r}<"$tmpdir/.qio-out"
  # Any command proves that the open is over: qemu-io reads none before.
  qemu_io_cmd "help sleep" "waits for the given value"
}

qemu_io_cmd ()
{
  local line
  echo "$1" >&"$_qio_w" 2>/dev/null || return 1
  while IFS= read -r -t 120 line <&"$_qio_r"; do
    echo "qemu-io: $line" >&2
    if [[ "$line" =~ $2 ]]; then return 0; fi
  done
  return 1
}

qemu_io_kill9 ()
{
  [ -n "$qemu_io_pid" ] || return 0
  kill -9 "$qemu_io_pid" 2>/dev/null || true
  wait "$qemu_io_pid" 2>/dev/null || true
  exec {_qio_w}>&- {_qio_r}<&-
  qemu_io_pid=
}
cleanup_fn qemu_io_kill9

# kill9_holding IMAGE [CMD PATTERN]: open the qcow2 IMAGE read-write in
# qemu-io, run CMD in it if given (waiting for a line matching PATTERN),
# and kill -9 qemu-io: the image is left as QEMU leaves an image it held,
# every bitmap in-use and the autoclear bit of the bitmaps extension set.
# The kill happens only after qemu-io answered, when QEMU no longer writes
# the header.  Should qemu-io die or not answer, the kill may cut QEMU's
# open between the bitmap directory (in-use) and the header's autoclear
# bit - QEMU then drops every bitmap - or come before either: the state is
# then completed by hand (qcow2-patch.py mark-in-use), said on stderr.
kill9_holding ()
{
  local img="$1" ok=1 fixed
  qemu_io_start "$img" -f qcow2 || ok=0
  if [ "$ok" = 1 ] && [ $# -ge 3 ]; then
    qemu_io_cmd "$2" "$3" || ok=0
  fi
  qemu_io_kill9
  fixed="$("$PYTHON" "$interop_dir/qcow2-patch.py" mark-in-use "$img")" ||
    hard_error "qcow2-patch.py mark-in-use $img failed"
  if [ -n "$fixed" ]; then
    echo "$progname: kill9_holding: qemu-io answered: $ok; completed by hand:" \
      $fixed >&2
    # After an answer nothing may be missing: QEMU changed its ways.
    [ "$ok" = 0 ] || hard_error "kill9_holding: $img not in-use after QEMU answered"
  fi
}
