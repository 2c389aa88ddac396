#!/usr/bin/env bash
# bench-bitmap.sh: `rawtrack bitmap` versus `qemu-img bitmap` on a huge bitmap.
#
# Setup: a 16 TiB qcow2 image (no data is ever written; only metadata
# exists) with two 64 KiB-granularity bitmaps, "src" and "dst": 2^28 bits,
# 32 MiB of bitmap data each.  "src" is made half dirty in scattered runs
# (alternating dirty/clean runs of 1..511 granules) by bench-bitmap-fill,
# a small C helper meson builds against the internal library.
#
# Timed, each on a fresh copy of the image, best of $TRIALS (wall clock)
# and the largest peak RSS (/usr/bin/time %M, which includes children
# such as qemu-nbd under nbdinfo):
#   merge   rawtrack bitmap merge IMG src dst  /  qemu-img bitmap --merge src IMG dst
#   clear   rawtrack bitmap clear IMG src      /  qemu-img bitmap --clear IMG src
#   dump    rawtrack bitmap dump IMG src --json  /  nbdinfo --map=qemu:dirty-bitmap:src
#           --json -- [ qemu-nbd -r -f qcow2 -B src IMG ]   (QEMU's way to read a bitmap)
#   list    rawtrack bitmap list (reads and counts the bits) / qemu-img info
# and add / remove on a 1 GiB image versus the 16 TiB one, to show that
# they cost the same whatever the bitmap size (no bitmap data is touched).
#
# Usage: bench/bench-bitmap.sh [BUILDDIR]   (default: ./build)
# Environment: SIZE (16T), GRAN (65536), TRIALS (3), AVG_RUN (256), WORKDIR.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:-$src/build}" && pwd)"
rawtrack="$build/cli/rawtrack"
SIZE="${SIZE:-16T}"
GRAN="${GRAN:-65536}"
TRIALS="${TRIALS:-3}"
AVG_RUN="${AVG_RUN:-256}"

for t in qemu-img qemu-nbd nbdinfo cc /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "bench-bitmap: needs $t" >&2; exit 1; }
done
[ -x "$rawtrack" ] || { echo "bench-bitmap: build $rawtrack first" >&2; exit 1; }

work="$(mktemp -d "${WORKDIR:-/tmp}/bench-bitmap.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

# The fill helper is built by meson (bench/meson.build).
fill="$build/bench/bench-bitmap-fill"
[ -x "$fill" ] || { echo "bench-bitmap: build $fill first" >&2; exit 1; }

"$rawtrack" create base.qcow2 "$SIZE" >/dev/null
"$rawtrack" bitmap add base.qcow2 src --granularity "$GRAN"
"$rawtrack" bitmap add base.qcow2 dst --granularity "$GRAN"
"$fill" base.qcow2 src "$AVG_RUN"
qemu-img check -q base.qcow2
echo "image: $SIZE, granularity $GRAN, $(du -k base.qcow2 | cut -f1) KiB of metadata"

# run_timed OUT CMD...: time CMD (stdout to OUT); sets secs and kib.
run_timed ()
{
  local out="$1"; shift
  local t0 t1
  t0=$(date +%s%N)
  /usr/bin/time -f %M -o mem.txt "$@" >"$out"
  t1=$(date +%s%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  kib=$(tail -n1 mem.txt)
}

# best OUT CMD...: best time and largest RSS over TRIALS fresh copies of
# $BASE (default base.qcow2) as w.qcow2; sets best_s and best_mib.
best ()
{
  local out="$1"; shift
  local i
  best_s=""; best_mib=0
  for i in $(seq "$TRIALS"); do
    cp --sparse=always "${BASE:-base.qcow2}" w.qcow2
    sync
    run_timed "$out" "$@"
    if [ -z "$best_s" ] || awk -v a="$secs" -v b="$best_s" 'BEGIN { exit !(a < b) }'; then
      best_s="$secs"
    fi
    best_mib=$(awk -v a="$kib" -v b="$best_mib" 'BEGIN { m = a / 1024; printf "%.1f", (m > b ? m : b) }')
  done
}

printf '%-7s %12s %12s %12s %12s %8s\n' op rawtrack-s rawtrack-MiB qemu-s qemu-MiB speedup
row ()
{
  printf '%-7s %12s %12s %12s %12s %7.1fx\n' "$1" "$2" "$3" "$4" "$5" \
    "$(awk -v q="$4" -v r="$2" 'BEGIN { print (r > 0 ? q / r : 0) }')"
}

best /dev/null "$rawtrack" bitmap merge w.qcow2 src dst
r_s=$best_s r_m=$best_mib
best /dev/null qemu-img bitmap --merge src w.qcow2 dst
row merge "$r_s" "$r_m" "$best_s" "$best_mib"

best /dev/null "$rawtrack" bitmap clear w.qcow2 src
r_s=$best_s r_m=$best_mib
best /dev/null qemu-img bitmap --clear w.qcow2 src
row clear "$r_s" "$r_m" "$best_s" "$best_mib"

best r.json "$rawtrack" bitmap dump w.qcow2 src --json
r_s=$best_s r_m=$best_mib
best q.json nbdinfo --map=qemu:dirty-bitmap:src --json -- \
  [ qemu-nbd -r -f qcow2 -B src w.qcow2 ]
row dump "$r_s" "$r_m" "$best_s" "$best_mib"
# Same extents (nbdinfo may split at request boundaries; compare dirty bytes).
rd=$(grep -c '"dirty": true' r.json || true)
python3 - r.json q.json <<'EOF' || echo "WARNING: dump outputs differ" >&2
import json, sys
r = json.load(open(sys.argv[1]))
q = json.load(open(sys.argv[2]))
rd = sum(e["length"] for e in r if e["dirty"])
qd = sum(e["length"] for e in q if e["type"] == 1)
assert rd == qd, (rd, qd)
EOF
echo "        (dump: $rd dirty extents, $(wc -l <r.json) lines of JSON)"

best /dev/null "$rawtrack" bitmap list w.qcow2
r_s=$best_s r_m=$best_mib
best /dev/null qemu-img info w.qcow2
row list "$r_s" "$r_m" "$best_s" "$best_mib"

echo
echo "add / remove: 1 GiB image (tiny bitmap) versus $SIZE (32 MiB bitmap at 64k)"
"$rawtrack" create tiny.qcow2 1G >/dev/null
"$rawtrack" bitmap add tiny.qcow2 src --granularity "$GRAN"
"$fill" tiny.qcow2 src "$AVG_RUN" >/dev/null
printf '%-28s %10s %10s\n' op tiny-s huge-s
# tiny_huge LABEL CMD-WITH-w.qcow2...: best time on the tiny and the huge image.
tiny_huge ()
{
  local label="$1" tiny; shift
  BASE=tiny.qcow2 best /dev/null "$@"; tiny=$best_s
  BASE=base.qcow2 best /dev/null "$@"
  printf '%-28s %10s %10s\n' "$label" "$tiny" "$best_s"
}
tiny_huge "rawtrack bitmap add" "$rawtrack" bitmap add w.qcow2 x --granularity "$GRAN"
tiny_huge "qemu-img bitmap --add" qemu-img bitmap --add -g "$GRAN" w.qcow2 x
tiny_huge "rawtrack bitmap remove" "$rawtrack" bitmap remove w.qcow2 src
tiny_huge "qemu-img bitmap --remove" qemu-img bitmap --remove w.qcow2 src
tiny_huge "rawtrack bitmap disable" "$rawtrack" bitmap disable w.qcow2 src
tiny_huge "qemu-img bitmap --disable" qemu-img bitmap --disable w.qcow2 src
tiny_huge "rawtrack info (lists bitmaps)" "$rawtrack" info w.qcow2
