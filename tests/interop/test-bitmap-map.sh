#!/usr/bin/env bash
# rawtrack bitmap map: the picture of where a disk is dirty.
#
#  - Per-cell dirty bytes (--json) equal those computed here from the
#    extents QEMU exports (`nbdinfo --map=qemu:dirty-bitmap:NAME` of
#    `qemu-nbd -r -B NAME`), for bitmaps QEMU wrote (qemu-io), several
#    widths and two granularities; cells are whole granules.
#  - The terminal strip (--ascii, and Unicode under a UTF-8 locale) shades
#    each cell as its fraction says; a C locale falls back to ASCII.
#  - --svg writes well-formed XML (python3 xml.etree) with one cell per
#    slice, clean cells grey and dirty ones not.
#  - A sparse 15 TiB disk maps in one pass over its extents (the dirty
#    bytes agree with `bitmap dump --json`), under a generous timeout.
#  - Bad input: a missing bitmap, --width 0, an unwritable --svg, options
#    given to the wrong subcommand: clean errors.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
requires "$PYTHON" --version
nbdinfo_help=$(nbdinfo --help 2>&1 || true)
grep -q -- '--map' <<<"$nbdinfo_help" || skip "nbdinfo has no --map"
cd "$tmpdir"

MiB=$((1024 * 1024))

# A 1 GiB + 192 KiB disk (the last cell is shorter), two bitmaps QEMU
# records guest writes in, written by qemu-io at seeded random places.
size=$((1024 * MiB + 192 * 1024))
qemu-img create -q -f qcow2 d.qcow2 "$size"
qemu-img bitmap --add --granularity 64k d.qcow2 b64k
qemu-img bitmap --add --granularity 1M d.qcow2 b1m
"$PYTHON" - "$size" >cmds.txt <<'PY'
import random, sys
size = int(sys.argv[1])
rnd = random.Random(11)
# a dense run, a whole-cell run, scattered small writes, the very end
print("write 0 3M")
print("write %d 64M" % (256 << 20))
for _ in range(60):
    off = rnd.randrange(0, size - 8192) // 512 * 512
    print("write %d %d" % (off, rnd.choice([512, 4096, 65536, 200704])))
print("write %d 512" % (size - 512))
PY
qemu-io -f qcow2 d.qcow2 <cmds.txt >/dev/null || die "qemu-io writes failed"

# cells_agree NAME WIDTH: map --json's cells are QEMU's extents, summed.
cells_agree ()
{
  local name="$1" width="$2"
  if [ ! -f "q-$name.json" ]; then
    nbdinfo --map="qemu:dirty-bitmap:$name" --json -- \
      [ qemu-nbd -r -f qcow2 -B "$name" d.qcow2 ] >"q-$name.json" ||
      die "nbdinfo --map of $name failed"
  fi
  cp "q-$name.json" q.json
  "$RAWTRACK" bitmap map d.qcow2 "$name" --json --width "$width" >m.json ||
    die "bitmap map $name --json --width $width failed"
  "$PYTHON" - q.json m.json "$width" <<'PY' ||
import json, sys
q = json.load(open(sys.argv[1]))
m = json.load(open(sys.argv[2]))
width = int(sys.argv[3])
size = sum(e["length"] for e in q)
g = m["granularity"]
assert m["virtual-size"] == size, (m["virtual-size"], size)
cells = min(width, -(-size // g))
slice_ = -(-(-(-size // cells)) // g) * g    # ceil(size/cells) up to g
assert m["slice-size"] == slice_, (m["slice-size"], slice_)
n = -(-size // slice_)
assert len(m["slices"]) == n, (len(m["slices"]), n)
want = [0] * n
for e in q:
    if e["type"] != 1:
        continue
    s, end = e["offset"], e["offset"] + e["length"]
    while s < end:
        i = s // slice_
        t = min(end, (i + 1) * slice_)
        want[i] += t - s
        s = t
total = sum(want)
assert total > 0
assert m["dirty-bytes"] == total, (m["dirty-bytes"], total)
for i, c in enumerate(m["slices"]):
    length = min(slice_, size - i * slice_)
    assert c["start"] == i * slice_ and c["length"] == length, (i, c)
    assert c["dirty-bytes"] == want[i], (i, c, want[i])
    assert abs(c["dirty-fraction"] - want[i] / length) < 1e-12, (i, c)
print("%s width %d: %d cells of %d, %d dirty bytes agree with nbdinfo"
      % (m["bitmap"], width, n, slice_, total), file=sys.stderr)
PY
    die "bitmap map --json $name --width $width disagrees with nbdinfo --map"
}

for w in 1 7 64 333 5000 100000; do
  cells_agree b64k "$w"
done
for w in 3 100 2000; do
  cells_agree b1m "$w"
done

# The strip: each cell's character is its shade.  Rows wrap at $COLUMNS
# and carry the offset they start at.
strip_agrees ()
{
  local width="$1" loc="$2"; shift 2
  "$RAWTRACK" bitmap map d.qcow2 b64k --json --width "$width" >m.json
  LC_ALL="$loc" COLUMNS=60 "$RAWTRACK" bitmap map d.qcow2 b64k \
    --width "$width" "$@" >strip.txt
  "$PYTHON" - m.json strip.txt "$loc" "$*" <<'PY' ||
import json, sys
m = json.load(open(sys.argv[1]))
lines = open(sys.argv[2], encoding="utf-8").read().split("\n")
utf8 = "UTF-8" in sys.argv[3] and "--ascii" not in sys.argv[4]
shades = " \u2591\u2592\u2593\u2588" if utf8 else " .oO#"
assert lines[0].startswith("d.qcow2, bitmap 'b64k': 1 GiB disk"), lines[0]
assert ("%d bytes" % m["dirty-bytes"]) in lines[0], lines[0]
rows = [l for l in lines[1:] if "|" in l]
got = "".join(l[l.index("|") + 1:l.rindex("|")] for l in rows)
want = ""
for c in m["slices"]:
    d, n = c["dirty-bytes"], c["length"]
    k = 0 if d == 0 else 4 if d >= n else 1 if 3 * d <= n else 2 if 3 * d <= 2 * n else 3
    want += shades[k]
assert got == want, (got, want)
assert all(len(l) <= 60 for l in rows), [len(l) for l in rows]
assert any(ch not in " " for ch in got)
assert lines[-2].startswith("legend:") and shades[1] in lines[-2], lines[-2]
PY
    die "bitmap map strip (width $width, LC_ALL=$loc $*) does not match the cells"
}
strip_agrees 40 C --ascii
strip_agrees 200 C
strip_agrees 200 C.UTF-8
strip_agrees 200 C.UTF-8 --ascii
strip_agrees 1 C.UTF-8

# The shade bands at their edges: a 48 MiB disk in 16 cells of 3 MiB (48
# granules of 64 KiB); cell k (< 8) has 0, 1, 16 (1/3), 17, 32 (2/3), 33,
# 47, 48 granules dirty, written by QEMU.
qemu-img create -q -f qcow2 s.qcow2 48M
qemu-img bitmap --add --granularity 64k s.qcow2 b
k=0
for n in 0 1 16 17 32 33 47 48; do
  if [ "$n" -gt 0 ]; then
    echo "write $((k * 3 * MiB)) $((n * 65536))"
  fi
  k=$((k + 1))
done | qemu-io -f qcow2 s.qcow2 >/dev/null || die "qemu-io writes failed"
LC_ALL=C "$RAWTRACK" bitmap map s.qcow2 b --width 16 >s.txt
assert_eq "         0 | ..ooOO#        |" "$(sed -n 2p s.txt)" "shade bands (ASCII)"
LC_ALL=C.UTF-8 "$RAWTRACK" bitmap map s.qcow2 b --width 16 >s.txt
assert_eq "         0 | ░░▒▒▓▓█        |" "$(sed -n 2p s.txt)" "shade bands (UTF-8)"

# The SVG parses as XML and draws one cell per slice, shaded as dirty.
expect_ok "$RAWTRACK" bitmap map d.qcow2 b64k --svg map.svg --width 500
"$RAWTRACK" bitmap map d.qcow2 b64k --json --width 500 >m.json
"$PYTHON" - map.svg m.json <<'PY' || die "bitmap map --svg is wrong"
import json, sys, xml.etree.ElementTree as ET
ns = "{http://www.w3.org/2000/svg}"
root = ET.parse(sys.argv[1]).getroot()
m = json.load(open(sys.argv[2]))
assert root.tag == ns + "svg", root.tag
cells = [r for r in root.iter(ns + "rect") if r.find(ns + "title") is not None]
assert len(cells) == len(m["slices"]), (len(cells), len(m["slices"]))
for r, c in zip(cells, m["slices"]):
    clean = r.get("fill") == "#ececec"
    assert clean == (c["dirty-bytes"] == 0), (r.get("fill"), c)
    pct = float(r.find(ns + "title").text.split(": ")[1].split("%")[0])
    assert abs(pct - 100 * c["dirty-fraction"]) <= 1e-3 * max(1, pct), (pct, c)
texts = " ".join(t.text or "" for t in root.iter(ns + "text"))
assert "Bitmap 'b64k' of d.qcow2" in texts and "1 GiB disk" in texts, texts
rows = [t for t in root.iter(ns + "text") if t.get("text-anchor") == "end"]
assert len(rows) == -(-len(cells) // 64), len(rows)   # one label per row
assert rows[0].text == "0" and rows[1].text.endswith("MiB"), rows[1].text
PY
# With --json too: the same cells on stdout.
"$RAWTRACK" bitmap map d.qcow2 b64k --svg map2.svg --width 500 --json >m2.json ||
  die "bitmap map --svg FILE --json failed"
assert_same_file m.json m2.json
assert_same_file map.svg map2.svg
# Names that need escaping stay well-formed.
qemu-img bitmap --add 'd.qcow2' 'a<b&"c'"'"
"$RAWTRACK" bitmap map d.qcow2 'a<b&"c'"'" --svg - >esc.svg
"$PYTHON" -c 'import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])' esc.svg ||
  die "an SVG for a bitmap name with <&\"' does not parse"

# A sparse 15 TiB disk: one pass over the extents, not over the disk.
truncate -s 15T big.raw
expect_ok "$RAWTRACK" attach big.raw big.qcow2
expect_ok "$RAWTRACK" bitmap add big.qcow2 b --granularity 64k
expect_ok "$RAWTRACK" io big.qcow2 -c 'write 0 1M' -c 'write 7T 64k' \
  -c 'write 15359G 64M'
start=$(date +%s)
timeout 60 "$RAWTRACK" bitmap map big.qcow2 b --json --width 1000 >big.json ||
  die "bitmap map of a 15 TiB disk failed or took over 60 s"
timeout 60 "$RAWTRACK" bitmap map big.qcow2 b --svg big.svg ||
  die "bitmap map --svg of a 15 TiB disk failed or took over 60 s"
echo "15 TiB map + svg: $(( $(date +%s) - start )) s" >&2
"$RAWTRACK" bitmap dump big.qcow2 b --json >big-dump.json
"$PYTHON" - big.json big-dump.json <<'PY' || die "15 TiB map disagrees with dump"
import json, sys
m = json.load(open(sys.argv[1]))
d = json.load(open(sys.argv[2]))
dirty = sum(e["length"] for e in d if e["dirty"])
assert dirty == (1 << 20) + (64 << 10) + (64 << 20), dirty
assert m["dirty-bytes"] == dirty and m["virtual-size"] == 15 << 40, m
hot = [i for i, c in enumerate(m["slices"]) if c["dirty-bytes"]]
assert hot == [0, 466, 999], hot
PY

# Errors: named, clean, no output file left half-made where avoidable.
expect_exit 1 "$RAWTRACK" bitmap map d.qcow2 nosuch
"$RAWTRACK" bitmap map d.qcow2 nosuch 2>err.txt || true
grep -q "no bitmap 'nosuch'" err.txt || die "missing bitmap: unclear error: $(cat err.txt)"
for bad in 0 -1 x 1000001 12abc; do
  expect_exit 1 "$RAWTRACK" bitmap map d.qcow2 b64k --width "$bad"
done
expect_exit 1 "$RAWTRACK" bitmap map d.qcow2 b64k --svg /nonexistent/dir/x.svg
expect_exit 1 "$RAWTRACK" bitmap dump d.qcow2 b64k --width 10
expect_exit 1 "$RAWTRACK" bitmap list d.qcow2 --svg x.svg
expect_exit 1 "$RAWTRACK" bitmap map d.qcow2 b64k --json --svg -
expect_exit 1 "$RAWTRACK" bitmap map d.qcow2
expect_exit 1 "$RAWTRACK" bitmap map nonexistent.qcow2 b64k
# Nothing was changed: QEMU still reads the image cleanly.
qcheck d.qcow2
echo "$progname: OK"
