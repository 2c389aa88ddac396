#!/usr/bin/env python3
# rawtrack - crash test on a big sparse disk with several bitmaps.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A sparse 2 TiB raw file (nothing is ever read densely: CI time stays
# small) is attached with five bitmaps: 4 KiB, 64 KiB and 1 MiB
# granularity, one of 32 MiB (coarser than an extent), all enabled, and
# one disabled.  Tracking runs with 1 MiB extents and a hot set of 4, and
# every round's writes are scattered over the whole disk, so they spread
# over far more extents than the hot set holds: nearly every write cools
# an extent.  Each round `rawtrack io` is killed with SIGKILL at a random
# moment (the last round closes cleanly), then, with no rawtrack step in
# between:
#   - no change missed: every write rawtrack reported done, and the one in
#     flight, are dirty in every enabled bitmap; the disabled one is clean;
#   - the documented over-report bound: in the bitmaps no coarser than an
#     extent, the dirty bytes no write explains lie in at most max_hot
#     extents (none at all after the clean close);
#   - QEMU agrees: no bitmap in use, qemu-img check finds at most leaks,
#     and (first and last round) qemu-nbd -B + nbdinfo --map give the same
#     extents as rawtrack bitmap dump;
#   - the container grows by what the set bits need: at most one bitmap
#     cluster per bitmap and per written cluster-sized stretch of bits;
#   - the raw file holds what each reported write wrote;
#   - at the end, removing every bitmap truncates the file back to its
#     attach size (but for clusters the kills leaked).
# Rounds: RAWTRACK_BIGDISK_ROUNDS (default 8).
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

RAWTRACK = os.environ.get("RAWTRACK", "build/cli/rawtrack")
ROUNDS = int(os.environ.get("RAWTRACK_BIGDISK_ROUNDS", "8"))
SIZE = 2 << 40
EXT_BITS = 20
MAX_HOT = 4
BITMAPS = {"b4k": 4096, "b64k": 65536, "b1m": 1 << 20, "b32m": 32 << 20}
CLUSTER = 2 << 20


def need(cmd):
    if shutil.which(cmd) is None:
        print(f"SKIP: test-bigdisk: requires {cmd}")
        sys.exit(77)


def run(*args, ok=(0,)):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode not in ok:
        sys.exit(f"FAIL: {' '.join(args)} exited {p.returncode}:\n"
                 f"{p.stdout}{p.stderr}")
    return p.stdout


def dirty(img, name):
    ext = json.loads(run(RAWTRACK, "bitmap", "dump", "--json", img, name))
    return [(e["start"], e["start"] + e["length"]) for e in ext if e["dirty"]]


def covered(ranges, lo, hi):
    for s, e in ranges:
        if e <= lo:
            continue
        if s > lo:
            return False
        lo = e
        if lo >= hi:
            return True
    return lo >= hi


def unexplained_extents(ranges, ops, g):
    """Extents holding dirty bytes that no op (rounded out to granules)
    explains."""
    ops = sorted((lo // g * g, -(-hi // g) * g) for lo, hi in ops)
    ext = set()
    for s, e in ranges:
        pos = s
        for lo, hi in ops:
            if hi <= pos or lo >= e:
                continue
            if lo > pos:
                ext.update(range(pos >> EXT_BITS, ((lo - 1) >> EXT_BITS) + 1))
            pos = max(pos, hi)
        if pos < e:
            ext.update(range(pos >> EXT_BITS, ((e - 1) >> EXT_BITS) + 1))
    return ext


def main():
    for tool in ("qemu-img", "qemu-nbd", "nbdinfo"):
        need(tool)
    seed = int(os.environ.get("RAWTRACK_KILL_SEED", "1"))
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="rawtrack-bigdisk-")
    try:
        raw = os.path.join(tmp, "disk.raw")
        img = os.path.join(tmp, "disk.qcow2")
        with open(raw, "wb") as f:
            f.truncate(SIZE)
        run(RAWTRACK, "attach", raw, img)
        attach_size = os.path.getsize(img)
        for name, g in BITMAPS.items():
            run(RAWTRACK, "bitmap", "add", img, name, "--granularity", str(g))
        run(RAWTRACK, "bitmap", "add", img, "off", "--disabled")
        base_size = os.path.getsize(img)
        env = dict(os.environ, RAWTRACK_EXTENT_BITS=str(EXT_BITS),
                   RAWTRACK_MAX_HOT=str(MAX_HOT))
        all_ops = []
        extra_by = {name: [] for name in BITMAPS}
        for rnd in range(ROUNDS):
            last = rnd == ROUNDS - 1
            cmds, ops = [], []
            for _ in range(40):
                off = rng.randrange(0, SIZE // 512) * 512
                ln = min(rng.choice([512, 4096, 65536, 300000]), SIZE - off)
                cmds.append(f"write -P {rng.randrange(1, 256)} {off} {ln}")
                ops.append((off, off + ln))
            script = os.path.join(tmp, "cmds")
            with open(script, "w") as f:
                f.write("\n".join(cmds) + "\n")
            p = subprocess.Popen([RAWTRACK, "io", img, "-f", script],
                                 stdout=subprocess.PIPE, env=env, text=True)
            done = []
            if last:
                out, _ = p.communicate()
                done = out.splitlines()
                if p.returncode != 0 or len(done) != len(cmds):
                    sys.exit(f"FAIL: the clean run exited {p.returncode}")
            else:
                target = rng.randrange(1, len(cmds))
                while len(done) < target:
                    line = p.stdout.readline()
                    if not line:
                        break
                    done.append(line)
                time.sleep(rng.random() * 0.02)
                p.send_signal(signal.SIGKILL)
                rest, _ = p.communicate()
                done += rest.splitlines()
            n = len(done)
            for k, line in enumerate(done):
                assert f"at offset {ops[k][0]}" in line, (line, ops[k])
            maybe = ops[:n + 1]          # reported, plus the one in flight
            all_ops += maybe
            # 1. no change missed; the disabled bitmap stays clean.
            for name, g in BITMAPS.items():
                rngs = dirty(img, name)
                for lo, hi in ops[:n]:
                    if not covered(rngs, lo, hi):
                        sys.exit(f"FAIL round {rnd}: {name} misses the "
                                 f"reported write [{lo},{hi})")
                # 2. the over-report bound (none after a clean close).
                if g <= 1 << EXT_BITS:
                    extra = unexplained_extents(rngs, all_ops + extra_by[name],
                                                g)
                    bound = 0 if last else MAX_HOT
                    if len(extra) > bound:
                        sys.exit(f"FAIL round {rnd}: {name} over-reports in "
                                 f"{len(extra)} extents (bound {bound}): "
                                 f"{sorted(extra)[:8]}")
                    # Dirty bits from earlier rounds' hot sets stay dirty
                    # (nothing clears them): count them as explained.
                    extra_by[name] += [(e << EXT_BITS, (e + 1) << EXT_BITS)
                                       for e in extra]
            if dirty(img, "off"):
                sys.exit(f"FAIL round {rnd}: the disabled bitmap is dirty")
            # 3. QEMU's view.
            info = json.loads(run("qemu-img", "info", "--output=json", img))
            for bm in info["format-specific"]["data"].get("bitmaps", []):
                if "in-use" in bm["flags"]:
                    sys.exit(f"FAIL round {rnd}: {bm['name']} is in use")
            chk = json.loads(run("qemu-img", "check", "--output=json", img,
                                 ok=(0, 3)))
            leaks = chk.get("leaks", 0)
            if rnd == 0 or last:
                for name in ("b64k", "b32m"):
                    q = json.loads(run(
                        "nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--json",
                        "--", "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name,
                        img, "]"))
                    qd = [(e["offset"], e["offset"] + e["length"]) for e in q
                          if e["type"] & 1]
                    rd = dirty(img, name)
                    if qd != rd:
                        sys.exit(f"FAIL round {rnd}: QEMU and rawtrack "
                                 f"disagree on {name}:\n{qd[:5]}\n{rd[:5]}")
            # 4. growth: one cluster per bitmap and per cluster-sized
            # stretch of its bits that holds a dirty bit, plus a few
            # clusters of metadata (refcount blocks).
            need_clusters = 0
            for name, g in BITMAPS.items():
                span = CLUSTER * 8 * g          # guest bytes per bitmap cluster
                need_clusters += len({lo // span for lo, _ in dirty(img, name)}
                                     | {(hi - 1) // span
                                        for _, hi in dirty(img, name)})
            grown = (os.path.getsize(img) - base_size) // CLUSTER
            if grown > need_clusters + leaks + 4:
                sys.exit(f"FAIL round {rnd}: the image grew by {grown} "
                         f"clusters, the dirty bits need {need_clusters} "
                         f"({leaks} leaked by the kills)")
            # 5. the data of the reported writes.
            with open(raw, "rb") as f:
                for k in range(n):
                    lo, hi = ops[k]
                    f.seek(lo)
                    pat = int(cmds[k].split()[2])
                    if f.read(hi - lo) != bytes([pat]) * (hi - lo):
                        # A later write of this round may overlap it.
                        if not any(max(lo, a) < min(hi, b)
                                   for a, b in ops[k + 1:n + 1]):
                            sys.exit(f"FAIL round {rnd}: the raw file lacks "
                                     f"write {k} [{lo},{hi})")
        # 6. removing every bitmap gives the tail back (truncation, as
        # QEMU does): the file is its attach size again, but for the
        # clusters the kills leaked.
        grown = os.path.getsize(img) - base_size
        for name in list(BITMAPS) + ["off"]:
            run(RAWTRACK, "bitmap", "remove", img, name)
        chk = json.loads(run("qemu-img", "check", "--output=json", img,
                             ok=(0, 3)))
        left = os.path.getsize(img) - attach_size
        if os.path.getsize(img) > chk["image-end-offset"]:
            sys.exit(f"FAIL: after removing every bitmap the file is "
                     f"{os.path.getsize(img)} bytes, its last cluster in "
                     f"use ends at {chk['image-end-offset']}")
        if chk.get("leaks", 0) == 0 and left != 0:
            sys.exit(f"FAIL: after removing every bitmap the image is "
                     f"{left} bytes larger than attached")
        print(f"test-bigdisk: {ROUNDS} rounds on a {SIZE >> 40} TiB disk "
              f"with {len(BITMAPS)} tracked bitmaps passed; image grew by "
              f"{grown >> 20} MiB, {left >> 20} MiB left after removing "
              f"them")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
