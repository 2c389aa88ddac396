#!/usr/bin/env bash
# test-create.sh: images made by `rawtrack create` are valid for QEMU.
#
# For each variant (compat 0.10/1.1, refcount bits 1..64, cluster sizes
# 512 B .. 2 MiB, external data file with and without data-file-raw, sizes
# that are not cluster multiples):
#  - `qemu-img check` is clean, and `rawtrack info --json` agrees with
#    `qemu-img info --output=json` on every shared field;
#  - qemu-io writes (data, zeroes, unaligned, last sector) read back, the
#    image stays clean, and `rawtrack cat` equals `qemu-img convert -O raw`;
#  - `rawtrack check` agrees with `qemu-img check` before and after.
# Also: refusals (existing IMAGE without --force, impossible combinations).
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires "$PYTHON" --version

cd "$tmpdir"

MiB=$((1024 * 1024))

# exercise IMAGE SIZE CLUSTER-SIZE [EXPR WANT]...: judge a fresh image
# (qemu-img info must show SIZE, CLUSTER-SIZE and the json_expect pairs),
# write to it with qemu-io, judge it again.
exercise ()
{
  local img="$1" size="$2" cs="$3"; shift 3
  # (check_agrees also requires qemu-img check to exit 0.)
  qemu-img info -f qcow2 --output=json "$img" >info.json
  json_expect info.json 'j["virtual-size"]' "$size" \
    'j["cluster-size"]' "$cs" "$@"
  info_agrees "$img"
  check_agrees "$img"
  assert_eq 0 "$check_status" "rawtrack check of fresh $img"
  cat_agrees "$img"

  # Writes: aligned, unaligned across a cluster boundary, zeroes, the last
  # sector.
  expect_ok qemu-io -f qcow2 \
    -c 'write -P 0xaa 0 64k' \
    -c "write -P 0xbb $((MiB - 1536)) 5000" \
    -c 'write -z 8k 4k' \
    -c "write -P 0xcc $((size - 512)) 512" "$img"
  expect_ok qemu-io -f qcow2 -r \
    -c 'read -P 0xaa 0 8k' -c 'read -P 0 8k 4k' -c 'read -P 0xaa 12k 52k' \
    -c "read -P 0xbb $((MiB - 1536)) 5000" \
    -c "read -P 0xcc $((size - 512)) 512" "$img"
  info_agrees "$img"
  check_agrees "$img"
  assert_eq 0 "$check_status" "rawtrack check of written $img"
  cat_agrees "$img"
  # [MiB-2048, MiB+6144): 512 zeros, 5000 x 0xbb, 2680 zeros.
  "$RAWTRACK" cat "$img" --offset $((MiB - 2048)) --length 8192 >part.out
  { head -c 512 /dev/zero; head -c 5000 /dev/zero | tr '\0' '\273'
    head -c 2680 /dev/zero; } >part.want
  assert_same_file part.out part.want
  rm -f part.out part.want
}

# 1. Defaults, compat, sizes that are not cluster multiples.
expect_ok "$RAWTRACK" create d.qcow2 $((24 * MiB))
exercise d.qcow2 $((24 * MiB)) 65536 'j["format-specific"]["data"]["compat"]' 1.1
rm -f d.qcow2

for compat in 0.10 1.1; do
  expect_ok "$RAWTRACK" create "c$compat.qcow2" $((16 * MiB)) --compat "$compat"
  exercise "c$compat.qcow2" $((16 * MiB)) 65536 \
    'j["format-specific"]["data"]["compat"]' "$compat"
  rm -f "c$compat.qcow2"
done

expect_ok "$RAWTRACK" create odd.qcow2 $((3 * MiB + 512))
exercise odd.qcow2 $((3 * MiB + 512)) 65536
rm -f odd.qcow2

# 2. Refcount widths.
for rb_cs in 1:512 2:512 4:512 8:512 16:512 32:512 64:512 1:65536 64:65536; do
  rb="${rb_cs%:*}" cs="${rb_cs#*:}"
  img="rb$rb-$cs.qcow2"
  expect_ok "$RAWTRACK" create "$img" $((4 * MiB)) --refcount-bits "$rb" \
    --cluster-size "$cs"
  exercise "$img" $((4 * MiB)) "$cs" \
    'j["format-specific"]["data"]["refcount-bits"]' "$rb"
  rm -f "$img"
done

# 3. Cluster sizes.
for bits in $(seq 9 21); do
  cs=$((1 << bits))
  img="cs$cs.qcow2"
  expect_ok "$RAWTRACK" create "$img" $((5 * MiB + 1024)) --cluster-size "$cs"
  exercise "$img" $((5 * MiB + 1024)) "$cs"
  rm -f "$img"
done
# Many L2 tables: 512-byte clusters and a larger disk.
expect_ok "$RAWTRACK" create many.qcow2 $((256 * MiB)) --cluster-size 512
qcheck many.qcow2
info_agrees many.qcow2
check_agrees many.qcow2
assert_eq 0 "$check_status" "rawtrack check of many.qcow2"
expect_ok qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' -c "write -P 0x5b $((200 * MiB)) 64k" many.qcow2
qcheck many.qcow2
check_agrees many.qcow2
assert_eq 0 "$check_status" "rawtrack check of many.qcow2 (written)"
"$RAWTRACK" cat many.qcow2 --offset $((200 * MiB - 512)) --length $((64 * 1024 + 1024)) >part.out
qemu-img convert -O raw many.qcow2 many.raw
extract many.raw $((200 * MiB - 512)) $((64 * 1024 + 1024)) >part.want
assert_same_file part.out part.want
rm -f many.qcow2 many.raw part.out part.want

# 4. External data files, without and with data-file-raw.
for raw in "" --data-file-raw; do
  for cs in 512 65536 $((2 * MiB)); do
    img="df$raw$cs.qcow2" df="$tmpdir/df$raw$cs.data"
    expect_ok "$RAWTRACK" create "$img" $((8 * MiB)) --cluster-size "$cs" \
      --data-file "$df" $raw
    [ -e "$df" ] || die "create --data-file did not create $df"
    if [ -n "$raw" ]; then want=true; else want=false; fi
    exercise "$img" $((8 * MiB)) "$cs" \
      'j["format-specific"]["data"]["data-file"]' "$df" \
      'j["format-specific"]["data"]["data-file-raw"]' "$want"
    if [ -n "$raw" ]; then
      # The data file alone is the disk.
      "$RAWTRACK" cat "$img" | cmp - "$df" ||
        die "$img: data file is not a raw image of the disk"
      expect_ok qemu-img compare -f raw -F qcow2 "$df" "$img"
    fi
    # info works without the data file; check does not.
    mv "$df" "$df.moved"
    info_agrees "$img"
    expect_exit 1 "$RAWTRACK" check "$img"
    expect_exit 0 "$RAWTRACK" check "$img" --data-file "$df.moved"
    "$RAWTRACK" cat "$img" --data-file "$df.moved" >moved.out
    mv "$df.moved" "$df"
    "$RAWTRACK" cat "$img" | cmp - moved.out || die "cat --data-file"
    rm -f "$img" "$df" moved.out
  done
done

# compat 0.10 with a data file and refcount bits 1 under 0.10: qcow2 v2
# cannot express them.
expect_fail "$RAWTRACK" create bad1.qcow2 1048576 --compat 0.10 --data-file "$tmpdir/bad1.data"
assert_absent bad1.qcow2
expect_fail "$RAWTRACK" create bad2.qcow2 1048576 --compat 0.10 --refcount-bits 1
assert_absent bad2.qcow2
# data-file-raw needs a data file.
expect_fail "$RAWTRACK" create bad3.qcow2 1048576 --data-file-raw
assert_absent bad3.qcow2
# Invalid values.
for opt in "--cluster-size 256" "--cluster-size 4194304" "--cluster-size 3000" \
           "--refcount-bits 3" "--refcount-bits 128" "--refcount-bits 0" \
           "--compat 2" "--compat 1.0" "--compat 3"; do
  # shellcheck disable=SC2086
  expect_exit 1 "$RAWTRACK" create bad4.qcow2 1048576 $opt
  assert_absent bad4.qcow2
done

# 5. IMAGE exists: refused without --force, replaced with it.
echo "precious" >exists.qcow2
expect_exit 1 "$RAWTRACK" create exists.qcow2 $((4 * MiB))
assert_eq precious "$(cat exists.qcow2)" "existing file after refusal"
expect_ok "$RAWTRACK" create exists.qcow2 $((4 * MiB)) --force
exercise exists.qcow2 $((4 * MiB)) 65536

echo "$progname: OK"
