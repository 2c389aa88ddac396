#!/usr/bin/env bash
# test-bitmap.sh: `rawtrack bitmap` against QEMU.
#
#  1. Bitmaps made and dirtied by QEMU (qemu-img bitmap --add, qemu-io
#     write / write -z / discard, several granularities, enabled and
#     disabled, odd disk sizes): `rawtrack bitmap dump --json` lists
#     exactly the extents `nbdinfo --map=qemu:dirty-bitmap:NAME` reads from
#     `qemu-nbd -r -B NAME` (also for --offset/--length ranges), the text
#     dump lists the dirty ones, and `list` counts what QEMU counts.
#  2. QEMU opens and uses every bitmap rawtrack writes: after each
#     rawtrack operation qemu-img check is clean and qemu-img info agrees;
#     qemu-io then writes through them, qemu-nbd -B exports them, and the
#     bits are the old bits plus the writes; qemu-img bitmap works on them.
#  3. Refusals: an inconsistent bitmap (qemu-io killed with SIGKILL while
#     it held the image) can only be removed; v2 images; names and
#     granularities qemu-img also refuses; read-only and missing bitmaps.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-img bitmap --help
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
requires python3 --version
# nbdinfo --map with a captive qemu-nbd (libnbd >= 1.12).
requires nbdinfo --help
nbdinfo --help 2>&1 | grep -q -- '--map' || skip "nbdinfo has no --map"

cd "$tmpdir"

MiB=$((1024 * 1024))

# qemu_map IMAGE NAME OUT: nbdinfo's view of the bitmap, as JSON.
qemu_map ()
{
  nbdinfo --map="qemu:dirty-bitmap:$2" --json -- \
    [ qemu-nbd -r -f qcow2 -B "$2" "$1" ] >"$3" ||
    die "nbdinfo --map of bitmap $2 in $1 failed"
}

# map_agrees IMAGE NAME [OFFSET LENGTH]: rawtrack dump --json lists the
# same extents as nbdinfo (clipped to the range), and the text dump lists
# the dirty ones.
map_agrees ()
{
  local img="$1" name="$2" off="${3:-}" len="${4:-}"
  local range=()
  if [ -n "$off" ]; then range=(--offset "$off" --length "$len"); fi
  qemu_map "$img" "$name" q.json
  "$RAWTRACK" bitmap dump "$img" "$name" --json "${range[@]}" >r.json ||
    die "rawtrack bitmap dump --json $img $name ${range[*]} failed"
  "$RAWTRACK" bitmap dump "$img" "$name" "${range[@]}" >r.txt ||
    die "rawtrack bitmap dump $img $name ${range[*]} failed"
  python3 - q.json r.json r.txt "${off:-0}" "${len:--1}" <<'EOF' ||
import json, sys
q = json.load(open(sys.argv[1]))
r = json.load(open(sys.argv[2]))
txt = open(sys.argv[3]).read().split("\n")
off, length = int(sys.argv[4]), int(sys.argv[5])
size = sum(e["length"] for e in q)
end = size if length < 0 else min(size, off + length)
want = []
for e in q:
    s, l, d = e["offset"], e["length"], e["type"] == 1
    a, b = max(s, off), min(s + l, end)
    if a >= b:
        continue
    if want and want[-1][2] == d and want[-1][0] + want[-1][1] == a:
        want[-1][1] += b - a
    else:
        want.append([a, b - a, d])
got = [[e["start"], e["length"], e["dirty"]] for e in r]
if got != want:
    print("rawtrack:", got[:20], file=sys.stderr)
    print("nbdinfo: ", want[:20], file=sys.stderr)
    sys.exit(1)
dirty = ["%d %d" % (s, l) for s, l, d in want if d]
if [t for t in txt if t] != dirty:
    print("text dump:", txt[:20], file=sys.stderr)
    sys.exit(1)
EOF
  die "rawtrack bitmap dump disagrees with nbdinfo --map for $name in $img ${range[*]}"
}

# bitmaps_agree IMAGE: every consistent bitmap's dump agrees with QEMU.
bitmaps_agree ()
{
  local img="$1" name
  qemu-img info -f qcow2 --output=json "$img" >info.json
  for name in $(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))["format-specific"]["data"]
for b in d.get("bitmaps", []):
    if "in-use" not in b["flags"]:
        print(b["name"])' info.json); do
    map_agrees "$img" "$name"
  done
}

# bits_of IMAGE NAME: the dirty extents as one line (for before/after).
bits_of ()
{
  "$RAWTRACK" bitmap dump "$1" "$2" | tr '\n' ';'
}

# ---------------------------------------------------------------------------
# 1. QEMU writes, rawtrack reads.

for size in $((64 * MiB)) $((64 * MiB + 1536)) $((5 * MiB + 512)); do
  rm -f q.qcow2
  qemu-img create -q -f qcow2 q.qcow2 "$size"
  qemu-img bitmap --add q.qcow2 def
  qemu-img bitmap --add -g 512 q.qcow2 g512
  qemu-img bitmap --add -g 4k q.qcow2 g4k
  qemu-img bitmap --add -g 1M q.qcow2 g1m
  qemu-img bitmap --add -g 2G q.qcow2 g2g
  qemu-img bitmap --add --disable q.qcow2 off
  expect_ok qemu-io -f qcow2 \
    -c 'write 0 1k' -c 'write 3000 10' -c 'write 70k 129k' \
    -c 'write -z 1M 64k' -c 'discard 2M 1M' -c 'write 4095k 2k' \
    -c "write $((size - 512)) 512" q.qcow2
  qemu-img bitmap --merge g512 q.qcow2 off
  expect_ok qemu-io -f qcow2 -c 'write 3M 4k' q.qcow2
  qcheck q.qcow2
  bitmaps_agree q.qcow2
  map_agrees q.qcow2 g512 1000 $((3 * MiB))
  map_agrees q.qcow2 g4k 4097 1
  map_agrees q.qcow2 def 0 $((size * 2))
  map_agrees q.qcow2 g1m $((size - 100)) 50
  # dirty bytes: QEMU's count is granules x granularity.
  "$RAWTRACK" bitmap list q.qcow2 --json >list.json
  python3 - list.json <<EOF || die "bitmap list counts"
import json, sys
l = {b["name"]: b for b in json.load(open(sys.argv[1]))}
size = $size
assert list(l) == ["def", "g512", "g4k", "g1m", "g2g", "off"], list(l)
assert l["g2g"]["dirty-bytes"] == 2 ** 31, l["g2g"]
assert l["g2g"]["dirty-percent"] == 100, l["g2g"]
assert l["off"]["flags"] == [] and l["def"]["flags"] == ["auto"]
assert l["g4k"]["granularity"] == 4096
EOF
  "$RAWTRACK" bitmap list q.qcow2 >list.txt
  grep -q '^g2g .*2147483648 *100.00%$' list.txt || { cat list.txt >&2; die "bitmap list text"; }
done

# ---------------------------------------------------------------------------
# 2. rawtrack writes, QEMU uses.

rm -f r.qcow2
"$RAWTRACK" create r.qcow2 $((32 * MiB))
expect_ok "$RAWTRACK" bitmap add r.qcow2 a
expect_ok "$RAWTRACK" bitmap add r.qcow2 b --granularity 512 --disabled
expect_ok "$RAWTRACK" bitmap add r.qcow2 c -g 1M
qcheck r.qcow2
info_agrees r.qcow2
qemu-img info --output=json r.qcow2 >info.json
assert_eq '[{"flags": ["auto"], "name": "a", "granularity": 65536}, {"flags": [], "name": "b", "granularity": 512}, {"flags": ["auto"], "name": "c", "granularity": 1048576}]' \
  "$(json_get info.json 'j["format-specific"]["data"]["bitmaps"]')" "bitmaps after add"
expect_ok qemu-io -f qcow2 -c 'write 100k 300k' -c 'write -z 20M 4k' r.qcow2
qcheck r.qcow2
bitmaps_agree r.qcow2
expect_ok "$RAWTRACK" bitmap merge r.qcow2 a b
map_agrees r.qcow2 b
assert_eq "$(bits_of r.qcow2 a)" "$(bits_of r.qcow2 b)" "b after merge of a (64k into 512)"
expect_ok "$RAWTRACK" bitmap merge r.qcow2 c a
qcheck r.qcow2
before="$(bits_of r.qcow2 a)"
assert_eq "0 1048576;20971520 1048576;" "$before" "a after merge of c (1M into 64k)"
expect_ok "$RAWTRACK" bitmap enable r.qcow2 b
expect_ok "$RAWTRACK" bitmap disable r.qcow2 a
qcheck r.qcow2
info_agrees r.qcow2
# QEMU records into the enabled ones only, on top of rawtrack's bits.
expect_ok qemu-io -f qcow2 -c 'write 30M 64k' r.qcow2
qcheck r.qcow2
assert_eq "$before" "$(bits_of r.qcow2 a)" "disabled a after a QEMU write"
assert_eq "0 1048576;20971520 1048576;31457280 1048576;" \
  "$(bits_of r.qcow2 c)" "enabled c after a QEMU write"
bitmaps_agree r.qcow2
expect_ok "$RAWTRACK" bitmap clear r.qcow2 c
assert_eq "" "$(bits_of r.qcow2 c)" "c after clear"
qcheck r.qcow2
bitmaps_agree r.qcow2
# qemu-img bitmap works on what rawtrack wrote, and the other way round.
expect_ok qemu-img bitmap --merge b r.qcow2 c
expect_ok qemu-img bitmap --remove r.qcow2 a
expect_ok "$RAWTRACK" bitmap remove r.qcow2 b
qcheck r.qcow2
bitmaps_agree r.qcow2
expect_ok "$RAWTRACK" bitmap remove r.qcow2 c
qcheck r.qcow2
# The last one removed: no extension, autoclear bit 0 clear (§5.9).
qemu-img info --output=json r.qcow2 >info.json
assert_eq null "$(json_get info.json 'j["format-specific"]["data"].get("bitmaps")')" "no bitmaps"
python3 - r.qcow2 <<'EOF' || die "autoclear bit 0 left set without bitmaps"
import struct, sys
d = open(sys.argv[1], "rb").read(104)
assert struct.unpack(">Q", d[88:96])[0] & 1 == 0
EOF
# ...and QEMU writes to it without complaint.
expect_ok qemu-io -f qcow2 -c 'write 0 64k' r.qcow2
qcheck r.qcow2

# Cross-image merge, and cluster sizes that move the extension around.
for cs in 512 4096 65536 2097152; do
  rm -f x.qcow2 y.qcow2
  "$RAWTRACK" create x.qcow2 $((8 * MiB)) --cluster-size "$cs"
  qemu-img create -q -f qcow2 -o cluster_size="$cs" y.qcow2 $((8 * MiB))
  qemu-img bitmap --add -g 1k y.qcow2 src
  expect_ok qemu-io -f qcow2 -c 'write 5k 1' -c 'write 7M 33k' y.qcow2
  expect_ok "$RAWTRACK" bitmap add x.qcow2 dst
  expect_ok "$RAWTRACK" bitmap merge x.qcow2 src dst --source-image y.qcow2
  qcheck x.qcow2
  qcheck y.qcow2
  qemu-img info --output=json x.qcow2 >info.json
  want=$((cs < 4096 ? 4096 : cs > 65536 ? 65536 : cs))
  assert_eq "$want" "$(json_get info.json 'j["format-specific"]["data"]["bitmaps"][0]["granularity"]')" \
    "default granularity for cluster size $cs"
  bitmaps_agree x.qcow2
  expect_ok qemu-io -f qcow2 -c 'write 1M 1' x.qcow2
  qcheck x.qcow2
  bitmaps_agree x.qcow2
done

# ---------------------------------------------------------------------------
# 3. Refusals.

rm -f i.qcow2
qemu-img create -q -f qcow2 i.qcow2 $((16 * MiB))
qemu-img bitmap --add i.qcow2 good
qemu-img bitmap --add i.qcow2 bad
qemu-io -f qcow2 -c 'write 0 64k' i.qcow2 >/dev/null
# Make "bad" inconsistent the way it happens: QEMU holding the image dies
# (killed once qemu-io has answered, not at a moment seen by polling: see
# kill9_holding in tests/functions.sh).
kill9_holding i.qcow2
qemu-img info --output=json i.qcow2 >info.json
assert_eq '["in-use", "auto"]' "$(json_get info.json 'j["format-specific"]["data"]["bitmaps"][1]["flags"]')" "flags after kill -9"
for op in "clear i.qcow2 bad" "enable i.qcow2 bad" "disable i.qcow2 bad" \
          "merge i.qcow2 bad good" "merge i.qcow2 good bad" "dump i.qcow2 bad"; do
  # shellcheck disable=SC2086
  if "$RAWTRACK" bitmap $op 2>err.txt; then die "bitmap $op succeeded on an in-use bitmap"; fi
  grep -q "inconsistent" err.txt || { cat err.txt >&2; die "bitmap $op: no 'inconsistent' in the message"; }
  grep -q "rawtrack bitmap remove" err.txt || { cat err.txt >&2; die "bitmap $op: no hint to remove"; }
done
"$RAWTRACK" bitmap list i.qcow2 >list.txt
grep -q '^bad .*in-use,auto *inconsistent' list.txt || { cat list.txt >&2; die "list of an in-use bitmap"; }
"$RAWTRACK" bitmap list i.qcow2 --json >list.json
assert_eq false "$(json_get list.json '"dirty-bytes" in j[1]')" "no count for an in-use bitmap"
expect_ok "$RAWTRACK" bitmap remove i.qcow2 bad
expect_ok "$RAWTRACK" bitmap remove i.qcow2 good
qcheck i.qcow2
info_agrees i.qcow2

# v2.
rm -f v2.qcow2
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 $MiB
if "$RAWTRACK" bitmap add v2.qcow2 x 2>err.txt; then die "bitmap add on a v2 image"; fi
grep -q "Cannot store dirty bitmaps in qcow2 v2 files" err.txt || { cat err.txt >&2; die "v2 message"; }

# Names and granularities: rawtrack refuses what qemu-img refuses.
rm -f n.qcow2 m.qcow2
qemu-img create -q -f qcow2 n.qcow2 $((4 * MiB))
qemu-img create -q -f qcow2 m.qcow2 $((4 * MiB))
long1023="$(printf 'x%.0s' $(seq 1023))"
for args in "-g 256 g" "-g 3000 g" "-g 4G g" "-g 2G g2" "-g 512 g3" \
            "-g 64k g4" "nm" "nm" "$long1023" "${long1023}y"; do
  # shellcheck disable=SC2086
  set -- $args
  name="${*: -1}"
  qst=0; rst=0
  if [ $# -eq 3 ]; then
    qemu-img bitmap --add "$1" "$2" n.qcow2 "$name" 2>/dev/null || qst=$?
    "$RAWTRACK" bitmap add m.qcow2 "$name" --granularity "$2" 2>/dev/null || rst=$?
  else
    qemu-img bitmap --add n.qcow2 "$name" 2>/dev/null || qst=$?
    "$RAWTRACK" bitmap add m.qcow2 "$name" 2>/dev/null || rst=$?
  fi
  assert_eq "$qst" "$rst" "exit status of bitmap add ${args:0:40}"
done
# An empty name.
qst=0; rst=0
qemu-img bitmap --add n.qcow2 '' 2>/dev/null || qst=$?
"$RAWTRACK" bitmap add m.qcow2 '' 2>/dev/null || rst=$?
assert_eq "$qst" "$rst" "exit status of bitmap add ''"
qcheck m.qcow2
qemu-img info --output=json n.qcow2 >n.json
qemu-img info --output=json m.qcow2 >m.json
assert_eq "$(json_get n.json 'j["format-specific"]["data"]["bitmaps"]')" \
  "$(json_get m.json 'j["format-specific"]["data"]["bitmaps"]')" "bitmap lists"
"$RAWTRACK" bitmap add m.qcow2 nm 2>err.txt && die "duplicate add"
grep -q "Bitmap already exists: nm" err.txt || die "duplicate message"
"$RAWTRACK" bitmap remove m.qcow2 zz 2>err.txt && die "remove of a missing bitmap"
grep -q "Dirty bitmap 'zz' not found" err.txt || die "missing message"
# Different sizes.
"$RAWTRACK" bitmap merge m.qcow2 src nm --source-image y.qcow2 2>err.txt &&
  die "merge of different sizes"
grep -q "Bitmaps are of different sizes" err.txt || { cat err.txt >&2; die "sizes message"; }
# Read-only file.
chmod a-w m.qcow2
if [ "$(id -u)" != 0 ]; then
  expect_exit 1 "$RAWTRACK" bitmap add m.qcow2 ro
fi
expect_ok "$RAWTRACK" bitmap list m.qcow2
chmod u+w m.qcow2
# Usage errors.
expect_exit 1 "$RAWTRACK" bitmap
expect_exit 1 "$RAWTRACK" bitmap frob m.qcow2 x
expect_exit 1 "$RAWTRACK" bitmap add m.qcow2
expect_exit 1 "$RAWTRACK" bitmap remove m.qcow2 nm --granularity 4k
expect_exit 1 "$RAWTRACK" bitmap add m.qcow2 q --granularity 12x
expect_ok "$RAWTRACK" bitmap --help
for sub in add remove clear enable disable merge list dump; do
  expect_ok "$RAWTRACK" bitmap "$sub" --help
done
expect_ok "$RAWTRACK" help bitmap
qcheck m.qcow2

echo "$progname: OK"
