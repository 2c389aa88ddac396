#!/usr/bin/env python3
# compare-info.py RAWTRACK.json QEMU.json
#
# Compares `rawtrack info --json IMAGE` against `qemu-img info --output=json
# IMAGE` (QEMU is the oracle).  Rules:
#
#  1. Contract fields (CONTRACT_TOP and CONTRACT_DATA below): present in
#     QEMU's output <=> present in rawtrack's, and equal when present.
#  2. Any other key that both emit must be equal (recursively).
#  3. Extra keys only rawtrack emits are allowed (listed as a note).
#
# Values are compared exactly, including types (1 != true, "1" != 1), list
# order (bitmaps are listed in directory order; flags as QEMU orders them).
# Exit 0 when they agree, 1 on any difference, 2 on unusable input.

import json
import sys

CONTRACT_TOP = [
    "virtual-size", "filename", "cluster-size", "format", "actual-size",
    "dirty-flag", "backing-filename", "backing-filename-format",
    "format-specific",
]
CONTRACT_DATA = [
    "compat", "compression-type", "lazy-refcounts", "bitmaps",
    "refcount-bits", "data-file", "data-file-raw", "corrupt", "extended-l2",
]

errors = []
notes = []


def same(a, b):
    """Exact equality that does not treat True as 1 or 1.0 as 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def compare_dict(path, ours, theirs, contract):
    if not isinstance(ours, dict):
        errors.append(f"{path}: rawtrack value is not an object: {ours!r}")
        return
    for k in contract:
        if k in theirs and k not in ours:
            errors.append(f"{path}{k}: missing in rawtrack "
                          f"(qemu: {json.dumps(theirs[k])})")
        elif k in ours and k not in theirs:
            errors.append(f"{path}{k}: emitted by rawtrack "
                          f"({json.dumps(ours[k])}) but not by qemu")
    for k, v in ours.items():
        if k not in theirs:
            if k not in contract:
                notes.append(f"{path}{k}: rawtrack-only key "
                             f"({json.dumps(v)})")
            continue
        if k == "format-specific" and isinstance(v, dict):
            compare_dict(path + k + ".", v, theirs[k], ["type", "data"])
            continue
        if k == "data" and path.endswith("format-specific.") \
           and isinstance(v, dict):
            compare_dict(path + k + ".", v, theirs[k], CONTRACT_DATA)
            continue
        if not same(v, theirs[k]):
            errors.append(f"{path}{k}: rawtrack {json.dumps(v)} "
                          f"!= qemu {json.dumps(theirs[k])}")


def load(p, who):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"compare-info: cannot parse {who} JSON {p}: {e}",
              file=sys.stderr)
        sys.exit(2)


def main():
    if len(sys.argv) != 3:
        print("usage: compare-info.py RAWTRACK.json QEMU.json",
              file=sys.stderr)
        sys.exit(2)
    ours = load(sys.argv[1], "rawtrack")
    theirs = load(sys.argv[2], "qemu")
    if not isinstance(theirs, dict):
        print("compare-info: qemu JSON is not an object", file=sys.stderr)
        sys.exit(2)
    compare_dict("", ours, theirs, CONTRACT_TOP)
    for n in notes:
        print("compare-info: note: " + n, file=sys.stderr)
    for e in errors:
        print("compare-info: DIFF: " + e, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
