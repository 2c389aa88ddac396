#!/usr/bin/python3
# qemu-route-incremental.py SRC_SOCKET BITMAP DST_SOCKET
#
# The QEMU tools' route to an incremental backup, the way oVirt-style
# clients do it: the dirty extents come from `qemu-img map` with the
# x-dirty-bitmap option over an NBD export of the source (qemu-nbd -B), and
# each dirty extent is copied from the source export to the target export
# (qemu-nbd serving a new qcow2 overlay of the previous backup) with libnbd,
# in pieces of up to 8 MiB.  With x-dirty-bitmap, qemu-img map reports the
# dirty extents as "data": false.
# Prints the number of dirty bytes copied.
import json
import subprocess
import sys

import nbd

src_sock, bitmap, dst_sock = sys.argv[1:4]
out = subprocess.run(
    ["qemu-img", "map", "--output=json", "--image-opts",
     "driver=nbd,server.type=unix,server.path=%s,"
     "x-dirty-bitmap=qemu:dirty-bitmap:%s" % (src_sock, bitmap)],
    check=True, capture_output=True, text=True).stdout
extents = [(e["start"], e["length"]) for e in json.loads(out)
           if not e["data"]]

src = nbd.NBD()
src.connect_unix(src_sock)
dst = nbd.NBD()
dst.connect_unix(dst_sock)
piece = 8 << 20
total = 0
for start, length in extents:
    off = start
    while off < start + length:
        n = min(piece, start + length - off)
        buf = src.pread(n, off)
        dst.pwrite(buf, off)
        off += n
    total += length
dst.flush()
src.shutdown()
dst.shutdown()
print(total)
