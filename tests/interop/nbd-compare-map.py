#!/usr/bin/env python3
# nbd-compare-map.py A.json B.json [--mask N] [--size BYTES]
#
# Compare two `nbdinfo --map --json` outputs (ours and qemu-nbd's) for the
# same context.  Neighbouring extents of equal type are merged first: a
# server may split a run across replies.  --mask keeps only those bits of
# the type (e.g. 2: NBD_STATE_ZERO only).  --size checks that the extents
# cover exactly [0, BYTES).  Exit 0 if equal, 1 (with a diff) if not.
import json
import sys


def load(path, mask):
    with open(path) as f:
        m = json.load(f)
    out = []
    pos = 0
    for e in m:
        if e["offset"] != pos:
            sys.exit("%s: extent at %d, expected %d" % (path, e["offset"], pos))
        if e["length"] <= 0:
            sys.exit("%s: empty extent at %d" % (path, pos))
        t = e["type"] & mask
        if out and out[-1][2] == t:
            out[-1][1] += e["length"]
        else:
            out.append([pos, e["length"], t])
        pos += e["length"]
    return out, pos


def main():
    args = sys.argv[1:]
    mask, size = 0xFFFFFFFF, None
    files = []
    while args:
        a = args.pop(0)
        if a == "--mask":
            mask = int(args.pop(0), 0)
        elif a == "--size":
            size = int(args.pop(0), 0)
        else:
            files.append(a)
    a, apos = load(files[0], mask)
    b, bpos = load(files[1], mask)
    if size is not None and (apos != size or bpos != size):
        print("coverage: %s ends at %d, %s at %d, size %d"
              % (files[0], apos, files[1], bpos, size))
        return 1
    if a != b:
        print("maps differ (offset, length, type):")
        print("  %s:" % files[0])
        for e in a:
            print("    %12d %12d %d" % tuple(e))
        print("  %s:" % files[1])
        for e in b:
            print("    %12d %12d %d" % tuple(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
