#!/usr/bin/env python3
# qcow2-hostile.py: write hostile but well-formed-looking qcow2 images for
# tests (issue #14 item 10).  Only metadata is written; the file is small.
#
#   qcow2-hostile.py shared-table IMAGE SIZE NBITMAPS GRAN_BITS
#       a v3 image of SIZE bytes whose NBITMAPS persistent bitmaps all
#       point at one bitmap table, every entry 1 (an all-ones cluster):
#       the table's cluster has refcount 1 although many bitmaps use it
#   qcow2-hostile.py shared-data IMAGE SIZE NBITMAPS GRAN_BITS
#       the same, but every table entry points at one data cluster of
#       0xff bytes (refcount 1): one cluster stands for every bitmap's data
#   qcow2-hostile.py huge IMAGE SIZE [CLUSTER_BITS]
#       a v3 image claiming SIZE bytes (up to what the L1 table allows)
#       with an empty L1 table: QEMU opens it without allocating for SIZE
#
# Layout (64 KiB clusters unless CLUSTER_BITS): 0 header, 1 refcount table, 2.. refcount
# blocks, then the L1 table, the bitmap table, the bitmap directory.
# Integers big-endian, as docs/interop/qcow2.txt says.

import struct
import sys

CL = 1 << 16
EXT_BITMAPS = 0x23852875


def clusters(nbytes):
    return (nbytes + CL - 1) // CL


def write(path, size, nbitmaps=0, gran_bits=16, data=False):
    l1_entries = clusters(size) // (CL // 8) + 1
    l1_entries = (size + CL * (CL // 8) - 1) // (CL * (CL // 8))
    l1_cl = max(1, clusters(l1_entries * 8))
    tab_entries = 0
    if nbitmaps:
        per_entry = (1 << gran_bits) * CL * 8
        tab_entries = (size + per_entry - 1) // per_entry
    tab_cl = clusters(tab_entries * 8) if nbitmaps else 0
    dir_bytes = 0
    names = []
    for i in range(nbitmaps):
        name = b"b%d" % i
        names.append(name)
        dir_bytes += (24 + len(name) + 7) // 8 * 8
    dir_cl = clusters(dir_bytes)
    data_cl = 1 if data else 0
    # refcount blocks: 16-bit refcounts, 32768 per block
    rest = l1_cl + tab_cl + dir_cl + data_cl
    nblocks = 1
    while (2 + nblocks + rest) > nblocks * (CL // 2):
        nblocks += 1
    l1_off = (2 + nblocks) * CL
    tab_off = l1_off + l1_cl * CL
    dir_off = tab_off + tab_cl * CL
    data_off = dir_off + dir_cl * CL
    total = (2 + nblocks + rest)
    with open(path, "wb") as f:
        f.truncate(total * CL)
        hdr = struct.pack(">IIQIIQIIQQIIQQQQII", 0x514649FB, 3, 0, 0,
                          CL.bit_length() - 1,
                          size, 0, l1_entries, l1_off, CL, 1, 0, 0, 0, 0,
                          1 if nbitmaps else 0, 4, 104)
        f.seek(0)
        f.write(hdr)
        if nbitmaps:
            f.write(struct.pack(">II", EXT_BITMAPS, 24))
            f.write(struct.pack(">IIQQ", nbitmaps, 0, dir_bytes, dir_off))
        f.write(struct.pack(">II", 0, 0))
        f.seek(CL)
        f.write(b"".join(struct.pack(">Q", (2 + i) * CL)
                         for i in range(nblocks)))
        f.seek(2 * CL)
        f.write(struct.pack(">H", 1) * total)  # 16-bit refcounts
        if nbitmaps:
            f.seek(tab_off)
            f.write(struct.pack(">Q", data_off if data else 1) * tab_entries)
            if data:
                f.seek(data_off)
                f.write(b"\xff" * CL)
            f.seek(dir_off)
            for name in names:
                e = struct.pack(">QIIBBHI", tab_off, tab_entries, 2, 1,
                                gran_bits, len(name), 0) + name
                e += b"\0" * ((-len(e)) % 8)
                f.write(e)


def main(argv):
    if len(argv) == 6 and argv[1] == "shared-table":
        write(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    elif len(argv) == 6 and argv[1] == "shared-data":
        write(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), True)
    elif len(argv) in (4, 5) and argv[1] == "huge":
        global CL
        if len(argv) == 5:
            CL = 1 << int(argv[4])
        write(argv[2], int(argv[3]))
    else:
        sys.exit(__doc__ if __doc__ else "usage: see the file's head")


main(sys.argv)
