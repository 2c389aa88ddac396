#!/usr/bin/env python3
# rawtrack - crash test: kill -9 of `rawtrack io` at random moments.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A raw disk wrapped by `rawtrack attach` carries three bitmaps (64 KiB and
# 512 B granularity, enabled; one disabled).  Each round clears them, runs
# `rawtrack io` on a long random workload of writes, write zeroes,
# discards and flushes, and kills it with SIGKILL at a random moment.
# Then, without any rawtrack step in between:
#   - every write, zero and discard that `rawtrack io` reported done is
#     dirty in every enabled bitmap (read with `rawtrack bitmap dump`, and
#     every few rounds through QEMU: qemu-nbd -B + nbdinfo --map, which
#     must agree with rawtrack extent for extent);
#   - no bitmap is in use (qemu-img info), the disabled one stays clean;
#   - qemu-img check finds nothing worse than leaks;
#   - the raw file holds exactly what the reported operations wrote (the
#     one operation in flight at the kill, and discards, may be either).
# With --nbd the writes go through `rawtrack serve` (qemu-io as the NBD
# client) and the server is the process killed: every request the server
# acknowledged must be dirty and on disk.
# With --remote (implies --nbd) the raw disk is behind `nbdkit file` and
# the container names it by NBD URI (issue 16): the same promises hold end
# to end through rawtrack's libnbd backend; QEMU gets the data file as
# --image-opts data-file.driver=nbd (it never follows a stored URI).
# Rounds: RAWTRACK_KILL_ROUNDS (default 200; 100 with --nbd, 40 with
# --remote).
import json
import re
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

RAWTRACK = os.environ.get("RAWTRACK", "build/cli/rawtrack")
# --nbd: write through `rawtrack serve` with qemu-io as the NBD client and
# kill -9 the server instead.
REMOTE = "--remote" in sys.argv[1:]
NBD = "--nbd" in sys.argv[1:] or REMOTE
DONE_RE = re.compile(r"^(wrote|discard) \d+/\d+ bytes at offset \d+")
ROUNDS = int(os.environ.get("RAWTRACK_KILL_ROUNDS",
                            "40" if REMOTE else
                            "100" if "--nbd" in sys.argv[1:] else "200"))
# Set by main() with --remote: how QEMU is told where the data file is.
QEMU_IMG = None
SIZE = 16 * 1024 * 1024


def need(*cmd):
    if shutil.which(cmd[0]) is None:
        print(f"SKIP: test-kill9: requires {cmd[0]}")
        sys.exit(77)


def run(*args, ok=(0,)):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode not in ok:
        sys.exit(f"FAIL: {' '.join(args)} exited {p.returncode}:\n"
                 f"{p.stdout}{p.stderr}")
    return p.stdout


def dump(img, name):
    return json.loads(run(RAWTRACK, "bitmap", "dump", "--json", img, name))


def dirty_ranges(extents):
    return [(e["start"], e["start"] + e["length"]) for e in extents
            if e["dirty"]]


def covered(ranges, lo, hi):
    # ranges are sorted and disjoint
    for s, e in ranges:
        if e <= lo:
            continue
        if s > lo:
            return False
        lo = e
        if lo >= hi:
            return True
    return lo >= hi


def through_nbd(img, script, env, target, rng, tmp):
    """Serve img with `rawtrack serve`, write through it with qemu-io over
    NBD, and kill -9 the SERVER once `target` writes were acknowledged.
    Returns qemu-io's result lines ('wrote'/'discard'): each one is a
    request the server acknowledged, i.e. completed."""
    sock = os.path.join(tmp, "nbd.sock")
    srv = subprocess.Popen([RAWTRACK, "serve", img, "--socket", sock] +
                           (["--allow-remote"] if REMOTE else []),
                           env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    q = subprocess.Popen(["qemu-io", "-f", "raw",
                          f"nbd+unix:///?socket={sock}"],
                         stdin=open(script), stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    done = []
    while len(done) < target:
        line = q.stdout.readline()
        if not line:
            break
        line = line.replace("qemu-io> ", "")   # the interactive prompt
        if DONE_RE.match(line):
            done.append(line)
    time.sleep(rng.random() * 0.003)
    srv.send_signal(signal.SIGKILL)
    srv.wait()
    # The rest through the same buffered reader: communicate(timeout=...)
    # reads the pipe's fd directly and would lose lines that readline()
    # had already buffered - under load that dropped completed writes and
    # misaligned the replay.  qemu-io exits once every remaining command
    # has failed; a timer kills it if it does not.
    killer = threading.Timer(20, q.kill)
    killer.start()
    rest = q.stdout.read()
    killer.cancel()
    q.wait()
    done += [l for l in rest.replace("qemu-io> ", "").splitlines(True)
             if DONE_RE.match(l)]
    if os.path.exists(sock):
        os.unlink(sock)
    return done


def workload(rng, n):
    cmds = []
    for _ in range(n):
        k = rng.random()
        off = rng.randrange(0, SIZE // 512) * 512
        if rng.random() < 0.2:
            off += rng.randrange(512)
        ln = rng.choice([512, 4096, 65536, 1 << 20, rng.randrange(1, 300000)])
        ln = min(ln, SIZE - off)
        if ln == 0:
            continue
        if k < 0.7:
            cmds.append(f"write -P {rng.randrange(1, 256)} {off} {ln}")
        elif k < 0.8:
            cmds.append(f"write -z {off} {ln}")
        elif k < 0.9:
            cmds.append(f"discard {off} {ln}")
        else:
            cmds.append("flush")
    return cmds


def main():
    need("qemu-img")
    need("qemu-nbd")
    need("nbdinfo")
    if REMOTE:
        need("nbdkit")
    seed = int(os.environ.get("RAWTRACK_KILL_SEED", "1"))
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="rawtrack-kill9-")
    nbdkit = None
    try:
        raw = os.path.join(tmp, "disk.raw")
        img = os.path.join(tmp, "disk.qcow2")
        with open(raw, "wb") as f:
            f.write(rng.randbytes(SIZE))
        shadow = bytearray(open(raw, "rb").read())
        qimg = ["-f", "qcow2", img]
        if REMOTE:
            rsock = os.path.join(tmp, "remote.sock")
            nbdkit = subprocess.Popen(["nbdkit", "-f", "-U", rsock, "file",
                                       raw], stderr=subprocess.DEVNULL)
            for _ in range(500):
                if os.path.exists(rsock):
                    break
                time.sleep(0.01)
            run(RAWTRACK, "attach", "--cluster-size", "64k",
                f"nbd+unix:///?socket={rsock}", img)
            qimg = ["--image-opts",
                    f"driver=qcow2,file.filename={img},data-file.driver=nbd,"
                    f"data-file.server.type=unix,data-file.server.path={rsock}"]
        else:
            run(RAWTRACK, "attach", "--cluster-size", "64k", raw, img)
        run(RAWTRACK, "bitmap", "add", img, "b64k", "--granularity", "64k")
        run(RAWTRACK, "bitmap", "add", img, "b512", "--granularity", "512")
        run(RAWTRACK, "bitmap", "add", img, "off", "--disabled")
        env = dict(os.environ, RAWTRACK_EXTENT_BITS="20", RAWTRACK_MAX_HOT="6")
        killed_mid = 0
        for rnd in range(ROUNDS):
            for b in ("b64k", "b512"):
                run(RAWTRACK, "bitmap", "clear", img, b)
            cmds = workload(rng, 150)
            script = os.path.join(tmp, "cmds")
            with open(script, "w") as f:
                f.write("\n".join(cmds) + "\n")
            target = rng.randrange(0, len(cmds))
            if NBD:
                done = through_nbd(img, script, env, target, rng, tmp)
            else:
                p = subprocess.Popen([RAWTRACK, "io", img, "-f", script],
                                     stdout=subprocess.PIPE, env=env,
                                     text=True)
                done = []
                while len(done) < target:
                    line = p.stdout.readline()
                    if not line:
                        break
                    done.append(line)
                time.sleep(rng.random() * 0.003)
                p.send_signal(signal.SIGKILL)
                rest, _ = p.communicate()
                done += rest.splitlines(keepends=True)
                p.wait()
            # Replay what was reported on the shadow; find the op in flight.
            unknown = []
            i = 0
            for c in cmds:
                if c == "flush":
                    continue
                w = c.split()
                off, ln = int(w[-2]), int(w[-1])
                if i < len(done):
                    line = done[i]
                    i += 1
                    assert f"at offset {off}" in line, (c, line)
                    if w[0] == "discard":
                        unknown.append((off, off + ln))
                    elif "-z" in w:
                        shadow[off:off + ln] = bytes(ln)
                    else:
                        shadow[off:off + ln] = bytes([int(w[2])]) * ln
                    continue
                unknown.append((off, off + ln))      # in flight at the kill
                killed_mid += 1
                break
            reported_ops = []
            i = 0
            for c in cmds:
                if c == "flush":
                    continue
                if i >= len(done):
                    break
                w = c.split()
                reported_ops.append((int(w[-2]), int(w[-2]) + int(w[-1])))
                i += 1
            # 1. bitmaps cover every reported op.
            for b in ("b64k", "b512"):
                rngs = dirty_ranges(dump(img, b))
                for lo, hi in reported_ops:
                    if not covered(rngs, lo, hi):
                        sys.exit(f"FAIL round {rnd}: {b} does not cover "
                                 f"reported op [{lo},{hi})")
            if dirty_ranges(dump(img, "off")):
                sys.exit(f"FAIL round {rnd}: disabled bitmap is dirty")
            # 2. QEMU view: consistent flags, check, and the same bits.
            info = json.loads(run("qemu-img", "info", "--output=json", *qimg))
            for bm in info["format-specific"]["data"].get("bitmaps", []):
                if "in-use" in bm["flags"]:
                    sys.exit(f"FAIL round {rnd}: bitmap {bm['name']} in use")
            run("qemu-img", "check", *qimg, ok=(0, 3))
            if rnd % 10 == 0:
                for b in ("b64k", "b512"):
                    q = json.loads(run("nbdinfo", f"--map=qemu:dirty-bitmap:{b}",
                                       "--json", "--", "[", "qemu-nbd", "-r",
                                       "-B", b, *qimg, "]"))
                    qd = [(e["offset"], e["offset"] + e["length"]) for e in q
                          if e["type"] & 1]
                    rd = dirty_ranges(dump(img, b))
                    if qd != rd:
                        sys.exit(f"FAIL round {rnd}: QEMU and rawtrack "
                                 f"disagree on {b}:\n{qd[:5]}\n{rd[:5]}")
            # 3. data: what was reported is there.
            disk = open(raw, "rb").read()
            for lo, hi in unknown:
                shadow[lo:hi] = disk[lo:hi]
            if disk != bytes(shadow):
                first = next(k for k in range(SIZE) if disk[k] != shadow[k])
                ops = [c for c in cmds if c != "flush" and
                       int(c.split()[-2]) <= first <
                       int(c.split()[-2]) + int(c.split()[-1])]
                sys.exit(f"FAIL round {rnd}: raw file differs from what was "
                         f"reported at byte {first} (disk {disk[first]}, "
                         f"expected {shadow[first]}; {len(done)} done; "
                         f"ops there: {ops[:4]})")
        print(f"test-kill9{' (remote)' if REMOTE else ' (nbd)' if NBD else ''}"
              f": {ROUNDS} kills "
              f"({killed_mid} mid-operation) passed")
    finally:
        if nbdkit:
            nbdkit.terminate()
            nbdkit.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
