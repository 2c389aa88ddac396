#!/usr/bin/env python3
# backup-writes.py SEED SIZE COUNT: print COUNT random `rawtrack io`
# commands for a disk of SIZE bytes: data writes of random patterns,
# write-zeroes (some allowed to punch holes) and discards, at random
# (often unaligned) offsets and lengths, some touching the last bytes of
# the disk.  The same SEED prints the same commands.
import random
import sys

seed, size, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
for _ in range(count):
    kind = rnd.random()
    length = rnd.choice([512, 4096, 65536, 70000, 200000, 1 << 20,
                         3 * (1 << 20)])
    length = min(length - length % 512, size)
    if rnd.random() < 0.1:
        off = size - length
    else:
        off = rnd.randrange(0, (size - length) // 512 + 1) * 512
    if kind < 0.65:
        print("write -P 0x%02x %d %d" % (rnd.randrange(1, 256), off, length))
    elif kind < 0.8:
        print("write -z %d %d" % (off, length))
    elif kind < 0.9:
        print("write -z -u %d %d" % (off, length))
    else:
        print("discard %d %d" % (off, length))
