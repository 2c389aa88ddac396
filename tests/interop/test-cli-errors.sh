#!/usr/bin/env bash
# test-cli-errors.sh: operator mistakes and lost output (issue #14).
#
#  - item 5: a malformed `io` command runs nothing - not the commands
#    before it, not a stale version of itself - and the exit status says
#    so; for -c, a regular -f FILE and a regular file on stdin; from a
#    pipe the lines before it ran and nothing after;
#  - item 11: names from an image (bitmap names, the data file) with
#    control characters are printed escaped by `info` and `bitmap list`
#    (C escapes as ls -b prints them), and their JSON agrees with QEMU's;
#    every command that prints fails (exit 1, message) when standard output
#    cannot be written (>/dev/full);
#  - item 12: an image named as its own data file is refused by every
#    command that opens the data file, saying so (not a lock conflict
#    blamed on "another program"), and the file is not touched.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version

cd "$tmpdir"
MiB=$((1024 * 1024))
truncate -s 16M disk.raw
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null
"$RAWTRACK" bitmap add disk.qcow2 b0

# The raw disk and the bitmap are untouched.
untouched ()
{
  cmp -s -n $((16 * MiB)) disk.raw /dev/zero || die "$1: the data file was written"
  assert_eq "" "$("$RAWTRACK" bitmap dump disk.qcow2 b0)" "$1: bitmap b0"
}

# --- item 5 ----------------------------------------------------------------
for bad in 'write 8M 64kk' 'write 8M' 'write -P 300 0 4k' 'write -Q 0 4k' \
           'read 0 4k 5' 'frob 0 4k' 'flush now' 'write -z -P 1 0 4k' \
           'write -u 0 4k' "write 0 $((65 * MiB))"; do
  expect_exit 1 "$RAWTRACK" io disk.qcow2 -c 'write -P 0x11 0 4k' -c "$bad" \
    -c 'write 1M 4k'
  untouched "-c '$bad'"
  printf 'write -P 0x11 0 4k\n%s\nwrite 1M 4k\n' "$bad" >cmds.txt
  expect_exit 1 "$RAWTRACK" io disk.qcow2 -f cmds.txt
  untouched "-f with '$bad'"
  expect_exit 1 "$RAWTRACK" io disk.qcow2 <cmds.txt
  untouched "stdin file with '$bad'"
done
# The message names the command and what is wrong.
"$RAWTRACK" io disk.qcow2 -c 'read 0 4k' -c 'write 8M 64kk' >out.txt 2>err.txt &&
  die "a malformed command succeeded"
grep -q "^rawtrack: -c 2: write: LENGTH '64kk'" err.txt || { cat err.txt >&2; die "io message"; }
[ ! -s out.txt ] || die "io ran a command before refusing: $(cat out.txt)"
printf 'read 0 4k\n\nwrite 1M 4x\n' >cmds.txt
"$RAWTRACK" io disk.qcow2 -f cmds.txt 2>err.txt && die "a malformed file succeeded"
grep -q "^rawtrack: cmds.txt:3: write: LENGTH '4x'" err.txt || { cat err.txt >&2; die "io -f message"; }
# From a pipe: what came before the bad line ran, nothing after it.
printf 'write -P 0x22 0 4k\nwrite 1M 4x\nwrite -P 0x33 2M 4k\n' |
  "$RAWTRACK" io disk.qcow2 >out.txt 2>err.txt && die "a malformed pipe succeeded"
assert_eq "wrote 4096/4096 bytes at offset 0" "$(cat out.txt)" "pipe: what ran"
expect_ok qemu-io -f qcow2 -r -c 'read -P 0x22 0 4k' -c 'read -P 0 2M 4k' disk.qcow2
# Comments and blank lines are fine.
printf '# a comment\n\nwrite -P 0x44 4M 4k\n' >cmds.txt
expect_ok "$RAWTRACK" io disk.qcow2 -f cmds.txt
expect_ok qemu-io -f qcow2 -r -c 'read -P 0x44 4M 4k' disk.qcow2
qcheck disk.qcow2

# --- item 11: names that would drive the terminal ---------------------------
evil=$'evil\e[31mred\nline\\x\xff'
shown='evil\033[31mred\nline\\x\377'
expect_ok "$RAWTRACK" bitmap add disk.qcow2 "$evil"
"$RAWTRACK" info disk.qcow2 >info.txt
grep -qxF "            name: $shown" info.txt || { cat -A info.txt >&2; die "info: name not escaped"; }
"$RAWTRACK" bitmap list disk.qcow2 >list.txt
grep -qF "$shown " list.txt || { cat -A list.txt >&2; die "bitmap list: name not escaped"; }
assert_eq 3 "$(wc -l <list.txt)" "bitmap list lines (header, b0, the evil one)"
! grep -q $'\e' info.txt list.txt || die "an ESC reached the output"
info_agrees disk.qcow2
"$RAWTRACK" bitmap list --json disk.qcow2 >list.json
qemu-img info --output=json disk.qcow2 >qinfo.json
"$PYTHON" - list.json qinfo.json <<'PY' || die "JSON names differ from QEMU's"
import json, sys
r = [b["name"] for b in json.load(open(sys.argv[1]))]
q = [b["name"] for b in json.load(open(sys.argv[2]))["format-specific"]["data"]["bitmaps"]]
assert r == q and r[1].startswith("evil\x1b[31mred\nline\\x"), (r, q)
PY
expect_ok "$RAWTRACK" bitmap remove disk.qcow2 "$evil"
# A data file name with a newline.
cp disk.raw $'odd\nname.raw'
expect_ok "$RAWTRACK" attach $'odd\nname.raw' odd.qcow2
"$RAWTRACK" info odd.qcow2 >info.txt
grep -qE '^    data file: /.*/odd\\nname\.raw$' info.txt || { cat -A info.txt >&2; die "info: data file not escaped"; }
info_agrees odd.qcow2

# --- item 12: the image as its own data file --------------------------------
truncate -s 1M self.raw
expect_ok "$RAWTRACK" attach self.raw self.qcow2
qemu-img amend -f qcow2 -o data_file=self.qcow2 self.qcow2 ||
  hard_error "qemu-img amend -o data_file=self.qcow2 failed"
ln self.qcow2 hard.qcow2
before="$(md5of self.qcow2)"
echo 'write 0 4k' >w.cmds
echo 'read 0 4k' >r.cmds
for args in "io self.qcow2 -f w.cmds" "io --read-only self.qcow2 -f r.cmds" \
            "cat self.qcow2" "check self.qcow2" \
            "serve self.qcow2 --socket $tmpdir/self.sock" \
            "serve --read-only self.qcow2 --socket $tmpdir/self.sock"; do
  st=0
  # shellcheck disable=SC2086
  timeout 60 "$RAWTRACK" $args >out.bin 2>err.txt </dev/null || st=$?
  cat err.txt >&2
  [ "$st" -ne 0 ] && [ "$st" -lt 124 ] || die "status $st: $args"
  grep -q "the image names itself as its data file ('self.qcow2')" err.txt ||
    die "no word of the image naming itself: $args"
  ! grep -q "another program" err.txt || die "blamed another program: $args"
done
"$RAWTRACK" io self.qcow2 --data-file hard.qcow2 -c 'write 0 4k' 2>err.txt &&
  die "--data-file naming the image itself was accepted"
grep -q "the data file given, hard.qcow2, is the image file itself" err.txt ||
  { cat err.txt >&2; die "--data-file naming the image: message"; }
assert_eq "$before" "$(md5of self.qcow2)" "the image after the refusals"
expect_ok "$RAWTRACK" info self.qcow2

# --- item 11: standard output that cannot be written -----------------------
[ -w /dev/full ] || skip "no /dev/full"
full ()
{
  local st=0
  "$RAWTRACK" "$@" >/dev/full 2>err.txt || st=$?
  [ "$st" -eq 1 ] || { cat err.txt >&2; die "exit $st (want 1) with stdout on /dev/full: $*"; }
  grep -q "standard output" err.txt || { cat err.txt >&2; die "no message about stdout: $*"; }
}
full --version
full --help
full help
full info disk.qcow2
full info --json disk.qcow2
full check disk.qcow2
full check --json disk.qcow2
full bitmap list disk.qcow2
full bitmap list --json disk.qcow2
full bitmap dump disk.qcow2 b0 --json
full io disk.qcow2 -c 'read 0 4k'
full io disk.qcow2 --read-only -c 'read 0 4k'
full attach --help
rm -f other.qcow2
full attach --json disk.raw other.qcow2
full create --help
full cat --help
full serve --help
"$RAWTRACK" io disk.qcow2 -c 'write -P 0x55 0 4k' -c 'write -P 0x66 1M 4k' \
  >/dev/full 2>/dev/null && die "io with stdout on /dev/full succeeded"
# The first write happened but was not reported: nothing after it ran.
expect_ok qemu-io -f qcow2 -r -c 'read -P 0x55 0 4k' -c 'read -P 0 1M 4k' disk.qcow2
qcheck disk.qcow2
echo "$progname: OK"
