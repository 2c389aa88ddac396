#!/usr/bin/env bash
# test-attach.sh: `rawtrack attach RAW IMAGE` wraps existing raw data in a
# qcow2 metadata container that QEMU reads as the same disk.
#
#  - raw files of several sizes (sub-cluster, not a cluster multiple, 24 MiB,
#    1 GiB sparse) keep their md5 across attach;
#  - the image is clean for `qemu-img check`, identical for `qemu-img
#    compare`, maps 1:1 (`qemu-img map`), and qemu-io reads the patterns;
#  - qemu-img info reports data-file (absolute path) and data-file-raw;
#    rawtrack info/check/cat agree with QEMU;
#  - refusals: existing IMAGE (without --force), missing RAW, RAW size not a
#    multiple of 512, invalid cluster sizes: exit 1, nothing created,
#    RAW untouched;
#  - --force, --relative (opened by rawtrack from another directory), every
#    cluster size 512 B .. 2 MiB;
#  - a loop block device as RAW (skipped when losetup does not work).
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires "$PYTHON" --version

cd "$tmpdir"

MiB=$((1024 * 1024))

# make_raw FILE SIZE: each MiB chunk i of FILE is filled with byte 0x10+i
# (the last chunk may be partial).
make_raw ()
{
  "$PYTHON" - "$1" "$2" <<'EOF'
import sys
path, size = sys.argv[1], int(sys.argv[2])
MiB = 1 << 20
with open(path, "wb") as f:
    i = 0
    while i * MiB < size:
        n = min(MiB, size - i * MiB)
        f.write(bytes([(0x10 + i) & 0xFF]) * n)
        i += 1
EOF
}

# read_patterns IMAGE SIZE: qemu-io sees make_raw's pattern through IMAGE.
read_patterns ()
{
  local img="$1" size="$2" i=0 off n args=()
  while [ $((i * MiB)) -lt "$size" ]; do
    off=$((i * MiB))
    n=$((size - off)); [ "$n" -gt "$MiB" ] && n=$MiB
    args+=(-c "$(printf 'read -P 0x%02x %d %d' $(((0x10 + i) & 0xff)) "$off" "$n")")
    i=$((i + 1))
  done
  expect_ok qemu-io -f qcow2 -r "${args[@]}" "$img"
}

# abspath FILE: absolute, symlinks not resolved (like os.path.abspath).
abspath ()
{
  realpath -s -- "$1"
}

# map_is_identity IMAGE: every extent is present, data, and host == guest.
map_is_identity ()
{
  qemu-img map -f qcow2 --output=json "$1" >map.json ||
    die "qemu-img map $1 failed"
  "$PYTHON" - map.json "$2" <<'EOF' || die "qemu-img map of $1 is not an identity mapping"
import json, sys
m = json.load(open(sys.argv[1]))
size = int(sys.argv[2])
pos = 0
for e in m:
    assert e["start"] == pos, e
    assert e["present"] and e["data"], e
    assert e.get("offset") == e["start"], e
    pos += e["length"]
assert pos == size, (pos, size)
EOF
}

# verify_attached RAW IMAGE CLUSTER-SIZE DATA-FILE-NAME: the full set of
# checks on a freshly attached image.
verify_attached ()
{
  local raw="$1" img="$2" cs="$3" dfname="$4" size
  size="$(stat -L -c %s "$raw")"
  if [ -b "$raw" ]; then
    size="$(blockdev --getsize64 "$raw")"
  fi

  # (check_agrees below also requires qemu-img check to exit 0.)
  expect_ok qemu-img compare -f raw -F qcow2 "$raw" "$img"
  map_is_identity "$img" "$size"

  qemu-img info -f qcow2 --output=json "$img" >info.json
  json_expect info.json \
    'j["virtual-size"]' "$size" \
    'j["cluster-size"]' "$cs" \
    'j["format-specific"]["data"]["compat"]' 1.1 \
    'j["format-specific"]["data"]["data-file-raw"]' true \
    'j["format-specific"]["data"]["data-file"]' "$dfname"

  info_agrees "$img"
  check_agrees "$img"
  assert_eq 0 "$check_status" "check status of $img"
}

# ---------------------------------------------------------------------------
# 1. Sizes, default cluster size (2 MiB).

for size in 512 $((3 * MiB + 512)) $((24 * MiB)); do
  raw="r$size.raw" img="r$size.qcow2"
  make_raw "$raw" "$size"
  before="$(md5of "$raw")"
  expect_ok "$RAWTRACK" attach "$raw" "$img"
  assert_eq "$before" "$(md5of "$raw")" "md5 of $raw after attach"
  assert_eq "$size" "$(stat -c %s "$raw")" "size of $raw after attach"
  verify_attached "$raw" "$img" $((2 * MiB)) "$(abspath "$raw")"
  read_patterns "$img" "$size"
  cat_agrees "$img"
  "$RAWTRACK" cat "$img" | cmp - "$raw" || die "rawtrack cat $img != $raw"
  assert_eq "$before" "$(md5of "$raw")" "md5 of $raw after the checks"
done

# cat --offset/--length on an attached image, across a chunk boundary.
img="r$((3 * MiB + 512)).qcow2" raw="r$((3 * MiB + 512)).raw"
"$RAWTRACK" cat "$img" --offset $((MiB - 1000)) --length 3000 >part.out
extract "$raw" $((MiB - 1000)) 3000 >part.want
assert_same_file part.out part.want
rm -f part.out part.want

# 1 GiB sparse: patterns at the start, across a cluster boundary in the
# middle, and at the very end; holes read as zeros.
raw=big.raw img=big.qcow2
truncate -s 1G "$raw"
write_pattern "$raw" 0 65536 0xa1
write_pattern "$raw" $((512 * MiB - 512)) 1024 0xa2
write_pattern "$raw" $((1024 * MiB - 512)) 512 0xa3
before="$(md5of "$raw")"
blocks_before="$(stat -c %b "$raw")"
expect_ok "$RAWTRACK" attach "$raw" "$img"
assert_eq "$before" "$(md5of "$raw")" "md5 of $raw after attach"
assert_eq "$blocks_before" "$(stat -c %b "$raw")" "allocated blocks of $raw"
verify_attached "$raw" "$img" $((2 * MiB)) "$(abspath "$raw")"
expect_ok qemu-io -f qcow2 -r \
  -c 'read -P 0xa1 0 64k' -c 'read -P 0 64k 1M' \
  -c "read -P 0 $((512 * MiB - 4096)) 3584" \
  -c "read -P 0xa2 $((512 * MiB - 512)) 1024" \
  -c "read -P 0xa3 $((1024 * MiB - 512)) 512" "$img"
"$RAWTRACK" cat "$img" --offset $((512 * MiB - 1024)) --length 2048 >part.out
{ head -c 512 /dev/zero; head -c 1024 /dev/zero | tr '\0' '\242'; head -c 512 /dev/zero; } >part.want
assert_same_file part.out part.want
"$RAWTRACK" cat "$img" --offset $((1024 * MiB - 512)) --length 512 >part.out
head -c 512 /dev/zero | tr '\0' '\243' >part.want
assert_same_file part.out part.want
rm -f part.out part.want "$img"

# ---------------------------------------------------------------------------
# 2. Refusals: exit 1, IMAGE not created, RAW untouched.

make_raw ok.raw $((4 * MiB))
ok_md5="$(md5of ok.raw)"

# RAW missing.
expect_exit 1 "$RAWTRACK" attach missing.raw no1.qcow2
assert_absent no1.qcow2
assert_absent missing.raw

# RAW size not a multiple of 512.
for size in 1 511 1000 $((MiB + 100)); do
  head -c "$size" /dev/urandom >odd.raw
  odd_md5="$(md5of odd.raw)"
  expect_exit 1 "$RAWTRACK" attach odd.raw no2.qcow2
  assert_absent no2.qcow2
  assert_eq "$odd_md5" "$(md5of odd.raw)" "md5 of odd.raw ($size) after refusal"
done

# Invalid cluster sizes.
for cs in 0 256 511 513 1000 3000 65535 $((4 * MiB)) $((1 << 30)) abc -512 ''; do
  expect_exit 1 "$RAWTRACK" attach ok.raw no3.qcow2 --cluster-size "$cs"
  assert_absent no3.qcow2
done

# IMAGE exists (a regular file, and an existing qcow2): refused, untouched.
echo "not an image" >exists.qcow2
ex_md5="$(md5of exists.qcow2)"
expect_exit 1 "$RAWTRACK" attach ok.raw exists.qcow2
assert_eq "$ex_md5" "$(md5of exists.qcow2)" "existing IMAGE after refusal"
qemu-img create -q -f qcow2 other.qcow2 1M
other_md5="$(md5of other.qcow2)"
expect_exit 1 "$RAWTRACK" attach ok.raw other.qcow2
assert_eq "$other_md5" "$(md5of other.qcow2)" "existing qcow2 after refusal"
assert_eq "$ok_md5" "$(md5of ok.raw)" "md5 of ok.raw after refusals"

# --force replaces an existing IMAGE.
expect_ok "$RAWTRACK" attach ok.raw exists.qcow2 --force
verify_attached ok.raw exists.qcow2 $((2 * MiB)) "$(abspath ok.raw)"
expect_ok "$RAWTRACK" attach ok.raw other.qcow2 --force --cluster-size 65536
verify_attached ok.raw other.qcow2 65536 "$(abspath ok.raw)"
# ... and attaching over a previous attach works too.
expect_ok "$RAWTRACK" attach ok.raw other.qcow2 --force
verify_attached ok.raw other.qcow2 $((2 * MiB)) "$(abspath ok.raw)"
assert_eq "$ok_md5" "$(md5of ok.raw)" "md5 of ok.raw after --force"
rm -f exists.qcow2 other.qcow2

# ---------------------------------------------------------------------------
# 3. Every cluster size, 512 B .. 2 MiB, on a size that is not a multiple
#    of most of them.

size=$((3 * MiB + 512))
make_raw cs.raw "$size"
cs_md5="$(md5of cs.raw)"
for bits in $(seq 9 21); do
  cs=$((1 << bits))
  img="cs$cs.qcow2"
  expect_ok "$RAWTRACK" attach cs.raw "$img" --cluster-size "$cs"
  verify_attached cs.raw "$img" "$cs" "$(abspath cs.raw)"
  "$RAWTRACK" cat "$img" | cmp - cs.raw || die "rawtrack cat $img != cs.raw"
  rm -f "$img"
done
assert_eq "$cs_md5" "$(md5of cs.raw)" "md5 of cs.raw"

# ---------------------------------------------------------------------------
# 4. --relative: the stored name is RAW relative to IMAGE's directory.

mkdir -p disks imgs/sub elsewhere/deeper
make_raw disks/rel.raw $((2 * MiB + 4096))
rel_md5="$(md5of disks/rel.raw)"
expect_ok "$RAWTRACK" attach disks/rel.raw imgs/sub/rel.qcow2 --relative \
  --cluster-size 65536
qemu-img info -f qcow2 --output=json imgs/sub/rel.qcow2 >info.json
assert_eq ../../disks/rel.raw \
  "$(json_get info.json 'j["format-specific"]["data"]["data-file"]')" \
  "relative data-file name"
# QEMU resolves relative data-file names against its CWD: judge the image
# from its own directory.
(
  cd imgs/sub
  verify_attached ../../disks/rel.raw rel.qcow2 65536 ../../disks/rel.raw
)
# rawtrack resolves them against the image's directory, from anywhere.
for dir in . elsewhere elsewhere/deeper imgs imgs/sub /; do
  ( cd "$dir" && "$RAWTRACK" cat "$tmpdir/imgs/sub/rel.qcow2" ) >rel.out ||
    die "rawtrack cat from $dir failed"
  assert_same_file rel.out disks/rel.raw
done
( cd elsewhere/deeper && "$RAWTRACK" cat ../../imgs/sub/rel.qcow2 ) >rel.out ||
  die "rawtrack cat with a relative image path failed"
assert_same_file rel.out disks/rel.raw
( cd elsewhere && "$RAWTRACK" check ../imgs/sub/rel.qcow2 ) >&2 ||
  die "rawtrack check from another directory failed"
# Absolute arguments with --relative store a relative name too.
expect_ok "$RAWTRACK" attach "$tmpdir/disks/rel.raw" "$tmpdir/imgs/rel2.qcow2" \
  --relative
qemu-img info -f qcow2 --output=json imgs/rel2.qcow2 >info.json
assert_eq ../disks/rel.raw \
  "$(json_get info.json 'j["format-specific"]["data"]["data-file"]')" \
  "relative data-file name (absolute arguments)"
( cd / && "$RAWTRACK" cat "$tmpdir/imgs/rel2.qcow2" ) >rel.out ||
  die "rawtrack cat rel2 failed"
assert_same_file rel.out disks/rel.raw
assert_eq "$rel_md5" "$(md5of disks/rel.raw)" "md5 of rel.raw"
rm -f rel.out

# ---------------------------------------------------------------------------
# 5. A loop block device as RAW.

loopdev=""
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null 2>&1; then
  make_raw loop.raw $((8 * MiB))
  loopdev="$(losetup -f --show loop.raw 2>/dev/null)" || loopdev=""
fi
detach_loop ()
{
  if [ -n "$loopdev" ]; then
    losetup -d "$loopdev"
    loopdev=""
  fi
}
if [ -n "$loopdev" ] && [ -b "$loopdev" ]; then
  cleanup_fn detach_loop
  loop_md5="$(md5of "$loopdev")"
  expect_ok "$RAWTRACK" attach "$loopdev" loop.qcow2
  assert_eq "$loop_md5" "$(md5of "$loopdev")" "md5 of $loopdev after attach"
  # The header now names a block device: opening it needs --allow-device
  # (or --data-file), since an image alone may not point at a device.
  st=0
  "$RAWTRACK" cat loop.qcow2 >/dev/null 2>err.txt || st=$?
  [ "$st" = 1 ] && grep -q "named by the image, not by you" err.txt ||
    die "a block device named by the header was not refused"
  "$RAWTRACK" cat loop.qcow2 --data-file "$loopdev" | cmp - loop.raw ||
    die "rawtrack cat loop.qcow2 --data-file $loopdev"
  real_rawtrack="$RAWTRACK"
  printf '%s\n' '#!/bin/sh' 'cmd="$1"; shift' 'case "$cmd" in' \
    "  cat|check|io|serve) exec \"$real_rawtrack\" \"\$cmd\" --allow-device \"\$@\" ;;" \
    'esac' "exec \"$real_rawtrack\" \"\$cmd\" \"\$@\"" >rt-allow
  chmod +x rt-allow
  RAWTRACK="$PWD/rt-allow"
  verify_attached "$loopdev" loop.qcow2 $((2 * MiB)) "$loopdev"
  read_patterns loop.qcow2 $((8 * MiB))
  "$RAWTRACK" cat loop.qcow2 | cmp - loop.raw || die "rawtrack cat loop.qcow2"
  RAWTRACK="$real_rawtrack"
  detach_loop
  assert_eq "$loop_md5" "$(md5of loop.raw)" "md5 of loop.raw"
else
  echo "$progname: losetup unavailable: loop device part skipped"
fi

echo "$progname: OK"
