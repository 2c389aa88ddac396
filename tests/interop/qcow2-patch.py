#!/usr/bin/env python3
# qcow2-patch.py: read and deliberately damage qcow2 metadata for tests.
#
#   qcow2-patch.py dump IMAGE                 JSON summary of the metadata
#   qcow2-patch.py get-refcount IMAGE CLUSTER
#   qcow2-patch.py set-refcount IMAGE CLUSTER VALUE
#   qcow2-patch.py make-leak IMAGE            one leaked cluster (refcount >
#                                             references); prints its index
#   qcow2-patch.py zero-l2-refcount IMAGE     refcount of the first L2 table
#                                             := 0; prints its cluster index
#   qcow2-patch.py clear-copied IMAGE GUEST_CLUSTER
#                                             clear bit 63 (COPIED) of the
#                                             L2 entry of that guest cluster
#   qcow2-patch.py set-bitmap-flags IMAGE NAME FLAGS
#                                             set a bitmap's directory flags
#   qcow2-patch.py set-incompat IMAGE MASK    OR MASK into incompatible bits
#   qcow2-patch.py get-bitmap-entry IMAGE NAME INDEX
#   qcow2-patch.py set-bitmap-entry IMAGE NAME INDEX VALUE
#                                             a bitmap table entry (raw)
#   qcow2-patch.py mark-in-use IMAGE          the state a QEMU killed while it
#                                             held the image leaves: every
#                                             bitmap in-use, autoclear bit 0
#                                             set; prints what it changed
#
# Offsets follow docs/interop/qcow2.txt; all integers big-endian.  Only what
# the tests need is implemented; anything unexpected raises.

import json
import os
import struct
import sys

QCOW_MAGIC = 0x514649FB
EXT_BITMAPS = 0x23852875


class Image:
    def __init__(self, path, writable=False):
        self.path = path
        self.f = open(path, "r+b" if writable else "rb")
        h = self.pread(0, 112)
        (magic, self.version) = struct.unpack(">II", h[0:8])
        if magic != QCOW_MAGIC:
            raise SystemExit(f"{path}: not qcow2")
        self.cluster_bits = struct.unpack(">I", h[20:24])[0]
        self.cs = 1 << self.cluster_bits
        self.size = struct.unpack(">Q", h[24:32])[0]
        self.l1_size = struct.unpack(">I", h[36:40])[0]
        self.l1_offset = struct.unpack(">Q", h[40:48])[0]
        self.rt_offset = struct.unpack(">Q", h[48:56])[0]
        self.rt_clusters = struct.unpack(">I", h[56:60])[0]
        if self.version >= 3:
            (self.incompat, self.compat, self.autoclear,
             order, self.header_length) = struct.unpack(">QQQII", h[72:104])
            self.refcount_bits = 1 << order
        else:
            self.incompat = self.compat = self.autoclear = 0
            self.refcount_bits = 16
            self.header_length = 72
        self.extended_l2 = bool(self.incompat & 0x10)
        self.l2_entry_size = 16 if self.extended_l2 else 8
        self.l2_entries = self.cs // self.l2_entry_size
        self.rb_entries = self.cs * 8 // self.refcount_bits
        self.exts = self._read_extensions()

    def pread(self, off, n):
        self.f.seek(off)
        b = self.f.read(n)
        return b + bytes(n - len(b))

    def pwrite(self, off, b):
        self.f.seek(off)
        self.f.write(b)

    def file_size(self):
        return os.fstat(self.f.fileno()).st_size

    def _read_extensions(self):
        exts = {}
        off = self.header_length
        while off + 8 <= self.cs:
            t, n = struct.unpack(">II", self.pread(off, 8))
            if t == 0:
                break
            exts[t] = (off + 8, self.pread(off + 8, n))
            off += 8 + ((n + 7) & ~7)
        return exts

    # --- refcounts ------------------------------------------------------
    def refblock_offset(self, cluster):
        idx = cluster // self.rb_entries
        if idx >= self.rt_clusters * self.cs // 8:
            return 0
        e = struct.unpack(">Q", self.pread(self.rt_offset + idx * 8, 8))[0]
        return e & ~0x1FF

    def _ref_loc(self, cluster):
        rb = self.refblock_offset(cluster)
        if rb == 0:
            raise SystemExit(f"cluster {cluster}: no refcount block")
        i = cluster % self.rb_entries
        w = self.refcount_bits
        return rb, i, w

    def get_refcount(self, cluster):
        rb, i, w = self._ref_loc(cluster)
        if w >= 8:
            b = self.pread(rb + i * (w // 8), w // 8)
            return int.from_bytes(b, "big")
        byte = self.pread(rb + i * w // 8, 1)[0]
        return (byte >> ((i * w) % 8)) & ((1 << w) - 1)

    def set_refcount(self, cluster, value):
        rb, i, w = self._ref_loc(cluster)
        if value >= (1 << w):
            raise SystemExit(f"refcount {value} too large for {w} bits")
        if w >= 8:
            self.pwrite(rb + i * (w // 8), value.to_bytes(w // 8, "big"))
            return
        off = rb + i * w // 8
        shift = (i * w) % 8
        mask = ((1 << w) - 1) << shift
        byte = self.pread(off, 1)[0]
        byte = (byte & ~mask & 0xFF) | (value << shift)
        self.pwrite(off, bytes([byte]))

    # --- L1/L2 ----------------------------------------------------------
    def l1_entry(self, i):
        return struct.unpack(">Q", self.pread(self.l1_offset + i * 8, 8))[0]

    def l2_tables(self):
        out = []
        for i in range(self.l1_size):
            off = self.l1_entry(i) & 0x00FFFFFFFFFFFE00
            if off:
                out.append((i, off))
        return out

    def l2_entry_offset(self, guest_cluster):
        l1i = guest_cluster // self.l2_entries
        l2i = guest_cluster % self.l2_entries
        if l1i >= self.l1_size:
            raise SystemExit(f"guest cluster {guest_cluster} beyond L1")
        l2 = self.l1_entry(l1i) & 0x00FFFFFFFFFFFE00
        if not l2:
            raise SystemExit(f"guest cluster {guest_cluster}: no L2 table")
        return l2 + l2i * self.l2_entry_size

    # --- bitmaps --------------------------------------------------------
    def bitmap_entries(self):
        if EXT_BITMAPS not in self.exts:
            return []
        _, d = self.exts[EXT_BITMAPS]
        nb, _, dsize, doff = struct.unpack(">IIQQ", d[:24])
        buf = self.pread(doff, dsize)
        out, p = [], 0
        for _ in range(nb):
            toff, tsize, flags, typ, gbits, nsize, extra = \
                struct.unpack(">QIIBBHI", buf[p:p + 24])
            name = buf[p + 24 + extra:p + 24 + extra + nsize].decode()
            out.append({"entry_offset": doff + p, "name": name,
                        "flags": flags, "granularity_bits": gbits,
                        "table_offset": toff, "table_size": tsize})
            p += (24 + extra + nsize + 7) & ~7
        return out

    def dump(self):
        return {
            "version": self.version, "cluster_size": self.cs,
            "size": self.size, "incompat": self.incompat,
            "compat": self.compat, "autoclear": self.autoclear,
            "refcount_bits": self.refcount_bits,
            "header_length": self.header_length,
            "extended_l2": self.extended_l2,
            "l1_size": self.l1_size, "l1_offset": self.l1_offset,
            "refcount_table_offset": self.rt_offset,
            "refcount_table_clusters": self.rt_clusters,
            "l2_tables": [{"l1_index": i, "offset": o}
                          for i, o in self.l2_tables()],
            "extensions": [hex(t) for t in self.exts],
            "bitmaps": self.bitmap_entries(),
            "file_size": self.file_size(),
        }


def main():
    if len(sys.argv) < 3:
        print(__doc__ if __doc__ else "see the source", file=sys.stderr)
        sys.exit(2)
    cmd, path, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    ro = cmd in ("dump", "get-refcount", "get-bitmap-entry")
    img = Image(path, writable=not ro)
    if cmd == "dump":
        print(json.dumps(img.dump(), indent=2))
    elif cmd == "get-refcount":
        print(img.get_refcount(int(args[0], 0)))
    elif cmd == "set-refcount":
        img.set_refcount(int(args[0], 0), int(args[1], 0))
    elif cmd == "make-leak":
        # Preferably a new cluster at EOF with refcount 1 and no reference
        # (works for every refcount width); else bump the header's
        # refcount to 2.
        end = (img.file_size() + img.cs - 1) // img.cs
        if img.refblock_offset(end):
            os.truncate(path, (end + 1) * img.cs)
            img.set_refcount(end, 1)
            print(end)
        elif img.refcount_bits >= 2:
            img.set_refcount(0, img.get_refcount(0) + 1)
            print(0)
        else:
            raise SystemExit("make-leak: no way to leak in this image")
    elif cmd == "zero-l2-refcount":
        tables = img.l2_tables()
        if not tables:
            raise SystemExit("zero-l2-refcount: image has no L2 table")
        c = tables[0][1] // img.cs
        img.set_refcount(c, 0)
        print(c)
    elif cmd == "clear-copied":
        off = img.l2_entry_offset(int(args[0], 0))
        e = struct.unpack(">Q", img.pread(off, 8))[0]
        if not e & (1 << 63):
            raise SystemExit("clear-copied: COPIED is already clear")
        img.pwrite(off, struct.pack(">Q", e & ~(1 << 63)))
    elif cmd == "set-bitmap-flags":
        for b in img.bitmap_entries():
            if b["name"] == args[0]:
                img.pwrite(b["entry_offset"] + 12,
                           struct.pack(">I", int(args[1], 0)))
                break
        else:
            raise SystemExit(f"no bitmap named {args[0]}")
    elif cmd in ("get-bitmap-entry", "set-bitmap-entry"):
        for b in img.bitmap_entries():
            if b["name"] == args[0]:
                i = int(args[1], 0)
                if i >= b["table_size"]:
                    raise SystemExit(f"{cmd}: index {i} out of range")
                at = b["table_offset"] + 8 * i
                if cmd == "get-bitmap-entry":
                    print(struct.unpack(">Q", img.pread(at, 8))[0])
                else:
                    img.pwrite(at, struct.pack(">Q", int(args[2], 0)))
                break
        else:
            raise SystemExit(f"no bitmap named {args[0]}")
    elif cmd == "set-incompat":
        if img.version < 3:
            raise SystemExit("set-incompat: v2 image")
        img.pwrite(72, struct.pack(">Q", img.incompat | int(args[0], 0)))
    elif cmd == "mark-in-use":
        if img.version < 3 or EXT_BITMAPS not in img.exts:
            raise SystemExit("mark-in-use: no bitmaps extension")
        for b in img.bitmap_entries():
            if not b["flags"] & 1:
                img.pwrite(b["entry_offset"] + 12,
                           struct.pack(">I", b["flags"] | 1))
                print(f"bitmap {b['name']}: in-use set")
        if not img.autoclear & 1:
            img.pwrite(88, struct.pack(">Q", img.autoclear | 1))
            print("autoclear bit 0 (bitmaps extension valid) set")
    else:
        raise SystemExit(f"unknown command {cmd}")
    img.f.close()


if __name__ == "__main__":
    main()
