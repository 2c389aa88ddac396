#!/bin/bash
# rawtrack - benchmark: big sparse disks, many bitmaps, side by side with QEMU.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# For every disk size in SIZES (default "1T 15T") and every bitmap count in
# NBITMAPS (default "1 16 64"), on a sparse raw file attached by rawtrack
# with that many enabled bitmaps at 64 KiB:
#   io      open + one 64 KiB write + close: `rawtrack io` against `qemu-io`
#           on identical containers (a for rawtrack, b for QEMU), taking
#           turns REPS times (each write to a fresh spot); median wall time
#           and peak RSS, and their ratios;
#   map     a whole-disk `nbdinfo --map=qemu:dirty-bitmap:b0` through
#           `rawtrack serve` against `qemu-nbd -B b0`, taking turns; median
#           time and the server's peak RSS (VmHWM);
#   growth  the container's growth after WRITES scattered 4 KiB writes
#           (one `rawtrack io` run; then one `qemu-io` run on a second,
#           identical container), against the clusters the dirty bits
#           need (one per bitmap and per cluster-sized stretch of bits).
# Usage: [SIZES=..] [NBITMAPS=..] [REPS=3] [WRITES=64] bench-bigdisk.sh [DIR]
# Needs qemu-io, qemu-nbd, nbdinfo; RAWTRACK (default build/cli/rawtrack).
set -eu
DIR=${1:-/tmp}
RAWTRACK=${RAWTRACK:-build/cli/rawtrack}
SIZES=${SIZES:-"1T 15T"}
NBITMAPS=${NBITMAPS:-"1 16 64"}
REPS=${REPS:-3}
WRITES=${WRITES:-64}
W=$(mktemp -d "$DIR/bench-bigdisk.XXXXXX")
trap 'rm -rf "$W"' EXIT

median () { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bytes () { numfmt --from=iec "$1"; }

# Time and peak RSS (KiB) of a command: prints "SECONDS KIB".
timed () {
  /usr/bin/time -f "%e %M" -o "$W/time" "$@" >/dev/null 2>"$W/err" ||
    { cat "$W/err" >&2; return 1; }
  cat "$W/time"
}

# Serve with $@ on socket $W/s.sock, map the whole disk, print
# "SECONDS SERVER_KIB".
map_once () {
  local pid t
  rm -f "$W/s.sock"
  "$@" 2>"$W/serve.err" &
  pid=$!
  for _ in $(seq 200); do [ -S "$W/s.sock" ] && break; sleep 0.05; done
  t=$( { /usr/bin/time -f "%e" nbdinfo --map=qemu:dirty-bitmap:b0 \
           "nbd+unix:///?socket=$W/s.sock" >/dev/null; } 2>&1 | tail -1)
  [ -e /proc/$pid/status ] || { cat "$W/serve.err" >&2; return 1; }
  echo "$t $(awk '/VmHWM/ {print $2}' /proc/$pid/status)"
  kill $pid; wait $pid 2>/dev/null || true
}

printf '%-5s %4s | %-28s | %-30s | %s\n' size bmps \
  "open+write+close rt / qemu-io" "whole-disk dirty map rt / qemu" \
  "growth after $WRITES writes: rt / qemu / needed (MiB)"
for size in $SIZES; do
  sz=$(bytes "$size")
  for n in $NBITMAPS; do
    rm -f "$W"/*.raw "$W"/*.qcow2
    truncate -s "$size" "$W/d.raw"
    "$RAWTRACK" attach "$W/d.raw" "$W/a.qcow2" >/dev/null
    for i in $(seq 0 $((n - 1))); do
      "$RAWTRACK" bitmap add "$W/a.qcow2" "b$i" --granularity 64K
    done
    cp --sparse=always "$W/a.qcow2" "$W/b.qcow2"
    base=$(stat -c %s "$W/a.qcow2")
    # growth first, on clean containers (a: rawtrack, b: qemu-io)
    : > "$W/cmds"
    for k in $(seq "$WRITES"); do
      off=$(( ($(od -An -N6 -tu8 /dev/urandom) % (sz >> 16)) << 16 ))
      echo "write -P 7 $off 4k" >> "$W/cmds"
    done
    "$RAWTRACK" io "$W/a.qcow2" -f "$W/cmds" >/dev/null
    qemu-io -f qcow2 "$W/b.qcow2" < "$W/cmds" >/dev/null
    ga=$(( ($(stat -c %s "$W/a.qcow2") - base) ))
    gb=$(( ($(stat -c %s "$W/b.qcow2") - base) ))
    cs=$((2 << 20))
    span=$(( cs * 8 * 65536 ))
    need=$(( $(awk -v s=$span '{print int($4 / s)}' "$W/cmds" | sort -u |
               wc -l) * n * cs ))
    # open + write + close, taking turns
    : > "$W/rt"; : > "$W/qm"
    for r in $(seq "$REPS"); do
      off=$(( ($(od -An -N6 -tu8 /dev/urandom) % (sz >> 16)) << 16 ))
      timed "$RAWTRACK" io "$W/a.qcow2" -c "write -P 1 $off 64k" >> "$W/rt"
      off=$(( ($(od -An -N6 -tu8 /dev/urandom) % (sz >> 16)) << 16 ))
      timed qemu-io -f qcow2 "$W/b.qcow2" -c "write -P 1 $off 64k" >> "$W/qm"
    done
    rt_t=$(cut -d' ' -f1 "$W/rt" | median); rt_m=$(cut -d' ' -f2 "$W/rt" | median)
    qm_t=$(cut -d' ' -f1 "$W/qm" | median); qm_m=$(cut -d' ' -f2 "$W/qm" | median)
    # whole-disk dirty map, taking turns
    : > "$W/rs"; : > "$W/qs"
    for r in $(seq "$REPS"); do
      map_once "$RAWTRACK" serve "$W/a.qcow2" --read-only \
        --socket "$W/s.sock" >> "$W/rs"
      map_once qemu-nbd -t -r -f qcow2 -B b0 -k "$W/s.sock" "$W/b.qcow2" >> "$W/qs"
    done
    rs_t=$(cut -d' ' -f1 "$W/rs" | median); rs_m=$(cut -d' ' -f2 "$W/rs" | median)
    qs_t=$(cut -d' ' -f1 "$W/qs" | median); qs_m=$(cut -d' ' -f2 "$W/qs" | median)
    printf '%-5s %4s | %5.2fs %4dM / %5.2fs %4dM x%-5.2f | %5.2fs %4dM / %5.2fs %4dM x%-5.2f | %5d / %5d / %5d\n' \
      "$size" "$n" "$rt_t" $((rt_m / 1024)) "$qm_t" $((qm_m / 1024)) \
      "$(echo "$qm_t / $rt_t" | bc -l)" \
      "$rs_t" $((rs_m / 1024)) "$qs_t" $((qs_m / 1024)) \
      "$(echo "$qs_t / $rs_t" | bc -l)" \
      $((ga >> 20)) $((gb >> 20)) $((need >> 20))
  done
done
echo "(x: QEMU's time over rawtrack's; higher is better for rawtrack)"
