#!/usr/bin/env python3
# compare-check.py [--ignore KEY]... RAWTRACK.json QEMU.json
#
# Compares `rawtrack check --json` against `qemu-img check --output=json`
# on the same image (QEMU is the oracle).  qemu-img omits counters that are
# zero, so a missing counter is read as 0 on both sides.  filename, format
# and check-errors must be present in rawtrack's output; every counter that
# either side reports must be equal.  Keys in --ignore are not compared
# (they must still have the right type when present).
# Exit 0 when they agree, 1 on any difference, 2 on unusable input.

import json
import sys

REQUIRED = ["filename", "format", "check-errors"]
COUNTERS = [
    "check-errors", "corruptions", "leaks", "corruptions-fixed",
    "leaks-fixed", "total-clusters", "allocated-clusters",
    "fragmented-clusters", "compressed-clusters", "image-end-offset",
]


def load(p, who):
    try:
        with open(p) as f:
            j = json.load(f)
    except (OSError, ValueError) as e:
        print(f"compare-check: cannot parse {who} JSON {p}: {e}",
              file=sys.stderr)
        sys.exit(2)
    if not isinstance(j, dict):
        print(f"compare-check: {who} JSON is not an object", file=sys.stderr)
        sys.exit(2)
    return j


def main():
    args = sys.argv[1:]
    ignore = set()
    while len(args) >= 2 and args[0] == "--ignore":
        ignore.add(args[1])
        args = args[2:]
    if len(args) != 2:
        print("usage: compare-check.py [--ignore KEY]... RAWTRACK.json "
              "QEMU.json", file=sys.stderr)
        sys.exit(2)
    ours = load(args[0], "rawtrack")
    theirs = load(args[1], "qemu")
    errors = []
    for k in REQUIRED:
        if k not in ours:
            errors.append(f"{k}: missing in rawtrack output")
    for k in COUNTERS:
        for who, j in (("rawtrack", ours), ("qemu", theirs)):
            v = j.get(k, 0)
            if type(v) is not int or v < 0:
                errors.append(f"{k}: {who} value {v!r} is not a "
                              "non-negative integer")
        if k in ignore:
            continue
        a, b = ours.get(k, 0), theirs.get(k, 0)
        if a != b:
            errors.append(f"{k}: rawtrack {a} != qemu {b}")
    for k in ("filename", "format"):
        if k in ours and k in theirs and k not in ignore \
           and ours[k] != theirs[k]:
            errors.append(f"{k}: rawtrack {ours[k]!r} != qemu {theirs[k]!r}")
    for k in ours:
        if k not in COUNTERS and k not in ("filename", "format"):
            print(f"compare-check: note: rawtrack-only key {k}",
                  file=sys.stderr)
    for e in errors:
        print("compare-check: DIFF: " + e, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
