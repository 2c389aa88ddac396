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
