#!/usr/bin/env python3
# corpus-tool.py: the hand-made parts of the fuzz corpora (see make-corpus.sh).
#
#   corpus-tool.py images BASEDIR OUTDIR
#       hand-*     valid images qemu-img cannot make directly (extra header
#                  fields, unknown extensions, header_length 104, ...)
#       hostile-*  damaged copies of the qemu-img images in BASEDIR: offsets
#                  past EOF, misaligned or overlapping tables, huge sizes,
#                  bad extension lengths, reference loops, bad bitmap
#                  directories, snapshot table garbage, ...
#   corpus-tool.py headers IMAGEDIR OUTDIR
#       cluster 0 of every image in IMAGEDIR (trailing zeros trimmed), for
#       fuzz-header
#   corpus-tool.py bitmap-dirs IMAGEDIR OUTDIR
#       the bitmap directory of every image that has one, behind the 16-byte
#       parameter prefix fuzz-bitmap-dir.c reads, plus hand-made directories
#
# BASEDIR holds the qemu-img images under their corpus names (qemu-*).
# tests/fuzz/test-hostile.c knows what opening each hostile-* file must do;
# keep the two lists in step.  All integers in qcow2 are big-endian.

import os
import struct
import sys

MAGIC = 0x514649FB
EXT_END = 0
EXT_BACKING_FMT = 0xE2792ACA
EXT_FEATURES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_FDE = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# Header field offsets and struct formats.
F = {
    "version": (4, ">I"), "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"), "cluster_bits": (20, ">I"),
    "size": (24, ">Q"), "crypt_method": (32, ">I"), "l1_size": (36, ">I"),
    "l1_table_offset": (40, ">Q"), "refcount_table_offset": (48, ">Q"),
    "refcount_table_clusters": (56, ">I"), "nb_snapshots": (60, ">I"),
    "snapshots_offset": (64, ">Q"), "incompat": (72, ">Q"),
    "compat": (80, ">Q"), "autoclear": (88, ">Q"),
    "refcount_order": (96, ">I"), "header_length": (100, ">I"),
    "compression_type": (104, ">B"),
}


def get(buf, off, fmt):
    return struct.unpack_from(fmt, buf, off)[0]


def put(buf, off, fmt, value):
    end = off + struct.calcsize(fmt)
    if end > len(buf):
        buf.extend(bytes(end - len(buf)))
    struct.pack_into(fmt, buf, off, value)


class Image:
    """A qcow2 file held in memory, with just enough parsing to damage it."""

    def __init__(self, data):
        self.b = bytearray(data)
        if get(self.b, 0, ">I") != MAGIC:
            raise SystemExit("not a qcow2 image")

    def __getitem__(self, field):
        off, fmt = F[field]
        if self.version == 2 and off >= 72:
            return {"refcount_order": 4, "header_length": 72}.get(field, 0)
        return get(self.b, off, fmt)

    def __setitem__(self, field, value):
        off, fmt = F[field]
        put(self.b, off, fmt, value)

    @property
    def version(self):
        return get(self.b, 4, ">I")

    @property
    def cs(self):
        return 1 << get(self.b, 20, ">I")

    @property
    def ext_l2(self):
        return self.version >= 3 and bool(self["incompat"] & 0x10)

    def extensions(self):
        """[(type, offset of the extension header, data)]"""
        out = []
        off = self["header_length"]
        end = self["backing_file_offset"] or self.cs
        while off + 8 <= end:
            t, n = struct.unpack_from(">II", self.b, off)
            if t == EXT_END:
                break
            out.append((t, off, bytes(self.b[off + 8:off + 8 + n])))
            off += 8 + (n + 7) // 8 * 8
        return out

    def set_extensions(self, exts, end_marker=True):
        """Rewrite the extension area: exts is [(type, data) or raw bytes]."""
        start = self["header_length"]
        area = bytearray()
        for e in exts:
            if isinstance(e, (bytes, bytearray)):
                area += e
                continue
            t, data = e
            area += struct.pack(">II", t, len(data)) + data
            area += bytes(-len(data) % 8)
        if end_marker:
            area += bytes(8)
        assert self["backing_file_offset"] == 0
        limit = max(self.cs, start + len(area))
        if len(self.b) < limit:
            self.b.extend(bytes(limit - len(self.b)))
        self.b[start:self.cs] = bytes(self.cs - start)
        self.b[start:start + len(area)] = area

    def ext(self, t):
        for et, off, data in self.extensions():
            if et == t:
                return off, data
        return None

    # --- tables ---
    def l1(self, i):
        return get(self.b, self["l1_table_offset"] + 8 * i, ">Q")

    def set_l1(self, i, v):
        put(self.b, self["l1_table_offset"] + 8 * i, ">Q", v)

    def l2_offset(self, i=0):
        return self.l1(i) & 0x00FFFFFFFFFFFE00

    def l2_entry_size(self):
        return 16 if self.ext_l2 else 8

    def l2(self, i, l1i=0):
        return get(self.b, self.l2_offset(l1i) + self.l2_entry_size() * i,
                   ">Q")

    def set_l2(self, i, v, l1i=0, bitmap=None):
        off = self.l2_offset(l1i) + self.l2_entry_size() * i
        put(self.b, off, ">Q", v)
        if bitmap is not None:
            put(self.b, off + 8, ">Q", bitmap)

    def reftable(self, i):
        return get(self.b, self["refcount_table_offset"] + 8 * i, ">Q")

    def set_reftable(self, i, v):
        put(self.b, self["refcount_table_offset"] + 8 * i, ">Q", v)

    def bitmaps_ext(self):
        off, data = self.ext(EXT_BITMAPS)
        nb, res, size, doff = struct.unpack(">IIQQ", data)
        return off, nb, size, doff

    def set_bitmaps_ext(self, nb=None, reserved=None, size=None, off=None):
        eoff, onb, osize, ooff = self.bitmaps_ext()
        d = eoff + 8
        if nb is not None:
            put(self.b, d, ">I", nb)
        if reserved is not None:
            put(self.b, d + 4, ">I", reserved)
        if size is not None:
            put(self.b, d + 8, ">Q", size)
        if off is not None:
            put(self.b, d + 16, ">Q", off)

    def bitmap_entries(self):
        """[offset of each directory entry]"""
        _, nb, size, doff = self.bitmaps_ext()
        out, off = [], doff
        for _ in range(nb):
            out.append(off)
            nlen = get(self.b, off + 18, ">H")
            extra = get(self.b, off + 20, ">I")
            off += (24 + extra + nlen + 7) // 8 * 8
        return out

    def append_cluster(self, data=b""):
        """Append one cluster (data padded with zeros); return its offset."""
        off = (len(self.b) + self.cs - 1) // self.cs * self.cs
        self.b.extend(bytes(off - len(self.b)))
        self.b += data + bytes(self.cs - len(data))
        return off

    def data(self):
        return bytes(self.b)


def features_table(entries):
    out = bytearray()
    for t, bit, name in entries:
        out += struct.pack(">BB", t, bit) + name.ljust(46, b"\0")[:46]
    return bytes(out)


def lcg_bytes(n, seed):
    """Deterministic garbage."""
    out = bytearray()
    x = seed
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append((x >> 16) & 0xFF)
    return bytes(out)


# ---- hand-made valid images and hostile ones --------------------------------

def make_images(base, out):
    def load(name):
        with open(os.path.join(base, name), "rb") as f:
            return Image(f.read())

    def save(name, img):
        data = img.data() if isinstance(img, Image) else img
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

    plain = "qemu-v3-c512"
    bm = "qemu-v3-c512-bitmaps"

    # -- hand-made valid images --
    im = load(plain)
    im["header_length"] = 128          # 16 bytes of unknown header fields
    rest = im.extensions()
    im.b[112:128] = lcg_bytes(16, 1)
    im.set_extensions([(t, d) for t, _, d in rest])
    save("hand-v3-extra-fields", im)

    im = load(plain)
    im.set_extensions([(0x11111111, b"first"), (0x22222222, b""),
                       (0x33333333, lcg_bytes(40, 2))])
    save("hand-v3-unknown-exts", im)

    im = load(plain)
    im["header_length"] = 104          # before QEMU 5.1: no compression type
    im.b[104:112] = bytes(8)
    im.set_extensions([])
    save("hand-v3-header-104", im)

    im = load(plain)
    im.set_extensions([(EXT_FEATURES, features_table(
        [(0, 0, b"dirty bit"), (0, 40, b"x" * 46), (1, 63, b"c"),
         (2, 7, b"a")]))])
    save("hand-v3-custom-feature-table", im)

    im = load(plain)                   # 2 MiB clusters: everything past EOF
    im["cluster_bits"] = 21
    im["l1_table_offset"] = 2 << 20
    im["refcount_table_offset"] = 2 << 20
    im["l1_size"] = 1
    im["size"] = 1 << 30
    im.b = im.b[:512]
    save("hand-c2m-header-only", im)

    im = load(bm)
    e = im.bitmap_entries()
    put(im.b, e[0] + 12, ">I", 3)      # in_use | auto
    save("hand-v3-bitmap-in-use", im)

    im = load(bm)
    im["autoclear"] = 0                # extension present, not vouched for
    save("hand-v3-bitmaps-not-trusted", im)

    im = load("qemu-v2-c512")
    extra = load(bm)
    _, data = extra.ext(EXT_BITMAPS)
    im.set_extensions([(EXT_BITMAPS, data)])
    save("hand-v2-bitmaps-ext", im)

    im = load(plain)
    im["autoclear"] = 0xF0 | 1         # unknown autoclear bits
    im["compat"] = 0xFF00
    save("hand-v3-unknown-compat-autoclear", im)

    # -- header --
    save("hostile-empty", b"")
    save("hostile-trunc-71", load(plain).data()[:71])
    save("hostile-trunc-v3-100", load(plain).data()[:100])
    im = load(plain)
    im["version"] = 4
    save("hostile-version-4", im)
    for bits in (8, 22, 255):
        im = load(plain)
        im["cluster_bits"] = bits
        save("hostile-cluster-bits-%d" % bits, im)
    im = load(plain)
    im["header_length"] = 103
    save("hostile-header-length-103", im)
    im = load(plain)
    im["header_length"] = 513
    save("hostile-header-length-past-cluster", im)
    im = load(plain)
    im["header_length"] = 109
    save("hostile-header-length-unaligned", im)
    im = load(plain)
    im["backing_file_offset"] = 520
    im["backing_file_size"] = 4
    save("hostile-backing-offset-past-cluster", im)
    im = load("qemu-v3-c4k-backing")
    im["backing_file_size"] = 1024
    save("hostile-backing-name-1024", im)
    im = load("qemu-v3-c512-backing")
    im.b[im["backing_file_offset"] + 2] = 0
    save("hostile-backing-name-nul", im)
    im = load("qemu-v3-c512-backing")
    im["backing_file_offset"] = 504
    im["backing_file_size"] = 16
    save("hostile-backing-name-crosses-cluster", im)
    im = load(plain)
    im["refcount_order"] = 7
    save("hostile-refcount-order-7", im)
    im = load(plain)
    im["compression_type"] = 2
    im["incompat"] = 0x8
    save("hostile-compression-type-2", im)
    im = load(plain)
    im["compression_type"] = 1
    save("hostile-compression-bit-missing", im)
    im = load(plain)
    im["incompat"] = 0x8
    save("hostile-compression-bit-without-type", im)
    im = load(plain)
    im["incompat"] = 0x10
    save("hostile-extl2-small-cluster", im)
    im = load(plain)
    im["incompat"] = 1 << 40
    save("hostile-incompat-unknown", im)
    im = load(plain)
    im["incompat"] = (1 << 40) | (1 << 63) | 0xFFE0
    im.set_extensions([(EXT_FEATURES, features_table(
        [(0, 40, b"N" * 46), (0, 63, b"%s%n%s"), (0, 5, b"")]))])
    save("hostile-incompat-unknown-named", im)
    for method in (1, 2):
        im = load(plain)
        im["crypt_method"] = method
        if method == 2:
            im.set_extensions([(EXT_FDE, struct.pack(">QQ", 1 << 20, 4096))])
        save("hostile-crypt-method-%d" % method, im)
    im = load(plain)
    im["autoclear"] = 0x2
    save("hostile-raw-without-data-file", im)
    im = load(plain)
    im["incompat"] = 0x2
    save("hostile-corrupt-bit", im)
    im = load(plain)
    im["incompat"] = 0x1
    save("hostile-dirty-bit", im)
    im = load(plain)
    im["size"] = 0xFFFFFFFFFFFFFFFF
    save("hostile-size-max", im)
    im = load(plain)
    im["size"] = 1 << 63
    save("hostile-size-2-63", im)

    # -- snapshots --
    im = load(plain)
    im["nb_snapshots"] = 65537
    im["snapshots_offset"] = 512
    save("hostile-snapshots-too-many", im)
    im = load(plain)
    im["nb_snapshots"] = 1
    im["snapshots_offset"] = 1000
    save("hostile-snapshots-misaligned", im)
    im = load(plain)
    im["nb_snapshots"] = 3
    im["snapshots_offset"] = im.append_cluster(lcg_bytes(512, 3))
    save("hostile-snapshots-garbage", im)
    im = load(plain)
    im["nb_snapshots"] = 2
    im["snapshots_offset"] = 1 << 50
    save("hostile-snapshots-past-eof", im)
    im = load(plain)
    im["nb_snapshots"] = 2
    im["snapshots_offset"] = 0
    save("hostile-snapshots-at-header", im)
    im = load("qemu-v3-c512-snapshots")
    off = im["snapshots_offset"]
    put(im.b, off, ">Q", 1 << 55)       # first snapshot's L1 offset
    put(im.b, off + 8, ">I", 0x7FFFFFFF)  # and its L1 size
    put(im.b, off + 12, ">H", 0xFFFF)   # id length
    save("hostile-snapshots-bad-entry", im)

    # -- header extensions --
    im = load(plain)
    im.set_extensions([struct.pack(">II", 0x12345678, 0xFFFFFFF0)],
                      end_marker=False)
    save("hostile-ext-len-huge", im)
    im = load(plain)
    im.set_extensions([struct.pack(">II", 0x12345678, 512 - 112 - 7)],
                      end_marker=False)
    save("hostile-ext-len-past-cluster", im)
    im = load(plain)
    im.set_extensions([(EXT_BITMAPS, bytes(23))])
    save("hostile-ext-bitmaps-len-23", im)
    im = load(plain)
    im.set_extensions([(EXT_FDE, bytes(8))])
    save("hostile-ext-fde-len-8", im)
    im = load(plain)
    im.set_extensions([(EXT_BACKING_FMT, b"q" * 16)])
    save("hostile-ext-backing-format-16", im)
    im = load(plain)
    im.set_extensions([(EXT_BACKING_FMT, b"raw"), (EXT_BACKING_FMT, b"raw")])
    save("hostile-ext-duplicate", im)
    im = load(plain)
    im.set_extensions([(EXT_DATA_FILE, b"ab\0cd")])
    im["incompat"] = 0x4
    save("hostile-ext-data-file-nul", im)
    im = load(plain)
    im.set_extensions([(0x40000000 + i, b"") for i in range(50)],
                      end_marker=False)
    save("hostile-ext-no-end-marker", im)
    im = load("qemu-v3-c64k-empty")
    im.set_extensions([(0x50000000 + i, b"") for i in range(4097)])
    im.b = im.b[:112 + 4098 * 8]
    save("hostile-ext-too-many", im)

    # -- L1 --
    im = load(plain)
    im["l1_table_offset"] = 1 << 40
    save("hostile-l1-past-eof", im)
    im = load(plain)
    im["l1_table_offset"] += 8
    save("hostile-l1-misaligned", im)
    im = load(plain)
    im["l1_size"] = 0x400001
    save("hostile-l1-size-over-limit", im)
    im = load(plain)
    im["l1_size"] = 0xFFFFFFFF
    save("hostile-l1-size-max-u32", im)
    im = load(plain)
    im["l1_size"] = 0x400000           # exactly QEMU's 32 MiB limit
    save("hostile-l1-size-limit", im)
    im = load(plain)
    im["l1_size"] = 1                  # 64 KiB needs 2 entries (512 B clusters)
    save("hostile-l1-too-small", im)
    im = load(plain)
    im["l1_table_offset"] = 0
    save("hostile-l1-at-zero", im)
    im = load(plain)
    im.set_l1(0, im.l1(0) | (1 << 56))
    save("hostile-l1-entry-reserved", im)
    im = load("qemu-v3-c4k")           # 512-aligned, not cluster-aligned
    im.set_l1(0, im.l1(0) + 512)
    save("hostile-l1-entry-misaligned", im)
    im = load(plain)
    im.set_l1(0, im.l1(0) + 8)
    save("hostile-l1-entry-low-bits", im)
    im = load(plain)
    im.set_l1(0, (1 << 63) | (1 << 50))
    save("hostile-l1-entry-past-eof", im)
    im = load(plain)
    im.set_l1(0, (1 << 63) | im["l1_table_offset"])
    save("hostile-l1-entry-points-to-l1", im)
    im = load(plain)
    im.set_l1(0, (1 << 63) | im["refcount_table_offset"])
    save("hostile-l1-entry-points-to-reftable", im)
    im = load(plain)
    im.set_l1(1, im.l1(0))
    save("hostile-l1-entries-share-l2", im)
    im = load(plain)
    im["l1_table_offset"] = im["refcount_table_offset"]
    save("hostile-l1-overlaps-reftable", im)

    # -- L2 --
    im = load(plain)
    im.set_l2(0, (1 << 63) | im.l2_offset())
    save("hostile-l2-points-to-itself", im)
    im = load(plain)
    im.set_l2(0, (1 << 63) | im["l1_table_offset"])
    save("hostile-l2-points-to-l1", im)
    im = load(plain)
    im.set_l2(0, (1 << 63) | (im.reftable(0) & ~0x1FF))
    save("hostile-l2-points-to-refblock", im)
    im = load(plain)
    im.set_l2(0, im.l2(0) | (1 << 57))
    save("hostile-l2-entry-reserved", im)
    im = load(plain)
    im.set_l2(5, im.l2(0))             # two guest clusters, one host cluster
    save("hostile-l2-entries-share-cluster", im)
    im = load("qemu-v3-c4k")
    im.set_l2(0, (1 << 63) | (im.l2(0) & 0x00FFFFFFFFFFFE00) + 512)
    save("hostile-l2-host-misaligned", im)
    im = load(plain)
    im.set_l2(0, (1 << 63) | (1 << 54))
    save("hostile-l2-host-past-eof", im)
    im = load(plain)
    for i in range(64):
        im.set_l2(i, (1 << 63) | im.l2_offset())
    save("hostile-l2-all-point-to-itself", im)
    im = load("qemu-v2-c512")
    im.set_l2(0, 1)                    # zero flag in a v2 image
    save("hostile-l2-zero-flag-v2", im)

    # compressed clusters (512 B clusters: x = 61, one count bit)
    im = load(plain)
    im.set_l2(0, (1 << 62) | im.append_cluster(lcg_bytes(512, 4)))
    save("hostile-compressed-garbage-zlib", im)
    im = load("qemu-v3-c512-zstd")
    im.set_l2(0, (1 << 62) | im.append_cluster(lcg_bytes(512, 5)))
    save("hostile-compressed-garbage-zstd", im)
    im = load("qemu-v3-c4k-zstd")
    # 4 KiB clusters: x = 58, 4 count bits; all sectors: 16 * 512 bytes
    im.set_l2(0, (1 << 62) | (0xF << 58) | (len(im.b) - 100))
    save("hostile-compressed-max-length", im)
    im = load("qemu-v3-c4k-zlib")
    im.set_l2(0, (1 << 62) | ((1 << 58) - 1))
    save("hostile-compressed-past-eof", im)
    im = load("qemu-v3-c4k-zlib")
    comp = [i for i in range(512) if im.l2(i) & (1 << 62)]
    host = im.l2(comp[0]) & ((1 << 58) - 1)
    im.b[host + 2:host + 40] = bytes(38)   # damage the deflate stream
    save("hostile-compressed-zlib-damaged", im)
    im = load("qemu-v3-c4k-zlib")
    host = im.l2(comp[0]) & ((1 << 58) - 1)
    im.set_l2(comp[0], (1 << 62) | ((host & ~511) + 500))
    save("hostile-compressed-truncated", im)   # 12 bytes of the stream
    im = load("qemu-v3-c4k-zstd")
    comp = [i for i in range(512) if im.l2(i) & (1 << 62)]
    if comp:
        e = im.l2(comp[0])
        host = e & ((1 << 58) - 1)
        im.b[host + 4] ^= 0xFF          # damage the zstd frame header
    save("hostile-compressed-zstd-bad-frame", im)

    # extended L2
    xl = "qemu-v3-c16k-extl2"
    im = load(xl)
    e = im.l2(0)
    im.set_l2(0, e, bitmap=(1 << 0) | (1 << 32))
    save("hostile-extl2-alloc-and-zero", im)
    im = load(xl)
    im.set_l2(0, (1 << 62) | im.append_cluster(lcg_bytes(100, 6)),
              bitmap=0xFFFF)
    save("hostile-extl2-compressed-with-bitmap", im)
    im = load(xl)
    im.set_l2(0, im.l2(0) | 1)
    save("hostile-extl2-zero-flag", im)
    im = load(xl)
    im.set_l2(1, 0, bitmap=0xFFFFFFFF)  # allocated, no offset
    save("hostile-extl2-alloc-no-offset", im)

    # external data file
    df = "qemu-v3-c512-datafile"
    im = load(df)
    im.set_l2(0, (1 << 63) | 0x10000)
    save("hostile-datafile-not-identity", im)
    im = load(df)
    im.set_l2(0, (1 << 62) | 0x1000)
    save("hostile-datafile-compressed", im)
    im = load(df)
    im["incompat"] &= ~0x4              # name kept, bit dropped
    save("hostile-datafile-name-without-bit", im)
    im = load(df)
    im.set_extensions([])               # bit kept, name dropped
    save("hostile-datafile-bit-without-name", im)
    im = load("qemu-v3-c512-datafile-raw")
    im["nb_snapshots"] = 1
    im["snapshots_offset"] = im.append_cluster(lcg_bytes(512, 7))
    save("hostile-datafile-with-snapshot", im)

    # -- refcounts --
    im = load(plain)
    im["refcount_table_offset"] = 1 << 40
    save("hostile-reftable-past-eof", im)
    im = load(plain)
    im["refcount_table_offset"] += 8
    save("hostile-reftable-misaligned", im)
    im = load(plain)
    im["refcount_table_clusters"] = 0xFFFFFFFF
    save("hostile-reftable-clusters-max-u32", im)
    im = load(plain)
    im["refcount_table_clusters"] = (8 << 20) // 512    # exactly 8 MiB
    save("hostile-reftable-clusters-limit", im)
    im = load(plain)
    im["refcount_table_clusters"] = (8 << 20) // 512 + 1
    save("hostile-reftable-clusters-over-limit", im)
    im = load(plain)
    im["refcount_table_clusters"] = 0
    save("hostile-reftable-clusters-zero", im)
    im = load(plain)
    im.set_reftable(0, im.reftable(0) | 0x100)
    save("hostile-refblock-reserved-bits", im)
    im = load(plain)
    im.set_reftable(0, im["refcount_table_offset"])
    save("hostile-refblock-is-reftable", im)
    im = load(plain)
    im.set_reftable(0, im["l1_table_offset"])
    save("hostile-refblock-is-l1", im)
    im = load(plain)
    im.set_reftable(0, 1 << 45)
    save("hostile-refblock-past-eof", im)
    im = load(plain)
    im.set_reftable(0, im.reftable(0) + 8)
    save("hostile-refblock-misaligned", im)
    im = load(plain)
    rb = im.reftable(0)
    im.b[rb:rb + 512] = bytes(512)     # every refcount 0, header included
    save("hostile-refcounts-all-zero", im)
    im = load(plain)
    rb = im.reftable(0)
    im.b[rb:rb + 512] = b"\xff" * 512  # every refcount 65535
    save("hostile-refcounts-all-max", im)
    im = load(plain)
    for i in range(1, 64):             # many blocks, all the same
        im.set_reftable(i, im.reftable(0))
    save("hostile-refblocks-shared", im)
    im = load("qemu-v3-c512-rc1")
    rb = im.reftable(0)
    im.b[rb:rb + 512] = b"\x55" * 512
    save("hostile-refcounts-rc1-alternate", im)

    # -- bitmaps --
    im = load(bm)
    e = im.bitmap_entries()
    im.b[e[1] + 24:e[1] + 26] = im.b[e[0] + 24:e[0] + 26]
    save("hostile-bitmap-duplicate-names", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0] + 12, ">I", 0x4)
    save("hostile-bitmap-flags-reserved", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0], ">Q", 1 << 50)
    save("hostile-bitmap-table-past-eof", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0], ">Q", 0)
    save("hostile-bitmap-table-offset-zero", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0], ">Q", 0x1008)
    save("hostile-bitmap-table-misaligned", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0] + 8, ">I", 0)
    save("hostile-bitmap-table-size-zero", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0] + 8, ">I", 0x8000001)
    save("hostile-bitmap-table-size-huge", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0] + 8, ">I", 2)
    save("hostile-bitmap-table-size-mismatch", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0] + 8, ">I", 1000)
    put(im.b, im.bitmap_entries()[0] + 12, ">I", 1)   # in use: allowed
    save("hostile-bitmap-in-use-table-size-big", im)
    for g in (8, 32):
        im = load(bm)
        im.b[im.bitmap_entries()[0] + 17] = g
        save("hostile-bitmap-granularity-%d" % g, im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0] + 18, ">H", 0)
    save("hostile-bitmap-name-size-zero", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0] + 18, ">H", 1024)
    save("hostile-bitmap-name-size-1024", im)
    im = load(bm)
    im.b[im.bitmap_entries()[0] + 24] = 0
    save("hostile-bitmap-name-nul", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0] + 20, ">I", 8)
    save("hostile-bitmap-extra-data", im)
    im = load(bm)
    im.b[im.bitmap_entries()[0] + 16] = 2
    save("hostile-bitmap-type-2", im)
    im = load(bm)
    im.set_bitmaps_ext(nb=4)
    save("hostile-bitmap-nb-more", im)
    im = load(bm)
    im.set_bitmaps_ext(nb=2)
    save("hostile-bitmap-nb-fewer", im)
    im = load(bm)
    im.set_bitmaps_ext(nb=0)
    save("hostile-bitmap-nb-zero", im)
    im = load(bm)
    im.set_bitmaps_ext(nb=65536)
    save("hostile-bitmap-nb-65536", im)
    im = load(bm)
    im.set_bitmaps_ext(off=im.bitmaps_ext()[3] + 8)
    save("hostile-bitmap-dir-misaligned", im)
    im = load(bm)
    im.set_bitmaps_ext(off=0)
    save("hostile-bitmap-dir-at-header", im)
    im = load(bm)
    im.set_bitmaps_ext(off=1 << 44)
    save("hostile-bitmap-dir-past-eof", im)
    im = load(bm)
    im.set_bitmaps_ext(size=0)
    save("hostile-bitmap-dir-size-zero", im)
    im = load(bm)
    im.set_bitmaps_ext(size=1024 * 65535 + 8)
    save("hostile-bitmap-dir-size-huge", im)
    im = load(bm)
    im.set_bitmaps_ext(size=im.bitmaps_ext()[2] + 8)
    save("hostile-bitmap-dir-size-long", im)
    im = load(bm)
    im.set_bitmaps_ext(size=im.bitmaps_ext()[2] - 8)
    save("hostile-bitmap-dir-size-short", im)
    im = load(bm)
    im.set_bitmaps_ext(reserved=1)
    save("hostile-bitmap-ext-reserved", im)
    im = load(bm)
    im.set_bitmaps_ext(off=im["l1_table_offset"])
    save("hostile-bitmap-dir-is-l1", im)
    im = load(bm)
    t = get(im.b, im.bitmap_entries()[0], ">Q")
    put(im.b, t, ">Q", get(im.b, t, ">Q") | (1 << 60) | 0x2)
    save("hostile-bitmap-table-entry-reserved", im)
    im = load(bm)
    t = get(im.b, im.bitmap_entries()[0], ">Q")
    put(im.b, t, ">Q", t | 1)          # points at itself, with all-ones flag
    save("hostile-bitmap-table-entry-self", im)
    im = load(bm)
    t = get(im.b, im.bitmap_entries()[0], ">Q")
    put(im.b, t, ">Q", im["refcount_table_offset"])
    save("hostile-bitmap-table-entry-is-reftable", im)
    im = load(bm)
    put(im.b, im.bitmap_entries()[0], ">Q", im["l1_table_offset"])
    save("hostile-bitmap-table-is-l1", im)
    im = load(bm)
    for e in im.bitmap_entries():
        put(im.b, e, ">Q", get(im.b, im.bitmap_entries()[0], ">Q"))
    save("hostile-bitmap-tables-shared", im)


# ---- fuzz-header corpus ----------------------------------------------------

def trim(data, keep):
    end = len(data)
    while end > keep and data[end - 1] == 0:
        end -= 1
    return data[:end]


def make_headers(imagedir, out):
    for name in sorted(os.listdir(imagedir)):
        if not name.startswith(("qemu-", "hand-", "hostile-")):
            continue
        path = os.path.join(imagedir, name)
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < 24 or get(data, 0, ">I") != MAGIC:
            continue
        bits = get(data, 20, ">I")
        cs = 1 << bits if 9 <= bits <= 21 else 512
        with open(os.path.join(out, name), "wb") as f:
            f.write(trim(data[:cs], 112))


# ---- fuzz-bitmap-dir corpus ------------------------------------------------

def prefix(nr, vsize, cluster_bits):
    return struct.pack(">IQ3xB", nr, vsize, cluster_bits - 9)


def entry(name, table_offset=0x10000, table_size=1, flags=0, typ=1, gran=16,
          extra=b"", name_size=None):
    n = len(name) if name_size is None else name_size
    e = struct.pack(">QIIBBHI", table_offset, table_size, flags, typ, gran,
                    n, len(extra)) + extra + name
    return e + bytes(-len(e) % 8)


def make_bitmap_dirs(imagedir, out):
    def save(name, data):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

    for name in sorted(os.listdir(imagedir)):
        if not name.startswith("qemu-"):
            continue
        with open(os.path.join(imagedir, name), "rb") as f:
            im = Image(f.read())
        if im.version < 3 or not im.ext(EXT_BITMAPS):
            continue
        _, nb, size, doff = im.bitmaps_ext()
        save(name, prefix(nb, im["size"], im["cluster_bits"]) +
             im.data()[doff:doff + size])

    vs = 1 << 30                       # 1 GiB, 64 KiB clusters, 64 KiB gran
    ok = entry(b"b0", table_size=1)
    save("hand-one", prefix(1, vs, 16) + ok)
    save("hand-three", prefix(3, vs, 16) + ok + entry(b"b1", flags=1,
         table_size=7) + entry(b"x" * 1023, flags=2))
    save("hand-in-use", prefix(1, vs, 16) + entry(b"u", flags=3,
         table_size=5000))
    save("hand-name-max", prefix(1, vs, 16) + entry(b"n" * 1023))
    save("hand-zero-vsize", prefix(1, 0, 9) + entry(b"z", table_offset=512,
         table_size=0))
    save("hostile-duplicate", prefix(2, vs, 16) + ok + ok)
    save("hostile-flags", prefix(1, vs, 16) + entry(b"f", flags=4))
    save("hostile-extra-data", prefix(1, vs, 16) + entry(b"e",
         extra=bytes(8)))
    save("hostile-type", prefix(1, vs, 16) + entry(b"t", typ=0))
    save("hostile-granularity-8", prefix(1, vs, 16) + entry(b"g", gran=8))
    save("hostile-granularity-32", prefix(1, vs, 16) + entry(b"g", gran=32))
    save("hostile-name-empty", prefix(1, vs, 16) + entry(b""))
    save("hostile-name-nul", prefix(1, vs, 16) + entry(b"a\0b"))
    save("hostile-name-past-end", prefix(1, vs, 16) +
         entry(b"abc", name_size=1000))
    save("hostile-name-1024", prefix(1, vs, 16) + entry(b"n" * 1024))
    save("hostile-table-zero", prefix(1, vs, 16) + entry(b"t",
         table_offset=0))
    save("hostile-table-misaligned", prefix(1, vs, 16) + entry(b"t",
         table_offset=0x10200))
    save("hostile-table-size-zero", prefix(1, vs, 16) + entry(b"t",
         table_size=0, flags=1))
    save("hostile-table-size-huge", prefix(1, vs, 16) + entry(b"t",
         table_size=0x8000001, flags=1))
    save("hostile-table-phys-huge", prefix(1, vs, 21) + entry(b"t",
         table_offset=1 << 21, table_size=257, flags=1))
    save("hostile-table-size-mismatch", prefix(1, vs, 16) + entry(b"t",
         table_size=2))
    save("hostile-more-entries", prefix(1, vs, 16) + ok + ok)
    save("hostile-fewer-entries", prefix(3, vs, 16) + ok)
    save("hostile-trailing-bytes", prefix(1, vs, 16) + ok + bytes(8))
    save("hostile-truncated-entry", prefix(1, vs, 16) + ok[:20])
    save("hostile-vsize-max", prefix(1, 0xFFFFFFFFFFFFFFFF, 9) +
         entry(b"v", table_offset=512, table_size=1))
    save("hostile-many", prefix(600, vs, 16) +
         b"".join(entry(b"m%d" % i, flags=1) for i in range(600)))


def main():
    if len(sys.argv) != 4:
        raise SystemExit("usage: corpus-tool.py images|headers|bitmap-dirs "
                         "SRC OUT")
    cmd, src, out = sys.argv[1:]
    os.makedirs(out, exist_ok=True)
    if cmd == "images":
        make_images(src, out)
    elif cmd == "headers":
        make_headers(src, out)
    elif cmd == "bitmap-dirs":
        make_bitmap_dirs(src, out)
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main()
