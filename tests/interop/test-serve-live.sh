#!/usr/bin/env bash
# rawtrack test: live point-in-time views of a served disk through
# `serve --control` (docs/control.md), with real clients: qemu-io and fio
# write over NBD, nbdcopy and nbdinfo read the point-in-time export.
#
#  1. the control socket is mode 0600, the registry entry names the image
#     (dev/ino) and goes at a clean exit; malformed, overlong and unknown
#     requests get errors naming the problem and the server goes on
#  2. full view: pattern A through NBD, checkpoint + backup-begin, then the
#     whole disk overwritten with B by 4 fio jobs (several NBD connections)
#     while nbdcopy reads the point-in-time export: it reads exactly A,
#     during and after the overwrite; the guest export reads B
#  3. incremental view: writes at known places, checkpoint freezing the
#     previous bitmap: nbdinfo --map of qemu:dirty-bitmap:OLD on the
#     point-in-time export is exactly those places, and they read as they
#     were while fio randwrite with verify races the copy
#  4. fleecing limit exceeded: guest writes all succeed, the view fails,
#     its export answers EIO, backup-end success becomes failure and the
#     frozen bits are merged into the new bitmap (nothing lost)
#  5. two images in one serve, one checkpoint for both: one instant (a
#     writer stamps the same counter on A then B; the views differ by at
#     most the one write in between)
#  6. kill -9 during a view: after a restart the frozen (disabled) and the
#     new (enabled) bitmap together cover every write; a new checkpoint
#     can freeze both and publishes both
#  7. a sparse 2 TiB disk, two views at once
#  8. the race of a point-in-time read with copy-before-write, made
#     certain by a test hook: the view's read waits after reading the image
#     while a guest write saves and overwrites the same chunk; the read
#     must still return the old data (readers take no lock against savers)
# Cheap: a 16 MiB sparse disk; LIVE_ROUNDS=N repeats the race of 2 and 3.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires qemu-io --version
requires nbdcopy --version
requires nbdinfo --version
requires fio --version
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio has no nbd engine"

ctl="$PYTHON $interop_dir/control.py"
cd "$tmpdir"
size=$((16 << 20))
rounds=${LIVE_ROUNDS:-1}
export XDG_RUNTIME_DIR="$tmpdir/run"
mkdir -m 0700 "$XDG_RUNTIME_DIR"

srv_pid=
start_server ()
{
  rm -f nbd.sock ctl.sock
  "$RAWTRACK" serve "$@" --socket "$tmpdir/nbd.sock" \
      --control "$tmpdir/ctl.sock" &
  srv_pid=$!
  for _ in $(seq 100); do
    [ -S ctl.sock ] && [ -S nbd.sock ] && return 0
    kill -0 "$srv_pid" 2>/dev/null || die "serve $* did not start"
    sleep 0.1
  done
  die "serve $* did not create its sockets"
}
stop_server ()
{
  kill "$srv_pid"
  wait "$srv_pid" || die "serve exited with $?"
  srv_pid=
}
cleanup_server () { [ -z "$srv_pid" ] || kill -9 "$srv_pid" 2>/dev/null || :; }
trap 'cleanup_server' EXIT

uri="nbd+unix:///?socket=$tmpdir/nbd.sock"
pit_uri () { echo "nbd+unix:///$1?socket=$tmpdir/nbd.sock"; }

# json_get JSON EXPR: a Python expression over r, the parsed response.
json_get () { "$PYTHON" -c 'import json,sys; r=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"; }

# pattern_check FILE BYTE [OFFSET LENGTH]: every byte of the range is BYTE.
pattern_check ()
{
  "$PYTHON" - "$@" <<'EOF' || die "$1 is not all $2 in the range"
import sys
f, b = sys.argv[1], int(sys.argv[2], 0)
off = int(sys.argv[3]) if len(sys.argv) > 3 else 0
with open(f, 'rb') as fp:
    fp.seek(off)
    d = fp.read(int(sys.argv[4])) if len(sys.argv) > 4 else fp.read()
bad = [i for i in range(0, len(d), 4096) if d[i:i+4096] != bytes([b]) * len(d[i:i+4096])]
if bad:
    print(f"{f}: {len(bad)} 4 KiB blocks differ from {b:#x}, first at {off + bad[0]}")
    sys.exit(1)
EOF
}

fio_write ()                      # fio_write URI PATTERN JOBS RW [more]
{
  local u=$1 pat=$2 jobs=$3 rw=$4
  shift 4
  fio --name=w --ioengine=nbd --uri="$u" --rw="$rw" --bs=64k \
      --size=$((size / jobs)) --offset_increment=$((size / jobs)) \
      --numjobs="$jobs" --iodepth=8 --buffer_pattern="$pat" \
      --group_reporting --output=/dev/null "$@"
}

truncate -s $size disk.raw
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null

# ---- 1. the socket, the registry, bad requests ----------------------

echo "$progname: part 1 at ${SECONDS}s"
start_server disk.qcow2 --fleece-limit 100%
[ "$(stat -c %a ctl.sock)" = 600 ] || die "control socket mode $(stat -c %a ctl.sock)"
entry="$XDG_RUNTIME_DIR/rawtrack/$(stat -c %d disk.qcow2)-$(stat -c %i disk.qcow2).json"
[ -f "$entry" ] || die "no registry entry $entry"
[ "$(json_get "$(cat "$entry")" 'r["control"]')" = "$tmpdir/ctl.sock" ] || die "registry: $(cat "$entry")"
[ "$(json_get "$(cat "$entry")" 'r["pid"]')" = "$srv_pid" ] || die "registry pid: $(cat "$entry")"
q=$($ctl ctl.sock '{"id": [1, "x"], "command": "query"}')
[ "$(json_get "$q" 'r["id"]')" = "[1, 'x']" ] || die "id not echoed: $q"
[ "$(json_get "$q" 'r["exports"][0]["ino"]')" = "$(stat -c %i disk.qcow2)" ] || die "query: $q"
out=$($ctl --raw ctl.sock '{"command": "query"\n[1,2]\n{"command": "frobnicate"}\n{"command": "checkpoint", "new": "x", "bogus": 1}\n\n')
echo "$out"
[ "$(echo "$out" | grep -c '"ok": false')" = 4 ] || die "bad requests: $out"
echo "$out" | grep -q 'invalid JSON' || die "no JSON error: $out"
echo "$out" | grep -q "unknown command 'frobnicate'" || die "$out"
echo "$out" | grep -q "unknown argument 'bogus'" || die "$out"
out=$($ctl --raw ctl.sock "$(head -c 70000 /dev/zero | tr '\0' x)\n{\"id\": 7, \"command\": \"query\"}\n")
echo "$out" | grep -q 'longer than 65536' || die "overlong line: ${out:0:200}"
echo "$out" | grep -q '"id": 7, "ok": true' || die "no answer after an overlong line"
# A second server on the same control socket is refused.
truncate -s 1M other.raw
"$RAWTRACK" attach other.raw other.qcow2 >/dev/null
if "$RAWTRACK" serve other.qcow2 --socket "$tmpdir/other.sock" --control "$tmpdir/ctl.sock" 2>err; then
  die "a second server took over the control socket"
fi
cat err
grep -q "control.*in use" err || die "$(cat err)"

for round in $(seq "$rounds"); do
  # ---- 2. full view: A frozen, B written while it is copied ----------
  echo "$progname: part 2 at ${SECONDS}s"
  qemu-io -f raw -c "write -P 0xaa 0 $size" "$uri" >/dev/null
  $ctl ctl.sock "{\"command\": \"checkpoint\", \"new\": \"c$round\", \"freeze\": $([ "$round" = 1 ] && echo '[]' || echo "[\"i$((round - 1))\"]")}" \
      '{"command": "backup-begin", "checkpoint": "c'"$round"'"}' >resp ||
    die "checkpoint/backup-begin: $(cat resp)"
  pit=$(json_get "$(tail -1 resp)" 'r["exports"][0]["name"]')
  [ "$pit" = "@c$round" ] || die "export name $pit"
  fio_write "$uri" 0xbb 4 write &
  fio_pid=$!
  nbdcopy --connections=2 "$(pit_uri "$pit")" during.raw
  wait $fio_pid || die "fio overwrite failed"
  nbdcopy "$(pit_uri "$pit")" after.raw
  pattern_check during.raw 0xaa
  pattern_check after.raw 0xaa
  nbdcopy "$uri" guest.raw
  pattern_check guest.raw 0xbb
  q=$($ctl ctl.sock '{"command": "query"}')
  [ "$(json_get "$q" 'r["views"][0]["state"]')" = published ] || die "$q"
  [ "$(json_get "$q" 'r["views"][0]["cbw_bytes"]')" = $size ] || die "cbw_bytes: $q"
  $ctl ctl.sock '{"command": "backup-end", "checkpoint": "c'"$round"'", "result": "success"}' >resp ||
    die "backup-end: $(cat resp)"
  [ "$(json_get "$($ctl ctl.sock '{"command": "query"}')" 'r["cbw_bytes"]')" = 0 ] || die "store not dropped"
  if nbdinfo --size "$(pit_uri "$pit")" 2>/dev/null; then die "$pit still exported"; fi

  # ---- 3. incremental: the frozen bits and their old data -----------

  echo "$progname: part 3 at ${SECONDS}s"
  # c has recorded the overwrite: a checkpoint without a view starts a
  # clean m (and its backup-end drops c).
  $ctl ctl.sock "{\"command\": \"checkpoint\", \"new\": \"m$round\", \"freeze\": [\"c$round\"], \"view\": false}" \
      "{\"command\": \"backup-end\", \"checkpoint\": \"m$round\", \"result\": \"success\"}" >resp ||
    die "checkpoint without a view: $(cat resp)"
  qemu-io -f raw -c "write -P 0x11 $((2 << 20)) 1M" -c "write -P 0x12 $((10 << 20)) 64k" \
      -c "write -P 0x13 $((size - 4096)) 4k" "$uri" >/dev/null
  $ctl ctl.sock "{\"command\": \"checkpoint\", \"new\": \"i$round\", \"freeze\": [\"m$round\"]}" \
      "{\"command\": \"backup-begin\", \"checkpoint\": \"i$round\"}" >resp || die "$(cat resp)"
  [ "$(json_get "$(head -1 resp)" 'r["full"]')" = False ] || die "not incremental: $(cat resp)"
  fio --name=v --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --size=$size \
      --iodepth=16 --numjobs=1 --verify=crc32c --verify_fatal=1 --randseed=$round \
      --io_size=$((4 << 20)) --output=fio.out &
  fio_pid=$!
  nbdinfo --map="qemu:dirty-bitmap:m$round" "$(pit_uri "@i$round")" >map
  cat map
  "$PYTHON" - map $size <<'EOF' || die "frozen bitmap map differs"
import sys
size = int(sys.argv[2])
got = [tuple(int(x) for x in l.split()[:3]) for l in open(sys.argv[1]) if l.split()]
dirty = [(o, n) for o, n, t in got if t & 1]
want = [(2 << 20, 1 << 20), (10 << 20, 64 << 10), (size - 65536, 65536)]
if dirty != want:
    print("dirty", dirty, "want", want); sys.exit(1)
EOF
  nbdcopy "$(pit_uri "@i$round")" inc.raw
  wait $fio_pid || { cat fio.out; die "fio randwrite with verify failed"; }
  nbdcopy "$(pit_uri "@i$round")" inc2.raw
  for f in inc.raw inc2.raw; do
    pattern_check $f 0x11 $((2 << 20)) $((1 << 20))
    pattern_check $f 0x12 $((10 << 20)) 65536
    pattern_check $f 0x13 $((size - 4096)) 4096
    pattern_check $f 0xbb $((size - 65536)) $((65536 - 4096))
  done
  $ctl ctl.sock "{\"command\": \"backup-end\", \"checkpoint\": \"i$round\", \"result\": \"success\"}" >resp ||
    die "$(cat resp)"
done
stop_server
[ ! -e "$entry" ] || die "registry entry left at a clean exit"
[ ! -e ctl.sock ] || die "control socket left at a clean exit"

# ---- 4. the fleecing limit ------------------------------------------

echo "$progname: part 4 at ${SECONDS}s"
start_server disk.qcow2 --fleece-limit 1M
last=i$rounds
$ctl ctl.sock "{\"command\": \"checkpoint\", \"new\": \"f1\", \"freeze\": [\"$last\"], \"full\": true}" \
    '{"command": "backup-begin", "checkpoint": "f1"}' >/dev/null || die "checkpoint f1"
fio_write "$uri" 0xcc 2 write || die "guest writes failed over the fleecing limit"
nbdcopy "$uri" guest.raw
pattern_check guest.raw 0xcc
q=$($ctl ctl.sock '{"command": "query"}')
[ "$(json_get "$q" 'r["views"][0]["state"]')" = failed ] || die "view not failed: $q"
json_get "$q" 'r["views"][0]["reason"]' | grep -q limit || die "$q"
if nbdcopy "$(pit_uri @f1)" pit.raw 2>err; then die "a failed view was readable"; fi
cat err
if $ctl ctl.sock '{"command": "backup-end", "checkpoint": "f1", "result": "success"}' >resp; then
  die "backup-end of a failed view succeeded: $(cat resp)"
fi
[ "$(json_get "$(cat resp)" 'r["result"]')" = failure ] || die "$(cat resp)"
stop_server
# f1 holds what $last marked (merged back) plus everything written since.
"$RAWTRACK" bitmap list disk.qcow2 | tee list
! grep -qw "$last" list || die "$last not removed"
"$RAWTRACK" bitmap dump disk.qcow2 f1 --json >dump
"$PYTHON" - dump $size <<'EOF' || die "f1 does not cover the disk"
import json, sys
d = json.load(open(sys.argv[1]))
ext = d["extents"] if isinstance(d, dict) else d
dirty = sum(e["length"] for e in ext if e.get("dirty"))
assert dirty == int(sys.argv[2]), (dirty, d)
EOF

# ---- 5. two images, one checkpoint ----------------------------------

echo "$progname: part 5 at ${SECONDS}s"
truncate -s $size b.raw
"$RAWTRACK" attach b.raw b.qcow2 >/dev/null
start_server a=disk.qcow2 b=b.qcow2 --fleece-limit 100%
ua="nbd+unix:///a?socket=$tmpdir/nbd.sock"
ub="nbd+unix:///b?socket=$tmpdir/nbd.sock"
# Stamps: 1 before, then k + 1 on a, then on b (k < 250).
qemu-io -f raw -c "write -P 1 0 4k" "$ua" >/dev/null
qemu-io -f raw -c "write -P 1 0 4k" "$ub" >/dev/null
( for k in $(seq 1 200); do
    p=$(printf '0x%02x' $((k + 1)))
    qemu-io -f raw -c "write -P $p 0 4k" "$ua" >/dev/null
    qemu-io -f raw -c "write -P $p 0 4k" "$ub" >/dev/null
    echo $k >stamp
  done ) &
writer=$!
sleep 1
# a has f1 frozen (all of a dirty since part 4): incremental; b nothing: full.
$ctl ctl.sock '{"command": "checkpoint", "new": "g1", "freeze": {"a": ["f1"]}, "exports": ["a", "b"]}' \
    '{"command": "backup-begin", "checkpoint": "g1"}' >resp || die "$(cat resp)"
[ "$(json_get "$(tail -1 resp)" '[(e["name"], e["full"]) for e in r["exports"]]')" = "[('a@g1', False), ('b@g1', True)]" ] ||
  die "per-disk full: $(cat resp)"
sleep 0.5
kill $writer 2>/dev/null || :
wait $writer 2>/dev/null || :
qemu-io -f raw -r -c 'read -v 0 1' "$(pit_uri a@g1)" | head -1 >va
qemu-io -f raw -r -c 'read -v 0 1' "$(pit_uri b@g1)" | head -1 >vb
va=$((16#$(awk '{print $2}' va))); vb=$((16#$(awk '{print $2}' vb)))
echo "group: a@g1 has stamp $va, b@g1 has $vb"
[ "$va" -ge 2 ] || die "the writer had not started"
[ "$va" = "$vb" ] || [ "$va" = $((vb + 1)) ] || die "a and b frozen at different instants ($va, $vb)"
q=$($ctl ctl.sock '{"command": "query"}')
[ "$(json_get "$q" 'len(r["exports"])')" = 2 ] || die "$q"
[ "$(json_get "$q" 'r["views"][0]["frozen"]["a"]')" = "['f1']" ] || die "$q"
$ctl ctl.sock '{"command": "backup-end", "checkpoint": "g1", "result": "success"}' >/dev/null || die "g1 end"

# ---- 6. kill -9 during a view ---------------------------------------

echo "$progname: part 6 at ${SECONDS}s"
qemu-io -f raw -c "write -P 0x21 $((4 << 20)) 1M" "$ua" >/dev/null     # into g1
$ctl ctl.sock '{"command": "checkpoint", "new": "k1", "freeze": ["g1"], "exports": ["a"]}' \
    '{"command": "backup-begin", "checkpoint": "k1"}' >/dev/null || die "k1"
qemu-io -f raw -c "write -P 0x22 $((12 << 20)) 1M" "$ua" >/dev/null    # into k1
kill -9 "$srv_pid"
wait "$srv_pid" 2>/dev/null || :
srv_pid=
start_server a=disk.qcow2 b=b.qcow2 --fleece-limit 100%
q=$($ctl ctl.sock '{"command": "query"}')
[ "$(json_get "$q" '[(b["name"], b["enabled"]) for b in r["exports"][0]["bitmaps"]]')" = "[('g1', False), ('k1', True)]" ] ||
  die "bitmaps after kill -9: $q"
$ctl ctl.sock '{"command": "checkpoint", "new": "k2", "freeze": ["g1", "k1"], "exports": ["a"]}' \
    '{"command": "backup-begin", "checkpoint": "k2"}' >resp || die "$(cat resp)"
for b in g1 k1; do
  nbdinfo --map="qemu:dirty-bitmap:$b" "$(pit_uri a@k2)" | awk '$3 == 1 {print $1, $2}' >map.$b
done
# Covered (a crash may leave more bits set, never fewer).
covers ()                        # covers MAPFILE OFFSET LENGTH
{
  "$PYTHON" -c '
import sys
ext = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
lo, n = int(sys.argv[2]), int(sys.argv[3])
sys.exit(0 if any(o <= lo and lo + n <= o + m for o, m in ext) else 1)' "$@"
}
covers map.g1 $((4 << 20)) $((1 << 20)) || die "g1 lost the write before the crash: $(cat map.g1)"
covers map.k1 $((12 << 20)) $((1 << 20)) || die "k1 lost the write after the checkpoint: $(cat map.k1)"
$ctl ctl.sock '{"command": "backup-end", "checkpoint": "k2", "result": "success"}' >/dev/null || die "k2 end"
stop_server

# ---- 7. a sparse 2 TiB disk, two views at once -----------------------------
echo "$progname: part 7 at ${SECONDS}s"
big=$((2 << 40))
truncate -s $big big.raw
"$RAWTRACK" attach big.raw big.qcow2 >/dev/null
start_server big.qcow2
end=$((big - 65536))
qemu-io -f raw -c "write -P 0xa1 1T 1M" -c "write -P 0xa2 $end 64k" "$uri" >/dev/null
$ctl ctl.sock '{"command": "checkpoint", "new": "t1"}' \
    '{"command": "backup-begin", "checkpoint": "t1"}' >/dev/null || die "t1"
qemu-io -f raw -c "write -P 0xb1 1T 1M" -c "write -P 0xb2 $end 64k" "$uri" >/dev/null
$ctl ctl.sock '{"command": "checkpoint", "new": "t2", "freeze": ["t1"]}' \
    '{"command": "backup-begin", "checkpoint": "t2"}' >/dev/null || die "t2"
qemu-io -f raw -c "write -P 0xc1 1T 1M" -c "write -P 0xc2 0 4k" "$uri" >/dev/null
qemu-io -f raw -r -c "read -P 0xa1 1T 1M" -c "read -P 0xa2 $end 64k" -c "read -P 0 0 4k" \
    "$(pit_uri @t1)" | grep -q Pattern && die "@t1 does not read as at t1"
qemu-io -f raw -r -c "read -P 0xb1 1T 1M" -c "read -P 0xb2 $end 64k" \
    "$(pit_uri @t2)" | grep -q Pattern && die "@t2 does not read as at t2"
nbdinfo --map=qemu:dirty-bitmap:t1 "$(pit_uri @t2)" | awk '$3 == 1 {print $1, $2}' >map.t1
[ "$(cat map.t1)" = "$((1 << 40)) $((1 << 20))
$end 65536" ] || die "t1 on 2 TiB: $(cat map.t1)"
q=$($ctl ctl.sock '{"command": "query"}')
# t1 saved 1 MiB + 64 KiB (the 4 KiB at 0 was a hole at t1: a full view
# serves it as zeros without saving it); t2 1 MiB (the 4 KiB at 0 is not
# in t1's bits).
[ "$(json_get "$q" '[v["cbw_bytes"] for v in r["views"]]')" = "[1048576, 1114112]" ] || die "$q"
stop_server

# ---- 8. a read racing copy-before-write ------------------------------------
echo "$progname: part 8 at ${SECONDS}s"
RAWTRACK_TEST_VIEW_READ_DELAY_MS=1500 start_server disk.qcow2
qemu-io -f raw -c "write -P 0x5a 0 256k" "$uri" >/dev/null
$ctl ctl.sock '{"command": "checkpoint", "new": "r1", "full": true}' \
    '{"command": "backup-begin", "checkpoint": "r1"}' >/dev/null || die "r1"
qemu-io -f raw -r -c "read -P 0x5a 0 256k" "$(pit_uri @r1)" >race.out 2>&1 &
reader=$!
sleep 0.5                        # the reader is inside its delay now
t0=$SECONDS
qemu-io -f raw -c "write -P 0x5b 0 256k" "$uri" >/dev/null
[ $((SECONDS - t0)) -le 1 ] || echo "$progname: the guest write waited for the read"
wait $reader || die "the point-in-time read failed: $(cat race.out)"
grep -q Pattern race.out && die "a read racing copy-before-write returned new data: $(cat race.out)"
qemu-io -f raw -r -c "read -P 0x5b 0 256k" "$uri" | grep -q Pattern && die "guest data"
$ctl ctl.sock '{"command": "backup-end", "checkpoint": "r1", "result": "success"}' >/dev/null || die "r1 end"
stop_server

# ---- 9. a read-once view: writes to what its reader has had are not saved --
echo "$progname: part 9 at ${SECONDS}s"
start_server disk.qcow2 --fleece-limit 100% 2>serve.log
qemu-io -f raw -c "write -P 0x61 0 4M" "$uri" >/dev/null
$ctl ctl.sock '{"command": "checkpoint", "new": "o1", "full": true}' \
    '{"command": "backup-begin", "checkpoint": "o1", "read_once": true}' >/dev/null || die "o1"
# The reader has had [0, 1M) and [2M, 2M + 6k) (its last 2 KiB chunk-part
# is not whole: that chunk stays needed).
qemu-io -f raw -r -c "read -P 0x61 0 1M" -c "read -P 0x61 2M 6k" "$(pit_uri @o1)" \
  | grep -q Pattern && die "@o1 first reads"
qemu-io -f raw -c "write -P 0x62 0 4M" "$uri" >/dev/null
q=$($ctl ctl.sock '{"command": "query"}')
# Saved: 4M minus the 1M and the one whole 4 KiB chunk the reader had.
[ "$(json_get "$q" 'r["views"][0]["cbw_saved"]')" = $(((3 << 20) - 4096)) ] || die "o1 saved: $q"
# What the reader has not had yet is still the checkpoint's data.
qemu-io -f raw -r -c "read -P 0x61 1M 1M" -c "read -P 0x61 $(((2 << 20) + 4096)) $(((2 << 20) - 4096))" \
  "$(pit_uri @o1)" | grep -q Pattern && die "@o1 changed where it was not read"
# Read again: refused, never the new data.
qemu-io -f raw -r -c "read 0 64k" "$(pit_uri @o1)" >reread.out 2>&1 || :
grep -q 'Input/output error' reread.out || die "a read-once view read twice: $(cat reread.out)"
grep -q 'read again' serve.log || die "serve did not say why the read failed"
$ctl ctl.sock '{"command": "backup-end", "checkpoint": "o1", "result": "success"}' >/dev/null || die "o1 end"
stop_server

qemu-img check disk.qcow2 >/dev/null || die "qemu-img check disk.qcow2"
qemu-img check b.qcow2 >/dev/null || die "qemu-img check b.qcow2"
echo "$progname: ok ($rounds round(s))"
