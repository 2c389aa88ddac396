#!/usr/bin/env bash
# test-qemu-images.sh: rawtrack reads images that QEMU made.
#
# Fixtures made by qemu-img/qemu-io across: cluster sizes 512 B .. 2 MiB,
# refcount widths 1..64, compat 0.10 and 1.1, extended L2, zlib and zstd
# compressed clusters (mixed with uncompressed ones), backing files, external
# data files (with and without data_file_raw), persistent bitmaps (several
# granularities, disabled, in-use after qemu-io was killed, in-use set by
# hand), lazy refcounts, preallocation, resize, internal snapshots, a zero-
# sized disk and a large L1 table.  For each:
#  - `rawtrack info --json` agrees with `qemu-img info --output=json`;
#  - `rawtrack check` exits like `qemu-img check` and its JSON agrees;
#  - `rawtrack cat` equals `qemu-img convert -O raw`.  rawtrack does not
#    follow backing files, so the QEMU side of every comparison opens the
#    image with backing=null: unallocated clusters read as zeros (top layer
#    only).
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires qemu-img bitmap --help
requires "$PYTHON" --version

cd "$tmpdir"

MiB=$((1024 * 1024))
patch="$interop_dir/qcow2-patch.py"
nr=0

# judge IMAGE [nocat]: the three comparisons (see the header).  The
# fixture must be clean for qemu-img check too (check_agrees asserts it).
judge ()
{
  local img="$1"
  nr=$((nr + 1))
  echo "$progname: [$nr] $img" >&2
  info_agrees "$img"
  check_agrees "$img"
  assert_eq 0 "$check_status" "check status of $img"
  if [ "${2:-}" != nocat ]; then
    cat_agrees "$img"
  fi
}

# populate IMAGE SIZE: a mix of data, zero and discarded ranges, unaligned
# for most cluster sizes.
populate ()
{
  local img="$1" size="$2"
  expect_ok qemu-io -f qcow2 \
    -c 'write -P 0x11 0 100k' \
    -c "write -P 0x22 $((MiB - 3584)) 70000" \
    -c "write -z $((2 * MiB)) 64k" \
    -c "write -P 0x33 $((3 * MiB)) 256k" \
    -c "discard $((3 * MiB + 64 * 1024)) 64k" \
    -c "write -P 0x44 $((size - 4096)) 4096" "$img"
}

# mkimg NAME SIZE [qemu-img create -o OPTIONS]: create and populate.
mkimg ()
{
  local img="$1" size="$2" opts="${3:-}"
  if [ -n "$opts" ]; then
    qemu-img create -q -f qcow2 -o "$opts" "$img" "$size"
  else
    qemu-img create -q -f qcow2 "$img" "$size"
  fi
  populate "$img" "$size"
}

# ---------------------------------------------------------------------------
# Cluster sizes, refcount widths, compat, sizes.

for bits in $(seq 9 21); do
  cs=$((1 << bits))
  mkimg "cs$cs.qcow2" $((8 * MiB)) "cluster_size=$cs"
  judge "cs$cs.qcow2"
  rm -f "cs$cs.qcow2"
done

for rb in 1 2 4 8 16 32 64; do
  mkimg "rb$rb.qcow2" $((8 * MiB)) "refcount_bits=$rb,cluster_size=4096"
  judge "rb$rb.qcow2"
  rm -f "rb$rb.qcow2"
done

mkimg v2.qcow2 $((8 * MiB)) compat=0.10
judge v2.qcow2
mkimg v2-512.qcow2 $((8 * MiB)) compat=0.10,cluster_size=512
judge v2-512.qcow2
mkimg v2-2m.qcow2 $((8 * MiB)) compat=0.10,cluster_size=2M
judge v2-2m.qcow2
rm -f v2*.qcow2

mkimg odd.qcow2 $((5 * MiB + 512)) cluster_size=65536
judge odd.qcow2

qemu-img create -q -f qcow2 empty.qcow2 $((8 * MiB))
judge empty.qcow2
qemu-img create -q -f qcow2 zero.qcow2 0
judge zero.qcow2

# A large L1 table (4 GiB with 512-byte clusters: 128 Ki L1 entries).
qemu-img create -q -f qcow2 -o cluster_size=512 bigl1.qcow2 4G
expect_ok qemu-io -f qcow2 -c 'write -P 0x55 0 64k' -c 'write -P 0x56 3G 64k' \
  -c "write -P 0x57 $((4096 * MiB - 512)) 512" bigl1.qcow2
judge bigl1.qcow2 nocat
"$RAWTRACK" cat bigl1.qcow2 --offset $((3072 * MiB - 512)) --length 1024 >part.out
{ head -c 512 /dev/zero; head -c 512 /dev/zero | tr '\0' '\126'; } >part.want
assert_same_file part.out part.want
rm -f bigl1.qcow2 part.out part.want

# ---------------------------------------------------------------------------
# Extended L2 (subclusters).

for cs in 16384 65536 $((2 * MiB)); do
  img="el2-$cs.qcow2"
  mkimg "$img" $((8 * MiB)) "extended_l2=on,cluster_size=$cs"
  expect_ok qemu-io -f qcow2 -c "write -P 0x66 $((5 * MiB + cs / 32)) $((cs / 32))" \
    -c "write -z $((6 * MiB)) $((cs / 16))" "$img"
  judge "$img"
  rm -f "$img"
done

# ---------------------------------------------------------------------------
# Compressed clusters: zlib and zstd, mixed with incompressible (stored
# uncompressed) and later-written clusters.

"$PYTHON" - src.raw <<'EOF'
import os, sys
MiB = 1 << 20
with open(sys.argv[1], "wb") as f:
    for i in range(8):
        f.write(bytes([0x20 + i]) * (MiB // 2))      # compressible
        f.write(os.urandom(MiB // 4))                # incompressible
        f.write(bytes(MiB // 4))                     # zeros
EOF
for ct_cs in zlib:4096 zlib:65536 zstd:512 zstd:65536 zstd:$((2 * MiB)); do
  ct="${ct_cs%:*}" cs="${ct_cs#*:}"
  img="comp-$ct-$cs.qcow2"
  qemu-img convert -c -f raw -O qcow2 \
    -o "compression_type=$ct,cluster_size=$cs" src.raw "$img"
  judge "$img"
  # Overwrite part of it (uncompressed now), then again.
  expect_ok qemu-io -f qcow2 -c "write -P 0x77 $((MiB / 4)) 100k" "$img"
  judge "$img"
  rm -f "$img"
done
qemu-img convert -c -f raw -O qcow2 -o compat=0.10 src.raw comp-v2.qcow2
judge comp-v2.qcow2
rm -f comp-v2.qcow2

# ---------------------------------------------------------------------------
# Backing files: only the top layer is compared.

mkimg base.qcow2 $((8 * MiB))
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
expect_ok qemu-io -f qcow2 -c 'write -P 0x88 64k 64k' -c "write -z $((4 * MiB)) 1M" top.qcow2
judge top.qcow2
qemu-img create -q -f qcow2 -b "$tmpdir/base.qcow2" -F qcow2 -o compat=0.10 topv2.qcow2
expect_ok qemu-io -f qcow2 -c 'write -P 0x89 1M 4k' topv2.qcow2
judge topv2.qcow2
qemu-img create -q -f raw base.raw $((8 * MiB))
qemu-img create -q -f qcow2 -b base.raw -F raw -o cluster_size=4096 topraw.qcow2
expect_ok qemu-io -f qcow2 -c 'write -P 0x8a 1M 4k' topraw.qcow2
judge topraw.qcow2
rm -f top*.qcow2 base.qcow2 base.raw

# ---------------------------------------------------------------------------
# External data files.

for cs in 512 65536 $((2 * MiB)); do
  mkimg "df$cs.qcow2" $((8 * MiB)) "data_file=$tmpdir/df$cs.data,cluster_size=$cs"
  judge "df$cs.qcow2"
  mkimg "dfr$cs.qcow2" $((8 * MiB)) "data_file=$tmpdir/dfr$cs.data,data_file_raw=on,cluster_size=$cs"
  judge "dfr$cs.qcow2"
  "$RAWTRACK" cat "dfr$cs.qcow2" | cmp - "dfr$cs.data" ||
    die "dfr$cs.qcow2: data file is not the disk"
  rm -f "df$cs.qcow2" "df$cs.data" "dfr$cs.qcow2" "dfr$cs.data"
done
mkimg dfel2.qcow2 $((8 * MiB)) "data_file=$tmpdir/dfel2.data,data_file_raw=on,extended_l2=on"
judge dfel2.qcow2
rm -f dfel2.qcow2 dfel2.data
# info must not need the data file.
mkimg dfgone.qcow2 $((4 * MiB)) "data_file=$tmpdir/dfgone.data,data_file_raw=on"
rm dfgone.data
info_agrees dfgone.qcow2
rm -f dfgone.qcow2

# ---------------------------------------------------------------------------
# Persistent dirty bitmaps.

mkimg bm.qcow2 $((8 * MiB))
expect_ok qemu-img bitmap --add bm.qcow2 b0
expect_ok qemu-img bitmap --add -g 512 bm.qcow2 b-512
expect_ok qemu-img bitmap --add -g 2M --disable bm.qcow2 b-2m-disabled
expect_ok qemu-img bitmap --add -g 64k bm.qcow2 "a name with spaces"
judge bm.qcow2
# Writes mark the enabled bitmaps (qemu-io loads and stores them).
expect_ok qemu-io -f qcow2 -c 'write -P 0x99 1M 64k' bm.qcow2
judge bm.qcow2
expect_ok qemu-img bitmap --remove bm.qcow2 b-512
expect_ok qemu-img bitmap --clear bm.qcow2 b0
judge bm.qcow2
# in-use by hand (flags in_use|auto).
"$PYTHON" "$patch" set-bitmap-flags bm.qcow2 b0 3
qemu-img info --output=json bm.qcow2 >info.json
json_get info.json 'j["format-specific"]["data"]["bitmaps"]' | grep -q in-use ||
  hard_error "fixture: b0 is not in-use"
judge bm.qcow2

# in-use because qemu-io was killed while it had the image open.
mkimg bmkill.qcow2 $((8 * MiB)) cluster_size=4096
expect_ok qemu-img bitmap --add bmkill.qcow2 live
expect_ok qemu-img bitmap --add --disable bmkill.qcow2 off
kill9_holding bmkill.qcow2 'write -P 0xab 0 64k' '^(qemu-io> )?wrote 65536/65536'
qemu-img info --output=json bmkill.qcow2 >info.json
json_get info.json 'j["format-specific"]["data"]["bitmaps"]' | grep -q in-use ||
  hard_error "fixture: bitmap 'live' not in-use after kill -9"
judge bmkill.qcow2

# Many bitmaps (the directory spans several 512-byte clusters).
mkimg bmmany.qcow2 $((4 * MiB)) cluster_size=512
for i in $(seq 1 40); do
  expect_ok qemu-img bitmap --add -g $((512 << (i % 10))) bmmany.qcow2 \
    "bitmap-number-$i-$(printf '%0*d' $((i * 3)) 0)"
done
judge bmmany.qcow2

# Bitmaps on a data-file-raw image.
mkimg bmdf.qcow2 $((8 * MiB)) "data_file=$tmpdir/bmdf.data,data_file_raw=on"
expect_ok qemu-img bitmap --add bmdf.qcow2 track
expect_ok qemu-io -f qcow2 -c 'write -P 0xcd 2M 64k' bmdf.qcow2
judge bmdf.qcow2
rm -f bm*.qcow2 bmdf.data

# ---------------------------------------------------------------------------
# Lazy refcounts, preallocation, resize, internal snapshots, corrupt bit.

mkimg lazy.qcow2 $((8 * MiB)) lazy_refcounts=on
judge lazy.qcow2

for prealloc in metadata falloc full; do
  mkimg "pre-$prealloc.qcow2" $((8 * MiB)) "preallocation=$prealloc,cluster_size=65536"
  judge "pre-$prealloc.qcow2"
  rm -f "pre-$prealloc.qcow2"
done

mkimg resized.qcow2 $((4 * MiB)) cluster_size=512
expect_ok qemu-img resize -q resized.qcow2 $((64 * MiB))
expect_ok qemu-io -f qcow2 -c "write -P 0xef $((64 * MiB - 8192)) 8192" resized.qcow2
judge resized.qcow2
expect_ok qemu-img resize -q --shrink resized.qcow2 $((32 * MiB))
judge resized.qcow2

mkimg snap.qcow2 $((8 * MiB))
expect_ok qemu-img snapshot -c s1 snap.qcow2
expect_ok qemu-io -f qcow2 -c 'write -P 0xf1 0 64k' -c "write -P 0xf2 $((5 * MiB)) 1M" snap.qcow2
expect_ok qemu-img snapshot -c s2 snap.qcow2
expect_ok qemu-io -f qcow2 -c 'write -P 0xf3 32k 64k' snap.qcow2
judge snap.qcow2
expect_ok qemu-img snapshot -d s1 snap.qcow2
judge snap.qcow2

mkimg corrupt.qcow2 $((4 * MiB))
"$PYTHON" "$patch" set-incompat corrupt.qcow2 0x2
qemu-img info --output=json corrupt.qcow2 >info.json
assert_eq true "$(json_get info.json 'j["format-specific"]["data"]["corrupt"]')" "fixture corrupt bit"
info_agrees corrupt.qcow2
cat_agrees corrupt.qcow2

echo "$progname: $nr images compared: OK"
