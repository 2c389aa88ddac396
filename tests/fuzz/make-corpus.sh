#!/usr/bin/env bash
# make-corpus.sh: regenerate the seed corpora of the fuzz targets.
#
#   tests/fuzz/make-corpus.sh [CORPUS-DIR]     (default: corpus/ beside this)
#
# Needs qemu-img, qemu-io and python3 (corpus-tool.py does the hand-made
# parts).  The output is checked in, so the tests never need qemu: run this
# only to change the seeds, then check the sizes it prints (every file
# under 300 KiB, the whole corpus under 5 MiB).
#
#   corpus/image/       qemu-*     images made by qemu-img (+ qemu-io writes)
#                       hand-*     valid images patched by hand
#                       hostile-*  damaged images (test-hostile.c lists what
#                                  opening each must do)
#   corpus/header/      cluster 0 of each of the above
#   corpus/bitmap-dir/  bitmap directories with fuzz-bitmap-dir's prefix
#
# Files named crash-* (regressions) and found-* (new coverage kept from
# fuzzing runs) are not generated here and are left alone.
#
# Images are small on purpose: tiny virtual sizes and 512 B - 16 KiB
# clusters.  qemu-img files are sparse, but a corpus file's logical size is
# what gets checked in.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/corpus}"
tool="$here/corpus-tool.py"

for prog in qemu-img qemu-io python3; do
  if ! command -v "$prog" >/dev/null; then
    echo "make-corpus.sh: $prog is needed" >&2
    exit 1
  fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

# create NAME OPTIONS SIZE: a new qcow2 image
create ()
{
  qemu-img create -q -f qcow2 -o "$2" "$1" "$3"
}

# io NAME COMMAND...: run qemu-io commands on an image
io ()
{
  local img="$1" args=()
  shift
  for c in "$@"; do
    args+=(-c "$c")
  done
  qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null
}

# Some guest data: two patterns, a zeroed range, a discarded range.
fill ()
{
  io "$1" 'write -P 0xaa 0 1k' 'write -P 0x55 40k 512' 'write -z 8k 1k' \
          'write -P 0x11 16k 2k' 'discard 17k 512'
}

mkdir base
b=base

create $b/qemu-v2-c512 compat=0.10,cluster_size=512 64K
io $b/qemu-v2-c512 'write -P 0xaa 0 1k' 'write -P 0x55 40k 512'
create $b/qemu-v2-c4k compat=0.10,cluster_size=4096 256K
io $b/qemu-v2-c4k 'write -P 0xaa 0 4k' 'write -P 0x55 200k 6k'
create $b/qemu-v3-c512 compat=1.1,cluster_size=512 64K
fill $b/qemu-v3-c512
create $b/qemu-v3-c4k cluster_size=4096 256K
io $b/qemu-v3-c4k 'write -P 0xaa 0 8k' 'write -P 0x55 100k 1k' \
                  'write -z 4k 4k' 'discard 100k 4k' 'write -P 0x22 252k 4k'
create $b/qemu-v3-c4k-8g cluster_size=4096 8G
io $b/qemu-v3-c4k-8g 'write -P 0xaa 0 4k' 'write -P 0x55 7G 4k'
create $b/qemu-v3-c64k-empty cluster_size=65536 1M
for bits in 1 2 4 8 32 64; do
  create $b/qemu-v3-c512-rc$bits cluster_size=512,refcount_bits=$bits 64K
  fill $b/qemu-v3-c512-rc$bits
done
create $b/qemu-v3-c512-lazy cluster_size=512,lazy_refcounts=on 64K
fill $b/qemu-v3-c512-lazy
create $b/qemu-v3-c512-prealloc cluster_size=512,preallocation=metadata 32K
create $b/qemu-v3-c16k-extl2 cluster_size=16384,extended_l2=on 256K
io $b/qemu-v3-c16k-extl2 'write -P 0xaa 0 512' 'write -P 0x55 2k 1k' \
                         'write -z 8k 1k' 'write -P 0x33 32k 16k' \
                         'write -z 64k 16k' 'discard 33k 512'

# Compressed clusters: a raw source with compressible and random parts.
python3 - <<'EOF'
import random
r = random.Random(42)
data = bytearray()
data += b"rawtrack " * 455 + bytes(4096 - 455 * 9)      # compressible
data += bytes(r.getrandbits(8) for _ in range(4096))    # incompressible
data += bytes(8192)                                     # zeros
data += bytes(range(256)) * 48                          # 12 KiB pattern
open("src.raw", "wb").write(data + bytes(65536 - len(data)))
EOF
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 \
  src.raw $b/qemu-v3-c4k-zlib
qemu-img convert -q -c -f raw -O qcow2 \
  -o cluster_size=4096,compression_type=zstd src.raw $b/qemu-v3-c4k-zstd
qemu-img convert -q -c -f raw -O qcow2 \
  -o cluster_size=512,compression_type=zstd src.raw $b/qemu-v3-c512-zstd
qemu-img convert -q -c -f raw -O qcow2 -o compat=0.10,cluster_size=512 \
  src.raw $b/qemu-v2-c512-zlib

# Backing files (the base is not part of the corpus; only the name is).
create $b/base.img cluster_size=512 64K
qemu-img create -q -f qcow2 -b base.img -F qcow2 -o cluster_size=512 \
  $b/qemu-v3-c512-backing 64K
io $b/qemu-v3-c512-backing 'write -P 0x77 4k 512'
qemu-img create -q -f qcow2 -b base.img -F qcow2 -o cluster_size=4096 \
  $b/qemu-v3-c4k-backing 64K
qemu-img create -q -f qcow2 -b base.img -F qcow2 \
  -o compat=0.10,cluster_size=512 $b/qemu-v2-c512-backing 64K

# External data files (only the qcow2 file goes into the corpus).
create $b/qemu-v3-c512-datafile cluster_size=512,data_file=df1.data 64K
fill $b/qemu-v3-c512-datafile
create $b/qemu-v3-c512-datafile-raw \
  cluster_size=512,data_file=df2.data,data_file_raw=on 16K
io $b/qemu-v3-c512-datafile-raw 'write -P 0xaa 0 1k' 'write -z 4k 512'
create $b/qemu-v3-c16k-datafile-extl2 \
  cluster_size=16384,extended_l2=on,data_file=df3.data,data_file_raw=on 64K
io $b/qemu-v3-c16k-datafile-extl2 'write -P 0xaa 0 1k' 'write -z 16k 4k'

# Persistent bitmaps, dirtied by qemu-io writes (enabled bitmaps track).
create $b/qemu-v3-c512-bitmaps cluster_size=512 64K
qemu-img bitmap --add -g 512 $b/qemu-v3-c512-bitmaps b0
qemu-img bitmap --add -g 4096 $b/qemu-v3-c512-bitmaps b1
qemu-img bitmap --add --disable $b/qemu-v3-c512-bitmaps b2
io $b/qemu-v3-c512-bitmaps 'write -P 0xaa 0 1k' 'write -P 0x55 40k 512'
create $b/qemu-v3-c4k-bitmaps cluster_size=4096 64M
qemu-img bitmap --add -g 65536 $b/qemu-v3-c4k-bitmaps "a bitmap"
io $b/qemu-v3-c4k-bitmaps 'write -P 0xaa 0 4k' 'write -P 0x55 60M 4k'
qemu-img bitmap --add -g 512 $b/qemu-v3-c4k-bitmaps fine
qemu-img bitmap --clear $b/qemu-v3-c4k-bitmaps "a bitmap"
create $b/qemu-v3-c16k-extl2-bitmaps cluster_size=16384,extended_l2=on 1M
qemu-img bitmap --add -g 16384 $b/qemu-v3-c16k-extl2-bitmaps b
io $b/qemu-v3-c16k-extl2-bitmaps 'write -P 0xaa 0 1k'

# Internal snapshots.
create $b/qemu-v3-c512-snapshots cluster_size=512 64K
io $b/qemu-v3-c512-snapshots 'write -P 0xaa 0 1k'
qemu-img snapshot -c s1 $b/qemu-v3-c512-snapshots
io $b/qemu-v3-c512-snapshots 'write -P 0xbb 0 512' 'write -P 0xcc 8k 512'
qemu-img snapshot -c s2 $b/qemu-v3-c512-snapshots
create $b/qemu-v2-c512-snapshots compat=0.10,cluster_size=512 64K
io $b/qemu-v2-c512-snapshots 'write -P 0xaa 0 1k'
qemu-img snapshot -c only $b/qemu-v2-c512-snapshots

for f in $b/qemu-*; do
  qemu-img check -q "$f" >/dev/null 2>&1 ||
    { echo "make-corpus.sh: qemu-img check failed on $f" >&2; exit 1; }
done

# Replace the generated files; keep crash-* and found-*.
for d in image header bitmap-dir; do
  mkdir -p "$out/$d"
  find "$out/$d" -maxdepth 1 -type f \
    \( -name 'qemu-*' -o -name 'hand-*' -o -name 'hostile-*' \) -delete
done
cp $b/qemu-* "$out/image/"
python3 "$tool" images $b "$out/image"
python3 "$tool" headers "$out/image" "$out/header"
python3 "$tool" bitmap-dirs "$out/image" "$out/bitmap-dir"

big="$(find "$out" -type f -size +300k)"
if [ -n "$big" ]; then
  echo "make-corpus.sh: files over 300 KiB:" $big >&2
  exit 1
fi
for d in image header bitmap-dir; do
  echo "$d: $(ls "$out/$d" | wc -l) files, $(du -sk --apparent-size "$out/$d" | cut -f1) KiB"
done
