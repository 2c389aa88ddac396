#!/usr/bin/env python3
# fuzz-nbd-seeds.py DIR: write seed inputs for fuzz-nbd (tests/fuzz/fuzz-nbd.c).
#
# Each seed is the byte stream of one well-formed client session (client
# flags, options, requests with payloads, DISC) in compact or extended
# form, so that the fuzzer starts from inputs that reach the transmission
# phase and every command.
import os
import struct
import sys

IHAVEOPT = 0x49484156454F5054


def opt(o, p=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(p)) + p


def go(name=b"", infos=(3,), o=7):
    return opt(o, struct.pack(">I", len(name)) + name +
               struct.pack(">H", len(infos)) +
               b"".join(struct.pack(">H", i) for i in infos))


def meta(o, queries, name=b""):
    p = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    for q in queries:
        p += struct.pack(">I", len(q)) + q
    return opt(o, p)


def req(typ, off, n, flags=0, cookie=1, data=b"", ext=False):
    if ext:
        if data:
            flags |= 32
            n = len(data)
        return struct.pack(">IHHQQQ", 0x21e41c71, flags, typ, cookie, off, n) + data
    return struct.pack(">IHHQQI", 0x25609513, flags, typ, cookie, off, n) + data


CTX = [b"base:allocation", b"qemu:allocation-depth", b"qemu:dirty-bitmap:b"]


def session(ext):
    s = struct.pack(">I", 3)
    s += opt(11) if ext else opt(8)
    s += meta(9, []) + meta(9, [b"qemu:"]) + meta(10, CTX)
    s += go(b"fuzz", (0, 1, 2, 3), o=6) + go()
    s += req(0, 0, 4096, ext=ext)
    s += req(0, 0, 131072, flags=0, cookie=2, ext=ext)
    s += req(0, 0, 65536, flags=4, cookie=3, ext=ext)
    s += req(1, 4096, 512, flags=1, cookie=4, data=b"\xab" * 512, ext=ext)
    s += req(6, 8192, 8192, flags=2, cookie=5, ext=ext)
    s += req(6, 65536, 65536, flags=16, cookie=6, ext=ext)
    s += req(4, 131072, 65536, cookie=7, ext=ext)
    s += req(5, 0, 65536, cookie=8, ext=ext)
    s += req(3, 0, 0, cookie=9, ext=ext)
    s += req(7, 0, 1 << 20, cookie=10, ext=ext)
    s += req(7, 4096, 1000, flags=8, cookie=11, ext=ext)
    s += req(2, 0, 0, ext=ext)
    return s


def main():
    d = sys.argv[1]
    os.makedirs(d, exist_ok=True)
    seeds = {
        "compact": session(False),
        "extended": session(True),
        "export-name": struct.pack(">I", 1) + opt(1, b"") +
        req(0, 0, 512) + req(2, 0, 0),
        "list-abort": struct.pack(">I", 3) + opt(3) + opt(99, b"xyz") +
        opt(5) + opt(2),
    }
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
