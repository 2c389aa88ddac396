#!/usr/bin/env bash
# test-backup-map.sh: `rawtrack backup list REPO --map`, the picture of
# where each backup of a repository holds data (cli/bitmap-map.c's
# drawing, one strip a backup).
#
#  - --map --json: every backup's held bytes per cell equal those computed
#    here from QEMU's view of the backup file (`qemu-img map` of the
#    backup's own layer: depth 0, data, not zero), for a full backup and
#    two incrementals written at known places; the cells are whole 64 KiB
#    clusters.
#  - The terminal strip (--ascii) shades exactly those cells, in order.
#  - --svg: well-formed XML, one shaded cell rect per cell and backup.
#  - Bad use: the drawing options without --map, --map on another
#    subcommand, --width 0, --json with --svg -: clean errors.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires "$PYTHON" --version

cd "$tmpdir"
export RAWTRACK_NO_PROGRESS=1
MiB=$((1024 * 1024))
SIZE=$((64 * MiB))

truncate -s "$SIZE" disk.raw
expect_ok "$RAWTRACK" attach disk.raw disk.qcow2
# Full: data in cells 0 and 20 (and half of 33); then 40; then 7 and 40.
expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x11 0 1M" \
  -c "write -P 0x12 $((20 * MiB)) 1M" -c "write -P 0x13 $((33 * MiB)) 512k"
expect_ok "$RAWTRACK" backup create disk.qcow2 repo
expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x21 $((40 * MiB)) 1M"
expect_ok "$RAWTRACK" backup create disk.qcow2 repo
expect_ok "$RAWTRACK" io disk.qcow2 -c "write -P 0x31 $((7 * MiB)) 64k" \
  -c "write -P 0x32 $((40 * MiB)) 1M"
expect_ok "$RAWTRACK" backup create disk.qcow2 repo
"$RAWTRACK" backup list repo --json >list.json || die "backup list --json"

# QEMU's view of each backup's own layer.
"$RAWTRACK" backup list repo --map --json --width 64 >map.json ||
  die "backup list --map --json failed"
"$PYTHON" - list.json map.json repo "$SIZE" <<'EOF' || die "backup list --map disagrees with qemu-img map"
import json, subprocess, sys
backups = json.load(open(sys.argv[1]))
m = json.load(open(sys.argv[2]))
repo, size = sys.argv[3], int(sys.argv[4])
assert m["virtual-size"] == size, m["virtual-size"]
assert len(m["layers"]) == len(backups) == 3, (len(m["layers"]), len(backups))
slice_ = m["slice-size"]
assert slice_ % 65536 == 0 and slice_ == 1 << 20, slice_
for b, layer in zip(backups, m["layers"]):
    assert layer["name"].startswith(b["id"]), (layer["name"], b["id"])
    q = json.loads(subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", "qcow2",
         repo + "/" + b["file"]], check=True, capture_output=True).stdout)
    want = [0] * len(layer["slices"])
    for e in q:
        if e["depth"] != 0 or not e["data"] or e.get("zero"):
            continue
        s, end = e["start"], e["start"] + e["length"]
        while s < end:
            i = s // slice_
            n = min(end, (i + 1) * slice_) - s
            want[i] += n
            s += n
    got = [c["held-bytes"] for c in layer["slices"]]
    assert got == want, (b["id"], [(i, g, w) for i, (g, w) in
                                   enumerate(zip(got, want)) if g != w][:8])
    assert layer["held-bytes"] == sum(want) == b["data-bytes"], \
        (layer["held-bytes"], sum(want), b["data-bytes"])
    for c in layer["slices"]:
        assert abs(c["held-fraction"] - c["held-bytes"] / c["length"]) < 1e-9
held = [[i for i, c in enumerate(l["slices"]) if c["held-bytes"]]
        for l in m["layers"]]
# What was written, where: the incrementals hold only their own writes.
assert held[1] == [40], held[1]
assert held[2] == [7, 40], held[2]
assert {0, 20, 33} <= set(held[0]), held[0]
EOF

# The terminal strip: one strip a backup, '#' where all of a cell is held.
COLUMNS=80 "$RAWTRACK" backup list repo --map --ascii --width 64 >strip.txt ||
  die "backup list --map failed"
"$PYTHON" - strip.txt <<'EOF' || { cat strip.txt >&2; die "backup list --map strip is wrong"; }
import sys
lines = open(sys.argv[1]).read().splitlines()
assert "3 layers over a 64 MiB disk, 64 cells of 1 MiB" in lines[0], lines[0]
strips = [l.split("|")[1] for l in lines if l.strip().startswith("0 |")]
assert len(strips) == 3, lines
assert [i for i, ch in enumerate(strips[1]) if ch != " "] == [40], strips[1]
assert strips[1][40] == "#", strips[1]
assert [i for i, ch in enumerate(strips[2]) if ch != " "] == [7, 40], strips[2]
assert strips[2][7] == ".", strips[2]          # 64 KiB of 1 MiB
assert strips[0][0] == "#" and strips[0][20] == "#" and strips[0][33] == "o", strips[0]
assert lines[-1].startswith("legend:") and "held" in lines[-1], lines[-1]
EOF

# SVG: well-formed, one cell a slice and backup, shaded where held.
expect_ok "$RAWTRACK" backup list repo --map --svg map.svg --width 64
"$PYTHON" - map.svg map.json <<'EOF' || die "backup list --map --svg is wrong"
import json, sys, xml.etree.ElementTree as ET
ns = "{http://www.w3.org/2000/svg}"
root = ET.parse(sys.argv[1]).getroot()
m = json.load(open(sys.argv[2]))
cells = [r for r in root.iter(ns + "rect") if r.find(ns + "title") is not None]
assert len(cells) == 3 * 64, len(cells)
want = [c["held-bytes"] > 0 for l in m["layers"] for c in l["slices"]]
got = [r.get("fill") != "#ececec" for r in cells]
assert got == want
EOF

# Bad use.
expect_exit 1 "$RAWTRACK" backup list repo --svg x.svg
expect_exit 1 "$RAWTRACK" backup list repo --width 10
expect_exit 1 "$RAWTRACK" backup list repo --map --width 0
expect_exit 1 "$RAWTRACK" backup list repo --map --json --svg -
expect_exit 1 "$RAWTRACK" backup verify repo --map
expect_exit 1 "$RAWTRACK" backup list repo --map --svg /nonexistent/dir/x.svg
assert_absent x.svg

echo "$progname: OK"
