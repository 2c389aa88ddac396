#!/usr/bin/env bash
# rawtrack - benchmark: `rawtrack backup` against the QEMU tools' routes.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Usage: bench/bench-backup.sh [RAWTRACK]
#
# Environment (all optional):
#   SIZE_MIB=4096   the disk (a raw file full of non-zero data)
#   CHANGE_PCT=5    scattered 64 KiB writes, percent of the disk, for the
#                   incremental
#   REPEAT=3        rounds; the median of each is reported
#   TMPDIR          work directory parent (default /tmp)
#
# Three comparisons, each measured in the same run, rounds interleaved:
#   full         rawtrack backup create (image source; and over NBD from
#                qemu-nbd -e 4, multi-conn) vs nbdcopy --flush from the same
#                export into a sparse raw file (both end durable)
#   incremental  after CHANGE_PCT% scattered changes: rawtrack backup
#                create (image source; and over NBD with --bitmap from
#                qemu-nbd -B) vs the QEMU route: qemu-img map with
#                x-dirty-bitmap over qemu-nbd -B, and the dirty extents
#                copied into a qcow2 overlay served by qemu-nbd
#                (qemu-route-incremental.py)
#   restore      of the top of a chain of 10 incrementals (a full + 10):
#                rawtrack backup restore vs qemu-img convert -O raw
# Page cache is warm for everyone (the disk is read once before), and
# every timed command starts after a sync, so that none pays for the
# write-back of the one before it.
# Ratios are QEMU-route time / rawtrack time (higher is better for
# rawtrack).
set -euo pipefail

RAWTRACK="${1:-${RAWTRACK:-$(cd "$(dirname "$0")/.." && pwd)/build/cli/rawtrack}}"
SIZE_MIB="${SIZE_MIB:-4096}"
CHANGE_PCT="${CHANGE_PCT:-5}"
REPEAT="${REPEAT:-3}"
here="$(cd "$(dirname "$0")" && pwd)"
PY=/usr/bin/python3

for t in qemu-img qemu-nbd nbdcopy; do
  command -v "$t" >/dev/null || { echo "bench-backup: $t is missing" >&2; exit 77; }
done
$PY -c 'import nbd' 2>/dev/null || { echo "bench-backup: python3-libnbd is missing" >&2; exit 77; }

work="$(mktemp -d "${TMPDIR:-/tmp}/bench-backup.XXXXXX")"
qpid=""
tpid=""
cleanup ()
{
  [ -n "$qpid" ] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null
  [ -n "$tpid" ] && kill "$tpid" 2>/dev/null && wait "$tpid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
export RAWTRACK_NO_PROGRESS=1
S="$work/src.sock"
T="$work/dst.sock"

qnbd ()   # SOCKET ARGS...: start qemu-nbd in the background, wait for it
{
  local sock="$1"; shift
  rm -f "$sock"
  qemu-nbd -t -k "$sock" "$@" &
  qpid=$!
  for _ in $(seq 200); do [ -S "$sock" ] && return 0; sleep 0.05; done
  echo "qemu-nbd did not start" >&2; exit 1
}
qstop () { kill "$qpid"; wait "$qpid" 2>/dev/null || true; qpid=""; }
now () { date +%s.%N; }
median () { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

echo "bench-backup: a $SIZE_MIB MiB disk in $work" >&2
truncate -s "${SIZE_MIB}M" disk.raw
$PY - disk.raw <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
size = os.fstat(fd).st_size
block = bytearray(os.urandom(1 << 20))
for off in range(0, size, 1 << 20):
    block[0:8] = off.to_bytes(8, "little")
    os.pwrite(fd, block, off)
os.close(fd)
EOF
"$RAWTRACK" attach disk.raw disk.qcow2 --cluster-size 65536 >/dev/null
cat disk.raw >/dev/null

# ---- full --------------------------------------------------------------
declare -a f_rt f_rtn f_nc
cp disk.qcow2 saved.qcow2
for r in $(seq "$REPEAT"); do
  rm -rf repo-f repo-fn full.raw
  # -e 4: multi-conn for both clients (nbdcopy and --connections 4).
  # --flush: a backup is only one once it is durable; rawtrack syncs its
  # file, the manifest and the directory, so nbdcopy syncs too.
  qnbd "$S" -r -e 4 -f qcow2 disk.qcow2
  sync; t0=$(now); nbdcopy --flush --destination-is-zero "nbd+unix:///?socket=$S" full.raw; t1=$(now)
  f_nc+=("$(echo "$t1 - $t0" | bc)")
  sync; t0=$(now); "$RAWTRACK" backup create "nbd+unix:///?socket=$S" repo-fn >/dev/null; t1=$(now)
  f_rtn+=("$(echo "$t1 - $t0" | bc)")
  qstop
  # A clean container each round, so that only the last round's
  # checkpoint is left for the incremental.
  cp saved.qcow2 disk.qcow2
  sync; t0=$(now); "$RAWTRACK" backup create disk.qcow2 repo-f >/dev/null 2>&1; t1=$(now)
  f_rt+=("$(echo "$t1 - $t0" | bc)")
done
rm -f full.raw
rm -rf repo-fn

# ---- incremental -------------------------------------------------------
# The full backup of the last round is the base; its checkpoint marks the
# changes below.
ckpt=$("$RAWTRACK" bitmap list disk.qcow2 | awk '/rawtrack-backup-/ { print $1 }')
writes=$(( SIZE_MIB * 16 * CHANGE_PCT / 100 ))
$PY - "$SIZE_MIB" "$writes" >cmds <<'EOF'
import random, sys
size_mib, n = int(sys.argv[1]), int(sys.argv[2])
rnd = random.Random(7)
for c in rnd.sample(range(size_mib * 16), n):
    print("write -P 0x%02x %d 64k" % (rnd.randrange(1, 256), c * 65536))
EOF
"$RAWTRACK" io --track process disk.qcow2 -f cmds >/dev/null
base=$(ls repo-f/*.qcow2)
cp disk.qcow2 inc-saved.qcow2
cp -r repo-f repo-saved
declare -a i_rt i_rtn i_q
for r in $(seq "$REPEAT"); do
  # Every round starts from the same disk and checkpoint (the image-source
  # backup at the end of a round consumes the checkpoint).
  cp inc-saved.qcow2 disk.qcow2
  # QEMU route.
  rm -f inc.qcow2
  qemu-img create -q -f qcow2 -b "$work/$base" -F qcow2 inc.qcow2
  qnbd "$S" -r -e 4 -f qcow2 -B "$ckpt" disk.qcow2
  spid_src=$qpid
  rm -f "$T"
  qemu-nbd -t -k "$T" -f qcow2 inc.qcow2 &
  tpid=$!
  for _ in $(seq 200); do [ -S "$T" ] && break; sleep 0.05; done
  sync; t0=$(now); $PY "$here/qemu-route-incremental.py" "$S" "$ckpt" "$T" >/dev/null; t1=$(now)
  i_q+=("$(echo "$t1 - $t0" | bc)")
  kill "$tpid"; wait "$tpid" 2>/dev/null || true; tpid=""
  # rawtrack over NBD, the same export.
  rm -rf repo-n; cp -r repo-saved repo-n
  sync; t0=$(now); "$RAWTRACK" backup create "nbd+unix:///?socket=$S" repo-n --bitmap "$ckpt" >/dev/null 2>&1; t1=$(now)
  i_rtn+=("$(echo "$t1 - $t0" | bc)")
  qpid=$spid_src; qstop
  # rawtrack, image source (consumes the checkpoint: restored after).
  rm -rf repo-i; cp -r repo-saved repo-i
  sync; t0=$(now); "$RAWTRACK" backup create disk.qcow2 repo-i >/dev/null; t1=$(now)
  i_rt+=("$(echo "$t1 - $t0" | bc)")
done
dirty_mib=$(( writes / 16 ))

# ---- restore of a chain of 10 -----------------------------------------
rm -rf repo-n repo-f repo-saved
for k in $(seq 10); do
  $PY - "$SIZE_MIB" $(( SIZE_MIB * 16 / 200 )) "$k" >cmds <<'EOF'
import random, sys
size_mib, n, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(100 + seed)
for c in rnd.sample(range(size_mib * 16), n):
    print("write -P 0x%02x %d 64k" % (rnd.randrange(1, 256), c * 65536))
EOF
  "$RAWTRACK" io --track process disk.qcow2 -f cmds >/dev/null
  "$RAWTRACK" backup create disk.qcow2 repo-i >/dev/null
done
top=$(ls repo-i/*.qcow2 | tail -1)
nchain=$(qemu-img info --backing-chain "$top" | grep -c '^image:')
cat repo-i/*.qcow2 >/dev/null
declare -a r_rt r_q
for r in $(seq "$REPEAT"); do
  rm -f out-rt.raw out-q.raw
  sync; t0=$(now); "$RAWTRACK" backup restore repo-i out-rt.raw 2>/dev/null; t1=$(now)
  r_rt+=("$(echo "$t1 - $t0" | bc)")
  sync; t0=$(now); qemu-img convert -O raw "$top" out-q.raw; t1=$(now)
  r_q+=("$(echo "$t1 - $t0" | bc)")
done
cmp out-rt.raw out-q.raw || { echo "bench-backup: the restores differ" >&2; exit 1; }
cmp out-rt.raw disk.raw || { echo "bench-backup: the restore differs from the disk" >&2; exit 1; }

F_RT=$(median "${f_rt[@]}"); F_RTN=$(median "${f_rtn[@]}"); F_NC=$(median "${f_nc[@]}")
I_RT=$(median "${i_rt[@]}"); I_RTN=$(median "${i_rtn[@]}"); I_Q=$(median "${i_q[@]}")
R_RT=$(median "${r_rt[@]}"); R_Q=$(median "${r_q[@]}")
ratio () { echo "scale=2; $1 / $2" | bc; }
# spread OTHER[@] RT[@]: the lowest and highest per-round ratio (rounds
# are interleaved, so each round's pair ran under the same load).
spread ()
{
  local -n o="$1" t="$2"
  local i v=()
  for i in "${!o[@]}"; do v+=("$(ratio "${o[$i]}" "${t[$i]}")"); done
  printf '%s\n' "${v[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%sx", lo, hi }'
}
printf '\n%s MiB disk, median of %s rounds (seconds; ratio = other / rawtrack)\n\n' "$SIZE_MIB" "$REPEAT"
printf '| job | rawtrack (image) | rawtrack (NBD) | QEMU route | ratio image | ratio NBD |\n'
printf '|---|--:|--:|--:|--:|--:|\n'
printf '| full backup vs nbdcopy | %.2f | %.2f | %.2f | %sx | %sx |\n' "$F_RT" "$F_RTN" "$F_NC" "$(ratio "$F_NC" "$F_RT")" "$(ratio "$F_NC" "$F_RTN")"
printf '| incremental (%s%%, %s MiB dirty) vs map+copy | %.2f | %.2f | %.2f | %sx | %sx |\n' "$CHANGE_PCT" "$dirty_mib" "$I_RT" "$I_RTN" "$I_Q" "$(ratio "$I_Q" "$I_RT")" "$(ratio "$I_Q" "$I_RTN")"
printf '| restore, chain of %s, vs qemu-img convert | %.2f | - | %.2f | %sx | - |\n' "$nchain" "$R_RT" "$R_Q" "$(ratio "$R_Q" "$R_RT")"
printf '\nPer-round ratio spread (lowest-highest): full %s image, %s NBD; incremental %s image, %s NBD; restore %s\n' \
  "$(spread f_nc f_rt)" "$(spread f_nc f_rtn)" "$(spread i_q i_rt)" "$(spread i_q i_rtn)" "$(spread r_q r_rt)"
