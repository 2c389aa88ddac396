#!/usr/bin/env bash
# test-cli.sh: the rawtrack command line itself.
#
#  - `help`, `--help`, `--version` (prints the project version), and
#    `CMD --help` for every command: exit 0 with usage on stdout;
#  - no command, unknown commands and unknown options: exit 1 with a message
#    on stderr;
#  - missing arguments: exit 1, nothing created;
#  - bad sizes, offsets, lengths, cluster sizes: exit 1, nothing created.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version

cd "$tmpdir"

commands=(attach create info check cat)

# run_capture CMD...: run, keep stdout in out.txt, stderr in err.txt and the
# exit status in $_status.
run_capture ()
{
  _status=0
  "$@" >out.txt 2>err.txt || _status=$?
}

# must_fail_cleanly WHAT CMD...: exit 1 exactly, with a message on stderr.
must_fail_cleanly ()
{
  local what="$1"; shift
  run_capture "$@"
  if [ "$_status" -ne 1 ]; then
    cat out.txt err.txt >&2
    die "$what: expected exit 1, got $_status: $*"
  fi
  if [ ! -s err.txt ]; then
    die "$what: no error message on stderr: $*"
  fi
}

# ---------------------------------------------------------------------------
# Help and version.

for h in help --help; do
  run_capture "$RAWTRACK" "$h"
  assert_eq 0 "$_status" "rawtrack $h exit status"
  grep -qi usage out.txt || die "rawtrack $h: no usage on stdout"
  for c in "${commands[@]}"; do
    grep -qw "$c" out.txt || die "rawtrack $h does not mention '$c'"
  done
done

version="$(sed -n "s/^ *version *: *'\([^']*\)'.*/\1/p" "$SRCDIR/meson.build" | head -n 1)"
[ -n "$version" ] || hard_error "cannot read the project version from meson.build"
run_capture "$RAWTRACK" --version
assert_eq 0 "$_status" "rawtrack --version exit status"
grep -qF "$version" out.txt ||
  die "rawtrack --version does not print $version: $(cat out.txt)"

for c in "${commands[@]}"; do
  run_capture "$RAWTRACK" "$c" --help
  assert_eq 0 "$_status" "rawtrack $c --help exit status"
  grep -qi usage out.txt || die "rawtrack $c --help: no usage on stdout"
  grep -qw "$c" out.txt || die "rawtrack $c --help does not name the command"
done
run_capture "$RAWTRACK" attach --help
for o in --cluster-size --force --relative; do
  grep -q -- "$o" out.txt || die "attach --help does not mention $o"
done
run_capture "$RAWTRACK" create --help
for o in --cluster-size --compat --refcount-bits --data-file --data-file-raw --force; do
  grep -q -- "$o" out.txt || die "create --help does not mention $o"
done
run_capture "$RAWTRACK" check --help
for o in --json --repair --data-file; do
  grep -q -- "$o" out.txt || die "check --help does not mention $o"
done

# ---------------------------------------------------------------------------
# Wrong commands and options.

must_fail_cleanly "no command" "$RAWTRACK"
must_fail_cleanly "unknown command" "$RAWTRACK" frobnicate
grep -q frobnicate err.txt || die "the error does not name the unknown command"
must_fail_cleanly "unknown command" "$RAWTRACK" ATTACH x y
must_fail_cleanly "unknown global option" "$RAWTRACK" --bogus
qemu-img create -q -f qcow2 ok.qcow2 1M
ok_md5="$(md5of ok.qcow2)"
for c in info check cat; do
  must_fail_cleanly "unknown option to $c" "$RAWTRACK" "$c" ok.qcow2 --bogus
done
must_fail_cleanly "unknown option to create" "$RAWTRACK" create new.qcow2 1048576 --bogus
assert_absent new.qcow2
head -c 1048576 /dev/zero >z.raw
must_fail_cleanly "unknown option to attach" "$RAWTRACK" attach z.raw new.qcow2 --bogus
assert_absent new.qcow2

# ---------------------------------------------------------------------------
# Missing and extra arguments.

must_fail_cleanly "attach without args" "$RAWTRACK" attach
must_fail_cleanly "attach without IMAGE" "$RAWTRACK" attach z.raw
must_fail_cleanly "attach with 3 args" "$RAWTRACK" attach z.raw new.qcow2 extra
assert_absent new.qcow2
assert_absent extra
must_fail_cleanly "create without args" "$RAWTRACK" create
must_fail_cleanly "create without SIZE" "$RAWTRACK" create new.qcow2
assert_absent new.qcow2
must_fail_cleanly "create with 3 args" "$RAWTRACK" create new.qcow2 1048576 extra
assert_absent new.qcow2
for c in info check cat; do
  must_fail_cleanly "$c without IMAGE" "$RAWTRACK" "$c"
  must_fail_cleanly "$c with 2 images" "$RAWTRACK" "$c" ok.qcow2 ok.qcow2
done
must_fail_cleanly "attach --cluster-size without a value" "$RAWTRACK" attach z.raw new.qcow2 --cluster-size
assert_absent new.qcow2
must_fail_cleanly "info --data-file without a value" "$RAWTRACK" info ok.qcow2 --data-file
must_fail_cleanly "check -r without a value" "$RAWTRACK" check ok.qcow2 -r
assert_eq "$ok_md5" "$(md5of ok.qcow2)" "ok.qcow2 after failed commands"

# Files that are missing or not images.
must_fail_cleanly "info of a missing file" "$RAWTRACK" info missing.qcow2
must_fail_cleanly "cat of a missing file" "$RAWTRACK" cat missing.qcow2
assert_absent missing.qcow2
must_fail_cleanly "info of a raw file" "$RAWTRACK" info z.raw
must_fail_cleanly "cat of a raw file" "$RAWTRACK" cat z.raw
must_fail_cleanly "info of a directory" "$RAWTRACK" info .

# ---------------------------------------------------------------------------
# Bad sizes and numbers.

for size in abc -1 -512 '' 1.5.5 12Q 0x 18446744073709551616 99999999999999999999999; do
  must_fail_cleanly "create with size '$size'" "$RAWTRACK" create bad.qcow2 "$size"
  assert_absent bad.qcow2
done
for cs in abc -1 0 '' 256 3000 4194304 18446744073709551616; do
  must_fail_cleanly "create --cluster-size '$cs'" "$RAWTRACK" create bad.qcow2 1048576 --cluster-size "$cs"
  assert_absent bad.qcow2
  must_fail_cleanly "attach --cluster-size '$cs'" "$RAWTRACK" attach z.raw bad.qcow2 --cluster-size "$cs"
  assert_absent bad.qcow2
done
for n in abc -1 '' 18446744073709551616; do
  must_fail_cleanly "cat --offset '$n'" "$RAWTRACK" cat ok.qcow2 --offset "$n"
  must_fail_cleanly "cat --length '$n'" "$RAWTRACK" cat ok.qcow2 --length "$n"
done
for n in abc 3 0 '' 128; do
  must_fail_cleanly "create --refcount-bits '$n'" "$RAWTRACK" create bad.qcow2 1048576 --refcount-bits "$n"
  assert_absent bad.qcow2
done

# A good invocation still works after all that (the harness is sane).
expect_ok "$RAWTRACK" create good.qcow2 1048576
qcheck good.qcow2
expect_ok "$RAWTRACK" info good.qcow2
expect_ok "$RAWTRACK" info good.qcow2 --json
expect_ok "$RAWTRACK" check good.qcow2
[ "$("$RAWTRACK" cat good.qcow2 | wc -c)" -eq 1048576 ] || die "cat of a 1 MiB disk"

# The tracking mode: one option, --track, for io and serve; io's older
# --mode stays an accepted spelling (and serve takes it too).
for o in --track --mode; do
  for m in safe process lazy; do
    expect_ok "$RAWTRACK" io good.qcow2 "$o" "$m" -c 'write 0 4k'
    expect_ok "$RAWTRACK" serve good.qcow2 "$o" "$m" --run true
  done
  for c in io serve; do
    must_fail_cleanly "$c $o bogus" "$RAWTRACK" "$c" good.qcow2 "$o" bogus \
      -c 'write 0 4k' --run true
    grep -qF -- "--track must be safe, process or lazy" err.txt ||
      die "$c $o bogus: unexpected message: $(cat err.txt)"
  done
done
for c in io serve; do
  run_capture "$RAWTRACK" "$c" --help
  grep -q -- "--track MODE" out.txt || die "$c --help does not mention --track"
done
qcheck good.qcow2

echo "$progname: OK"
