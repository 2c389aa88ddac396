#!/usr/bin/env bash
# test-bypass.sh: writes to the raw disk that bypassed rawtrack are
# noticed (issue 14, "Writes that bypassed rawtrack").  rawtrack records
# the data file's identity (device, inode, size, change time) at every
# read-write open and clean close; the next read-write open that finds it
# changed marks every bitmap in use - qemu-img info shows "in-use",
# qemu-nbd refuses to export it - and info, bitmap list and check say why
# and since when.  Clean rawtrack cycles, QEMU's own writes through the
# container and a crashed rawtrack writer do not trigger it; dd, a touch
# and a replaced file do.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-img bitmap --help
requires qemu-io --version

cd "$tmpdir"

fresh ()
{
  rm -f disk.raw disk.qcow2
  truncate -s 16M disk.raw
  "$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null
  qemu-img bitmap --add disk.qcow2 b1
  qemu-img bitmap --add disk.qcow2 b2
  expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x11 0 64k"
}

# in_use: the bitmaps' in-use flags as QEMU sees them ("true true").
in_use ()
{
  qemu-img info -U --output=json disk.qcow2 >qi.json
  "$PYTHON" - qi.json <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
bms = j["format-specific"]["data"].get("bitmaps", [])
print(" ".join("true" if "in-use" in b["flags"] else "false" for b in bms))
EOF
}

# explained WHY: info, info --json, bitmap list and check tell it.
explained ()
{
  local why="$1"
  "$RAWTRACK" info disk.qcow2 >info.txt
  grep -qF "data file changed: the data file was changed while rawtrack was not tracking it ($why" info.txt ||
    { cat info.txt >&2; die "info does not explain ($why)"; }
  "$RAWTRACK" info --json disk.qcow2 >info.json
  json_expect info.json \
    'j["rawtrack-data-file-changed"]["bitmaps-marked-in-use"]' true
  "$RAWTRACK" bitmap list disk.qcow2 >list.txt
  grep -q "^note: the data file was changed while rawtrack was not tracking it" list.txt ||
    { cat list.txt >&2; die "bitmap list does not explain"; }
  grep -q "inconsistent" list.txt || die "bitmap list: not inconsistent"
  "$RAWTRACK" check disk.qcow2 >check.txt 2>&1 || true
  grep -q "^Note: the data file was changed while rawtrack" check.txt ||
    { cat check.txt >&2; die "check does not explain"; }
}

# 1. Clean cycles (io, serve) never trigger it.
fresh
for i in 1 2 3; do
  expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x2$i ${i}M 64k"
done
sock="$tmpdir/s.sock"
"$RAWTRACK" serve disk.qcow2 --socket "$sock" &
spid=$!
cleanup_fn kill "$spid"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || die "server did not start"
expect_ok qemu-io -f raw -c "write -P 0x31 5M 64k" "nbd+unix:///?socket=$sock"
kill -TERM "$spid"
wait "$spid" || die "serve exit status"
expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x32 6M 64k"
assert_eq "false false" "$(in_use)" "in-use after clean cycles"
"$RAWTRACK" info disk.qcow2 >info.txt
if grep -q "data file changed" info.txt; then
  die "info reports a change after clean cycles"
fi

# 2. dd into the raw file while nothing runs: info says so at once
#    (pending), the next read-write open marks the bitmaps in use.
sleep 0.05
dd if=/dev/urandom of=disk.raw bs=4k count=1 seek=1000 conv=notrunc \
  status=none
"$RAWTRACK" info disk.qcow2 >info.txt
grep -q "the next read-write open marks every bitmap in use" info.txt ||
  die "info does not report the pending change"
assert_eq "false false" "$(in_use)" "in-use before the next open"
expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x41 7M 64k" 2>io.err
grep -q "warning: .*the data file was changed while rawtrack was not tracking it" io.err ||
  die "io did not warn"
assert_eq "true true" "$(in_use)" "in-use after dd"
explained "change time"
qcheck disk.qcow2 -U
if command -v qemu-nbd >/dev/null 2>&1; then
  st=0
  timeout 10 qemu-nbd -r -f qcow2 -B b1 --socket="$tmpdir/q.sock" \
    disk.qcow2 >qn.txt 2>&1 || st=$?
  cat qn.txt >&2
  [ "$st" -ne 0 ] && grep -qi "inconsistent\|in use" qn.txt ||
    die "qemu-nbd exported an in-use bitmap"
fi
# The explanation stays (later clean cycles keep it) until the bitmaps
# are gone; removing and re-adding them starts afresh.
expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x42 8M 64k"
explained "change time"
expect_ok "$RAWTRACK" bitmap remove disk.qcow2 b1
expect_ok "$RAWTRACK" bitmap remove disk.qcow2 b2
expect_ok "$RAWTRACK" bitmap add disk.qcow2 b1
expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x43 9M 64k"
assert_eq "false" "$(in_use)" "in-use after re-adding"
if "$RAWTRACK" info disk.qcow2 | grep -q "data file changed"; then
  die "the explanation outlived the bitmaps"
fi

# 3. A touch is a change (rawtrack cannot tell it from a write).
fresh
sleep 0.05
touch disk.raw
expect_ok "$RAWTRACK" io disk.qcow2 -c "read 0 4k"
assert_eq "true true" "$(in_use)" "in-use after touch"
explained "change time"

# 4. The file replaced by a copy (restored from a snapshot).
fresh
cp disk.raw copy.raw
mv copy.raw disk.raw
expect_ok "$RAWTRACK" io disk.qcow2 -c "read 0 4k"
assert_eq "true true" "$(in_use)" "in-use after replacing the file"
explained "another file"

# 5. A size change.
fresh
truncate -s 32M disk.raw
expect_ok "$RAWTRACK" io disk.qcow2 -c "read 0 4k"
assert_eq "true true" "$(in_use)" "in-use after truncate"

# 6. QEMU writing through the container is no bypass (it tracks its own
#    writes; it clears rawtrack's autoclear bit, so the record is renewed
#    rather than compared).
fresh
expect_ok qemu-io -f qcow2 -c "write -P 0x51 10M 64k" disk.qcow2
expect_ok "$RAWTRACK" io disk.qcow2 -c "read 0 4k"
assert_eq "false false" "$(in_use)" "in-use after QEMU's own writes"
expect_ok "$RAWTRACK" io disk.qcow2 -c "read 0 4k"
assert_eq "false false" "$(in_use)" "in-use after QEMU's own writes (2)"

# 7. A rawtrack writer killed with -9 (its own writes moved the change
#    time): not a bypass; the bitmaps stay consistent and exact enough.
fresh
mkfifo cmds
"$RAWTRACK" io disk.qcow2 -f cmds >io.log 2>&1 &
iopid=$!
exec 7>cmds
echo "write -P 0x61 11M 64k" >&7
for _ in $(seq 100); do grep -q "^wrote" io.log && break; sleep 0.1; done
grep -q "^wrote" io.log || die "rawtrack io did not write"
kill -9 "$iopid"
wait "$iopid" 2>/dev/null || true
exec 7>&-
expect_ok "$RAWTRACK" io disk.qcow2 -c "read -P 0x61 11M 64k"
assert_eq "false false" "$(in_use)" "in-use after a crashed writer"
qcheck disk.qcow2

echo "$progname: OK"
