#!/usr/bin/env bash
# test-small-clusters.sh: 512-byte and 1 KiB clusters with bitmaps.
#
# Every extension rawtrack and QEMU keep lives in cluster 0 (QEMU allows
# header extensions nowhere else), and small clusters leave little room:
# with 512-byte clusters the tracking log of 64 extents (536 bytes) alone
# did not fit, so every tracked write failed ("header extensions do not
# fit in cluster 0"), NBD clients got ENOSPC and the server logged nothing;
# 1 KiB clusters failed once the data file's path passed ~330 bytes.
# Now the log (and the hot set) is sized to the room left, and where even
# a log of 8 extents cannot fit, attach, create, bitmap add and bitmap
# enable refuse up front, with the reason, writing nothing.
#
#  1. 512 B and 1 KiB clusters, a short path, a rawtrack bitmap and one
#     added by qemu-img: scattered writes over more extents than the
#     hot set tracked exactly; qemu-img check clean, bitmaps consistent
#     for QEMU; qemu-io then writes the image (QEMU rewrites cluster 0)
#     and rawtrack tracks again; qemu-io reads what was written.
#  2. 1 KiB clusters and a 400-byte data file path: works.
#  3. 512 B clusters and a 250-byte path: attach refuses, no image; an
#     image made by qemu-img: bitmap add / enable refuse, the image stays
#     byte for byte; a bitmap qemu-img added is tracked by nobody: `io`
#     fails with the reason, and `serve` logs it (rate-limited) while the
#     NBD client gets the error.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version

cd "$tmpdir"
MiB=$((1024 * 1024))

# long_dir N: a directory under $tmpdir whose path is about N bytes.
long_dir ()
{
  local d="$tmpdir" part
  part=$(printf 'd%.0s' $(seq 100))
  while [ $(( ${#d} + 101 )) -lt "$1" ]; do d="$d/$part"; done
  part=$(printf 'e%.0s' $(seq $(( $1 - ${#d} - 1 ))))
  d="$d/$part"
  mkdir -p "$d"
  echo "$d"
}

# dirty IMAGE NAME: the bitmap's dirty extents, one "offset length" a line.
dirty ()
{
  "$RAWTRACK" bitmap dump "$1" "$2"
}

# ---------------------------------------------------------------------------
# 1. Small clusters, short path.
for cs in 512 1024; do
  rm -f d.raw s.qcow2
  truncate -s 64M d.raw
  expect_ok "$RAWTRACK" attach --cluster-size "$cs" d.raw s.qcow2
  expect_ok "$RAWTRACK" bitmap add s.qcow2 rt --granularity 64k
  expect_ok qemu-img bitmap --add s.qcow2 q
  # 60 writes, each in an extent of its own: more than the hot set.
  cmds=() want=""
  for i in $(seq 0 59); do
    off=$(( (i * 37 % 60) * MiB + (i % 7) * 65536 ))
    cmds+=(-c "write -P 0x$(printf %02x $((i + 1))) $off 4k")
  done
  expect_ok "$RAWTRACK" io --track process s.qcow2 "${cmds[@]}"
  want=$(for i in $(seq 0 59); do
           echo $(( (i * 37 % 60) * MiB + (i % 7) * 65536 ))
         done | sort -n | awk '{ print $1, 65536 }')
  assert_eq "$want" "$(dirty s.qcow2 rt)" "cs $cs: bitmap rt after 60 writes"
  qcheck s.qcow2
  qemu-img info --output=json s.qcow2 > info.json
  if grep -q in-use info.json; then die "cs $cs: a bitmap is in use"; fi
  # QEMU rewrites cluster 0 (unknown extensions kept, reordered).
  expect_ok qemu-io -f qcow2 -c "write -P 0x77 62M 4k" s.qcow2
  qcheck s.qcow2
  expect_ok "$RAWTRACK" io s.qcow2 -c "write -P 0x78 63M 4k"
  qcheck s.qcow2
  dirty s.qcow2 rt | grep -q "^$((63 * MiB)) 65536\$" ||
    die "cs $cs: the write after QEMU's is not tracked"
  dirty s.qcow2 q | grep -q "^$((63 * MiB)) " ||
    die "cs $cs: the write after QEMU's is not in QEMU's bitmap"
  expect_ok qemu-io -f qcow2 -r -c "read -P 0x01 0 4k" \
    -c "read -P 0x77 62M 4k" -c "read -P 0x78 63M 4k" s.qcow2
done

# ---------------------------------------------------------------------------
# 2. 1 KiB clusters, a 400-byte data file path.
dir=$(long_dir 390)
truncate -s 64M "$dir/d.raw"
expect_ok "$RAWTRACK" attach --cluster-size 1024 "$dir/d.raw" l.qcow2
expect_ok "$RAWTRACK" bitmap add l.qcow2 rt --granularity 64k
expect_ok "$RAWTRACK" io l.qcow2 -c "write 0 4k" -c "write 40M 4k"
assert_eq "0 65536
$((40 * MiB)) 65536" "$(dirty l.qcow2 rt)" "1 KiB clusters, long path"
qcheck l.qcow2

# ---------------------------------------------------------------------------
# 3. 512 B clusters, a 250-byte path: no room for the log.
dir=$(long_dir 240)
truncate -s 64M "$dir/d.raw"
_run "$RAWTRACK" attach --cluster-size 512 "$dir/d.raw" n.qcow2 2>err.txt
[ "$_status" = 1 ] || die "attach: exit $_status, expected 1"
grep -q "no room for rawtrack's tracking log" err.txt ||
  die "attach: no reason given: $(cat err.txt)"
assert_absent n.qcow2

# (qemu-img creates a 512 B-cluster image slowly: 40 s for 64 MiB here)
expect_ok qemu-img create -q -f qcow2 -o cluster_size=512 \
  -o "data_file=$dir/q.raw,data_file_raw=on" q.qcow2 1M
md5=$(md5sum < q.qcow2)
_run "$RAWTRACK" bitmap add q.qcow2 rt 2>err.txt
[ "$_status" = 1 ] && grep -q "no room for rawtrack's tracking log" err.txt ||
  die "bitmap add: exit $_status: $(cat err.txt)"
expect_ok "$RAWTRACK" bitmap add --disabled q.qcow2 off
md5=$(md5sum < q.qcow2)
_run "$RAWTRACK" bitmap enable q.qcow2 off 2>err.txt
[ "$_status" = 1 ] && grep -q "no room for rawtrack's tracking log" err.txt ||
  die "bitmap enable: exit $_status: $(cat err.txt)"
assert_eq "$md5" "$(md5sum < q.qcow2)" "the image after refusals"

# A bitmap QEMU added: rawtrack cannot track it, and says so.
expect_ok qemu-img bitmap --add q.qcow2 q
_run "$RAWTRACK" io q.qcow2 -c "write 0 4k" 2>err.txt
[ "$_status" = 1 ] && grep -q "cannot track writes" err.txt ||
  die "io: exit $_status: $(cat err.txt)"

if command -v qemu-io >/dev/null; then
  sock="$tmpdir/s.sock"
  "$RAWTRACK" serve q.qcow2 --socket "$sock" --pidfile server.pid \
    2>server.log &
  spid=$!
  cleanup_fn kill "$spid"
  wait_until 120 "server did not start" test -s server.pid
  cmds=()
  for i in $(seq 0 199); do cmds+=(-c "write $((i * 4096)) 4k"); done
  _run qemu-io -f raw "${cmds[@]}" "nbd+unix:///?socket=$sock"
  kill -TERM "$spid"
  wait "$spid" || true
  cat server.log >&2
  grep -q "cannot track writes" server.log ||
    die "serve logged nothing about the failed writes"
  n=$(grep -c "failed" server.log || true)
  [ "$n" -le 40 ] || die "serve logged $n lines for 200 failed writes"
fi

echo "$progname: ok"
