#!/usr/bin/env bash
# bench-map.sh: `rawtrack bitmap map` costs what `bitmap dump` costs.
#
# `map` sums the bitmap's dirty extents per cell: one walk over the
# extents, however large the disk.  This compares it side by side with
# `dump --json` (the same walk, printing every extent) on a 15 TiB disk,
# in one run, as ratios, for two bitmaps of 64 KiB granularity:
#   sparse  three small dirty areas (start, middle, end)
#   dense   half dirty in scattered runs (bench-bitmap-fill, AVG_RUN
#           granules on average): about 2^28 / AVG_RUN extents
# Timed alternately, best of $TRIALS (wall clock): map --json --width
# 1000, map --svg (1024 cells), map (terminal strip), dump --json.
#
# Usage: bench/bench-map.sh [BUILDDIR]   (default: ./build)
# Environment: SIZE (15T), TRIALS (3), AVG_RUN (256), WORKDIR.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:-$src/build}" && pwd)"
rawtrack="$build/cli/rawtrack"
fill="$build/bench/bench-bitmap-fill"
SIZE="${SIZE:-15T}"
TRIALS="${TRIALS:-3}"
AVG_RUN="${AVG_RUN:-256}"
for f in "$rawtrack" "$fill"; do
  [ -x "$f" ] || { echo "bench-map: build $f first" >&2; exit 1; }
done

work="$(mktemp -d "${WORKDIR:-/tmp}/bench-map.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

"$rawtrack" create img.qcow2 "$SIZE" >/dev/null
"$rawtrack" bitmap add img.qcow2 sparse --granularity 64k
"$rawtrack" bitmap add img.qcow2 dense --granularity 64k
"$rawtrack" io img.qcow2 -c 'write 0 1M' -c 'write 7T 64k' \
  -c 'write 15359G 64M' >/dev/null
"$fill" img.qcow2 dense "$AVG_RUN" >/dev/null

# best NAME CMD...: best wall time of $TRIALS runs, in ms.
now_ms () { date +%s%3N; }
declare -A best
run ()
{
  local key="$1"; shift
  local t0 t1 d
  t0=$(now_ms)
  "$@" >/dev/null
  t1=$(now_ms)
  d=$((t1 - t0))
  if [ -z "${best[$key]:-}" ] || [ "$d" -lt "${best[$key]}" ]; then
    best[$key]=$d
  fi
}

for _ in $(seq "$TRIALS"); do
  for b in sparse dense; do
    run "$b dump" "$rawtrack" bitmap dump img.qcow2 "$b" --json
    run "$b map-json" "$rawtrack" bitmap map img.qcow2 "$b" --json --width 1000
    run "$b map-svg" "$rawtrack" bitmap map img.qcow2 "$b" --svg map.svg
    run "$b map-strip" "$rawtrack" bitmap map img.qcow2 "$b"
  done
done

extents=$("$rawtrack" bitmap map img.qcow2 dense --json --width 1 |
          sed -n 's/.*"dirty-extents": \([0-9]*\).*/\1/p')
echo "bench-map: $SIZE disk, 64 KiB granularity; dense: $extents dirty extents"
printf '%-7s %10s %10s %10s %10s %9s %9s %9s\n' bitmap dump-ms map-json \
  map-svg map-strip json/dump svg/dump strip/dump
for b in sparse dense; do
  d=${best[$b dump]}
  printf '%-7s %10s %10s %10s %10s %9s %9s %9s\n' "$b" "$d" \
    "${best[$b map-json]}" "${best[$b map-svg]}" "${best[$b map-strip]}" \
    "$(awk -v a="${best[$b map-json]}" -v b="$d" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="${best[$b map-svg]}" -v b="$d" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="${best[$b map-strip]}" -v b="$d" 'BEGIN { printf "%.2f", a / b }')"
done
